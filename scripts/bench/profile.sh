#!/usr/bin/env bash
# Where the CPU of a proxied request goes: builds modelmux with debug symbols (into
# target/prof; the shipped profile stays stripped; see prof_setup.sh), runs it in front of the demo mock backend
# under wrk (16 keep-alive connections, the bench's chat body) and records it with `perf`
# (`perf record -g`, the cpu-clock software event: this machine's VM exposes no hardware
# counters). Prints the user/kernel split and the top functions; the raw data stays in
# target/prof/perf.data for `perf report -i target/prof/perf.data`.
#
# Usage: scripts/bench/profile.sh [SECONDS] [EXTRA_CONFIG_JSON]
#   e.g. scripts/bench/profile.sh 10 '{"usageLog":"/tmp/usage.jsonl"}'
# Needs perf (Debian: apt-get install linux-perf) and wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
extra=${2:-'{}'}
. scripts/bench/prof_setup.sh
bin=$out/release
start_mock "$extra"
mport=$(free_port)
CM_OPEN_WEBUI_PROXY_LOG_LEVEL=warn "$bin/modelmux" --host 127.0.0.1 --port "$mport" \
  --config "$tmp/config.json" >"$tmp/modelmux.log" 2>&1 &
mm=$!
pids+=("$mm")
wait_port "$mport"

BENCH_CLOSE=0 wrk -t2 -c16 -d"$((secs + 2))s" -s scripts/bench/post.lua \
  "http://127.0.0.1:$mport/v1/chat/completions" >"$tmp/wrk.txt" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")
sleep 1
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD)"
perf record -q -F 499 --call-graph dwarf,16384 -p "$mm" -o "$out/perf.data" -- sleep "$secs" 2>/dev/null
wait "$wrk_pid" || true
grep -E "Requests/sec" "$tmp/wrk.txt" || cat "$tmp/wrk.txt"
echo
perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
  | grep -E '^ +[0-9]' >"$tmp/syms.txt" || true
echo "== user vs kernel samples (self time; [k] kernel, [.] user)"
awk '{ p = $1; sub("%", "", p); if ($2 == "[k]") k += p; else u += p }
     END { printf "kernel %.1f%%, user %.1f%%\n", k, u }' "$tmp/syms.txt"
echo
echo "== top functions (self)"
head -"${PROFILE_TOP:-40}" "$tmp/syms.txt"
