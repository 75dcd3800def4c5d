# Sourced by profile.sh and instructions.sh: the release build with debug symbols (into
# target/prof; the shipped profile stays stripped) unless PROFILE_NO_BUILD=1 or $1 is "no-build",
# a temporary directory and the processes to stop on exit, and the demo mock backend with a
# config for it (`start_mock EXTRA_CONFIG_JSON`: sets $bport, writes $tmp/config.json).
out=target/prof
if [ "${1:-}" != no-build ] && [ "${PROFILE_NO_BUILD:-0}" != 1 ]; then
  CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=false \
    cargo build --release --bin modelmux --bin demo_backend --target-dir "$out" >&2
fi
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Up to 30 s: a process under valgrind starts slowly.
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

start_mock() {
  bport=$(free_port)
  "$out/release/demo_backend" "127.0.0.1:$bport" --chunk-delay-ms 0 >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$bport"
  python3 - "$bport" "$1" >"$tmp/config.json" <<'PY'
import json, sys
cfg = {"endpoints": {"echo": {"url": "http://127.0.0.1:%s" % sys.argv[1], "apiKey": "",
                              "actualModelName": "echo"}}}
cfg.update(json.loads(sys.argv[2]))
print(json.dumps(cfg))
PY
}
