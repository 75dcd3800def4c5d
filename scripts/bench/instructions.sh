#!/usr/bin/env bash
# Instructions per proxied chat completion, counted by valgrind's callgrind: a measure that,
# unlike CPU time, does not move with the machine's load, for A/B comparisons of a change.
# Builds modelmux with debug symbols (into target/prof, as profile.sh does: prof_setup.sh), runs it under
# callgrind in front of the demo mock backend, sends 200 warm-up requests on one keep-alive
# connection, zeroes the counters, sends N more and prints the instructions per request; the
# profile stays in target/prof/callgrind.out.* for `callgrind_annotate --inclusive=yes`.
#
# Usage: scripts/bench/instructions.sh [N] [EXTRA_CONFIG_JSON] [BINARY]
#   e.g. scripts/bench/instructions.sh 1000 '{"usageLog":"/tmp/usage.jsonl"}'
# Needs valgrind (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
extra=${2:-'{}'}
if [ -n "${3:-}" ]; then
  . scripts/bench/prof_setup.sh no-build
else
  . scripts/bench/prof_setup.sh
fi
bin=${3:-$out/release/modelmux}
start_mock "$extra"
mport=$(free_port)
profile="$out/callgrind.out.$$"
CM_OPEN_WEBUI_PROXY_LOG_LEVEL=warn valgrind --tool=callgrind --callgrind-out-file="$profile" \
  "$bin" --host 127.0.0.1 --port "$mport" --config "$tmp/config.json" >"$tmp/modelmux.log" 2>&1 &
mm=$!
pids+=("$mm")
wait_port "$mport"

# The bench's chat body (scripts/bench/bench.py BODY) on one keep-alive connection.
send() {
  python3 - "$mport" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b'{"model":"echo","messages":[{"role":"user","content":"hello there world"}]}'
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
for _ in range(int(sys.argv[2])):
    s.sendall(req)
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            sys.exit("connection closed")
        buf += data
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if length and len(rest) >= int(length[0].split(b":")[1]):
                break
PY
}
send 200
callgrind_control -z "$mm" >/dev/null 2>&1
send "$n"
callgrind_control -d "$mm" >/dev/null 2>&1
total=$(callgrind_annotate "$profile".1 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "commit $(git rev-parse --short HEAD): $((total / n)) instructions per chat completion ($n requests, profile $profile.1)"
