#!/usr/bin/env bash
# Proves `make run` on a fresh clone: it starts modelmux on :3333 with config.example.json and the
# demo backend on :3334, and the README's curl examples answer, streaming and not.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f config.json ]; then
  echo "smoke_run: config.json exists; this check is for a fresh clone" >&2
  exit 1
fi
# Another `make run` (or anything else) on these ports would answer in place of the one started
# here and make this check pass without proving anything.
for port in 3333 3334; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "smoke_run: port $port is already in use (another make run?); stop it first" >&2
    exit 1
  fi
done
log="$(mktemp)"
setsid make run >"$log" 2>&1 &
pid=$!
cleanup() { kill -- "-$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
# modelmux prints this line only once it holds the port, so a server that answers /health
# before it appears is not ours.
ready="listening on http://0.0.0.0:3333 "
for _ in $(seq 1 600); do
  grep -q "$ready" "$log" && curl -sf localhost:3333/health >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "smoke_run: make run exited" >&2; exit 1; }
  sleep 0.5
done
grep -q "$ready" "$log" || { cat "$log"; echo "smoke_run: modelmux did not start within 300 s" >&2; exit 1; }
grep -q "demo backend listening on http://127.0.0.1:3334" "$log" \
  || { cat "$log"; echo "smoke_run: the demo backend did not start" >&2; exit 1; }
body='{"model":"echo","messages":[{"role":"user","content":"hello from a fresh clone"}]}'
out="$(curl -sf localhost:3333/v1/chat/completions -H 'Content-Type: application/json' -d "$body")"
echo "$out" | grep -q '"content":"hello from a fresh clone"' || { echo "non-stream reply: $out" >&2; exit 1; }
stream="$(curl -sfN localhost:3333/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"echo","stream":true,"messages":[{"role":"user","content":"stream me please"}]}')"
echo "$stream" | grep -q '"content":"stream "' || { echo "stream reply: $stream" >&2; exit 1; }
echo "$stream" | grep -q '^data: \[DONE\]' || { echo "stream did not end with [DONE]" >&2; exit 1; }
kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "smoke_run: make run exited during the check" >&2; exit 1; }
echo "smoke_run: make run serves the demo model, streaming and not"
