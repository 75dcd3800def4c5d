#!/usr/bin/env bash
# `make bench`: measure modelmux against the demo mock backend on loopback and rewrite
# BENCHMARKS.md. `make bench-peers` (BENCH_PEERS=1) adds LiteLLM's proxy to the
# non-streaming rows. Arguments are passed to scripts/bench/bench.py (see its --help), e.g.
# `./scripts/bench.sh --duration 3 --output -` for a quick look that leaves BENCHMARKS.md alone.
#
# Knobs (environment): BENCH_DURATION (seconds per wrk run, default 5), BENCH_CONCURRENCY
# (default 1,16,64), BENCH_STREAMS (default 1000), BENCH_NO_NGINX=1, BENCH_PEERS=1,
# BENCH_PEERS_INSTALL_TIMEOUT (seconds for the LiteLLM install, default 900).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bench: $*" >&2; }

say "building release binary and demo backend"
cargo build --release --bin modelmux --bin demo_backend
# The same binary with a counting allocator, for the allocations per request (its own target
# directory, so the release binary above stays the shipped one).
say "building the count-allocs binary (target/count-allocs)"
cargo build --release --features count-allocs --bin modelmux --target-dir target/count-allocs

# wrk drives the load; nginx (Debian's nginx-light) is the peer every row is compared with.
# The package's own service is not used: bench.py starts nginx with its own config on a free
# loopback port and stops it by PID.
need=()
# redis-server backs the "limits (Redis)" row; without it that row is left out.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ "${BENCH_NO_NGINX:-0}" != 1 ] && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  need+=(nginx-light)
fi
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing ${need[*]} (apt-get install)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
      || say "apt-get install ${need[*]} failed"
  fi
fi
if ! command -v wrk >/dev/null 2>&1; then
  say "wrk is needed: install it (Debian/Ubuntu: apt-get install wrk) and run again"
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  say "python3 is needed for the driver (scripts/bench/bench.py)"
  exit 1
fi

# 1,000 streams through the proxy hold ~2,000 sockets in modelmux and 1,000 in each of the
# client and the backend.
hard=$(ulimit -Hn)
want=65536
if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want=$hard; fi
ulimit -n "$want" 2>/dev/null || say "could not raise the open-file limit (now $(ulimit -n))"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 2600 ]; then
  say "warning: open-file limit $(ulimit -n) is too low for ${BENCH_STREAMS:-1000} streams"
fi

args=()
if [ "${BENCH_NO_NGINX:-0}" = 1 ]; then
  args+=(--no-nginx)
elif ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  say "nginx is not installed (Debian/Ubuntu: apt-get install nginx-light); its rows will be missing"
fi
if [ "${BENCH_PEERS:-0}" = 1 ]; then
  venv=target/bench-venv
  if [ ! -x "$venv/bin/litellm" ]; then
    limit=${BENCH_PEERS_INSTALL_TIMEOUT:-900}
    say "installing LiteLLM's proxy into $venv (pip install 'litellm[proxy]', up to ${limit}s)"
    if ! timeout "$limit" bash -c "python3 -m venv '$venv' && '$venv/bin/pip' install -q --upgrade pip \
        && '$venv/bin/pip' install -q 'litellm[proxy]'" >target/bench-venv-install.log 2>&1; then
      say "LiteLLM could not be installed (see target/bench-venv-install.log); skipping the peer rows"
      args+=(--peer-note "LiteLLM was requested but could not be installed; its rows are missing.")
    fi
  fi
  if [ -x "$venv/bin/litellm" ]; then
    say "LiteLLM $("$venv/bin/pip" show litellm 2>/dev/null | sed -n 's/^Version: //p') found"
    args+=(--litellm "$venv/bin/litellm")
  fi
fi

py_pid=
cleanup() { if [ -n "$py_pid" ]; then kill "$py_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
python3 scripts/bench/bench.py ${args[@]+"${args[@]}"} "$@" &
py_pid=$!
status=0
wait "$py_pid" || status=$?
py_pid=
exit "$status"
