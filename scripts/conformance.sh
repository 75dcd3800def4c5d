#!/usr/bin/env bash
# `make conformance`: drive modelmux with the official OpenAI Python SDK, the official Anthropic
# Python and Node SDKs, and Claude Code.
#
# Builds modelmux and the demo backend, starts two demo backends (an echo model streaming with
# a chunk delay and a usage chunk that lists two models, and one answering every request with
# 401) plus modelmux on OS-picked loopback ports (the echo backend also behind a discovering
# wildcard "demo/*"), then runs scripts/conformance/conformance.py against the proxy.
# Then the Anthropic part: two scripted mocks (scripts/conformance/anthropic_mock.py, one speaking
# the Messages API natively, one only chat completions) behind a second modelmux with client
# keys, a quota and a usage ledger, driven by anthropic_conformance.py (Python SDK),
# anthropic_conformance.mjs (Node SDK) and claude_code.py (`claude -p` doing a task with a tool).
# The Python SDKs live in a venv at target/conformance-venv (created and installed on first run,
# and again whenever scripts/conformance/requirements.txt changes); the Node SDK and Claude Code
# in target/anthropic-node (installed with npm from scripts/conformance/package.json, again
# whenever it changes).
#
# Env: CONFORMANCE_PYTHON (default python3), CONFORMANCE_PROFILE=debug|release (default debug:
# the binaries `make test` already built), CONFORMANCE_LOG_DIR (default target/conformance-logs).
# The processes' logs stay in the log dir; their tails are printed when the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# The run must not depend on the caller's modelmux settings (e.g. proxy keys, log level).
for v in $(compgen -e | grep '^CM_OPEN_WEBUI_PROXY_' || true); do
  unset "$v"
done

start_time=$SECONDS
python=${CONFORMANCE_PYTHON:-python3}
venv=target/conformance-venv
req=scripts/conformance/requirements.txt
logs=${CONFORMANCE_LOG_DIR:-target/conformance-logs}
profile=${CONFORMANCE_PROFILE:-debug}
chunk_delay_ms=100
max_body=65536

say() { echo "conformance: $*" >&2; }

# --- cleanup: stop exactly the processes started here ----------------------------------------
pids=()
cleanup() {
  local status=$? pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  # modelmux drains on SIGTERM; give everything 5 s, then SIGKILL what is left.
  for _ in $(seq 1 50); do
    local alive=0
    for pid in ${pids[@]+"${pids[@]}"}; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -d "$logs" ]; then
    for f in "$logs"/*.log; do
      [ -f "$f" ] || continue
      echo "----- $f (last 20 lines)" >&2
      tail -n 20 "$f" >&2 || true
    done
  fi
  say "finished in $((SECONDS - start_time))s (exit $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf "$logs"
mkdir -p "$logs"

# --- Python SDK -------------------------------------------------------------------------------
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
if ! cmp -s "$req" "$venv/.requirements.txt"; then
  say "installing $(grep -v '^#' "$req" | tr '\n' ' ')"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements.txt"
fi

# --- Node SDK and Claude Code ------------------------------------------------------------------
node_dir=target/anthropic-node
node_pkg=scripts/conformance/package.json
command -v node >/dev/null && command -v npm >/dev/null ||
  { say "node and npm are needed for the Anthropic Node SDK and Claude Code checks"; exit 1; }
if ! cmp -s "$node_pkg" "$node_dir/package.json" || [ ! -d "$node_dir/node_modules/@anthropic-ai/sdk" ]; then
  say "installing $(sed -n 's/^ *"\(@[^"]*\)": "\([^"]*\)".*/\1@\2/p' "$node_pkg" | tr '\n' ' ')into $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$node_pkg" "$node_dir/package.json"
  # Claude Code's native binary comes in a per-platform optional package; its postinstall
  # (which only links that binary) is not needed: the checks run the binary itself.
  npm install --prefix "$node_dir" --no-package-lock --no-audit --no-fund --loglevel=error >/dev/null
fi
claude_bin=""
for f in "$node_dir"/node_modules/@anthropic-ai/claude-code-linux-*/claude; do
  if [ -x "$f" ]; then claude_bin=$f; break; fi
done
[ -n "$claude_bin" ] || { say "no Claude Code binary for this platform under $node_dir"; exit 1; }

# --- binaries ---------------------------------------------------------------------------------
# Cargo says where the binaries are (CARGO_TARGET_DIR is honoured); both land in one folder.
. scripts/cargo_bins.sh
case "$profile" in
  release) profile_flag=--release ;;
  debug) profile_flag= ;;
  *) say "CONFORMANCE_PROFILE must be debug or release"; exit 2 ;;
esac
bin="$(dirname "$(cargo_build_bin demo_backend $profile_flag --bin modelmux --bin demo_backend)")"
[ "$(cargo_build_bin modelmux $profile_flag --bin modelmux)" = "$bin/modelmux" ] ||
  { say "cargo put modelmux and demo_backend in different folders"; exit 1; }

# --- processes --------------------------------------------------------------------------------

# wait_port PID LOGFILE: print the port from the first "listening on http://127.0.0.1:PORT" line.
wait_port() {
  local pid=$1 log=$2 port=""
  for _ in $(seq 1 200); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$log" | head -n 1)
    if [ -n "$port" ]; then
      echo "$port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      say "process $pid exited before listening; see $log"
      return 1
    fi
    sleep 0.05
  done
  say "process $pid did not report a listening port within 10s; see $log"
  return 1
}

"$bin/demo_backend" 127.0.0.1:0 --chunk-delay-ms "$chunk_delay_ms" --include-usage \
  --models echo-real,tiny >"$logs/echo-backend.log" 2>&1 &
pid=$!
pids+=("$pid")
echo_port=$(wait_port "$pid" "$logs/echo-backend.log")

"$bin/demo_backend" 127.0.0.1:0 --status 401 >"$logs/locked-backend.log" 2>&1 &
pid=$!
pids+=("$pid")
locked_port=$(wait_port "$pid" "$logs/locked-backend.log")

cat >"$logs/config.json" <<EOF
{
  "endpoints": {
    "echo": {
      "displayName": "Echo",
      "url": "http://127.0.0.1:$echo_port",
      "apiKey": "sk-conformance-backend-key-1234",
      "actualModelName": "echo-real"
    },
    "locked": {
      "url": "http://127.0.0.1:$locked_port"
    },
    "demo/*": {
      "displayName": "{model} (discovered)",
      "url": "http://127.0.0.1:$echo_port/v1",
      "discoverIntervalSecs": 1
    }
  }
}
EOF

CM_OPEN_WEBUI_PROXY_MAX_BODY_BYTES=$max_body CM_OPEN_WEBUI_PROXY_LOG_LEVEL=info \
  "$bin/modelmux" --host 127.0.0.1 --port 0 --config "$logs/config.json" >"$logs/modelmux.log" 2>&1 &
pid=$!
pids+=("$pid")
proxy_port=$(wait_port "$pid" "$logs/modelmux.log")
say "echo backend :$echo_port, locked backend :$locked_port, modelmux :$proxy_port ($profile build)"

# --- the SDK checks ---------------------------------------------------------------------------
# A hard cap so a hung request can never stall CI (each SDK call also has its own timeout).
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout 120); fi
${limit[@]+"${limit[@]}"} "$venv/bin/python" scripts/conformance/conformance.py \
  --base-url "http://127.0.0.1:$proxy_port/v1" \
  --chunk-delay-ms "$chunk_delay_ms" \
  --max-body "$max_body"

# --- Anthropic SDKs and Claude Code -------------------------------------------------------------
"$venv/bin/python" scripts/conformance/anthropic_mock.py --mode native >"$logs/native-mock.log" 2>&1 &
pid=$!
pids+=("$pid")
native_port=$(wait_port "$pid" "$logs/native-mock.log")

"$venv/bin/python" scripts/conformance/anthropic_mock.py --mode openai >"$logs/chat-mock.log" 2>&1 &
pid=$!
pids+=("$pid")
chat_port=$(wait_port "$pid" "$logs/chat-mock.log")

# Absolute: the config file resolves relative paths against its own folder.
usage_log="$(cd "$logs" && pwd)/anthropic-usage.jsonl"
cat >"$logs/anthropic-config.json" <<EOF
{
  "endpoints": {
    "native-m": {
      "displayName": "Native mock",
      "url": "http://127.0.0.1:$native_port",
      "apiKey": "sk-native-backend",
      "apiKeyHeader": "x-api-key",
      "actualModelName": "mock-native",
      "messagesApi": "native",
      "aliases": ["claude-native-*"]
    },
    "chat-m": {
      "displayName": "Chat mock",
      "url": "http://127.0.0.1:$chat_port",
      "apiKey": "sk-chat-backend",
      "actualModelName": "mock-chat",
      "aliases": ["claude-*"]
    }
  },
  "proxyKeys": [
    {"key": "sk-mm-client-1", "name": "sdk"},
    {"key": "sk-mm-limited", "name": "limited"},
    {"key": "sk-mm-claude-code", "name": "claude-code"}
  ],
  "limits": [{"match": {"key": "limited"}, "requestsPerMinute": 1}],
  "usageLog": "$usage_log"
}
EOF

CM_OPEN_WEBUI_PROXY_LOG_LEVEL=info CM_OPEN_WEBUI_PROXY_REPLICA=conformance \
  "$bin/modelmux" --host 127.0.0.1 --port 0 --config "$logs/anthropic-config.json" >"$logs/modelmux-anthropic.log" 2>&1 &
pid=$!
pids+=("$pid")
anthropic_port=$(wait_port "$pid" "$logs/modelmux-anthropic.log")
say "native mock :$native_port, chat mock :$chat_port, modelmux :$anthropic_port"

# The SDKs and Claude Code take the base URL without /v1: they append /v1/messages themselves.
# Each runner goes on after another failed, so one run shows every failure.
mocks=(--native-mock "http://127.0.0.1:$native_port" --chat-mock "http://127.0.0.1:$chat_port")
failed=()
${limit[@]+"${limit[@]}"} "$venv/bin/python" scripts/conformance/anthropic_conformance.py \
  --base-url "http://127.0.0.1:$anthropic_port" "${mocks[@]}" --usage-log "$usage_log" ||
  failed+=("Anthropic Python SDK")
${limit[@]+"${limit[@]}"} node scripts/conformance/anthropic_conformance.mjs --modules "$node_dir" \
  --base-url "http://127.0.0.1:$anthropic_port" "${mocks[@]}" --usage-log "$usage_log" ||
  failed+=("Anthropic Node SDK")
${limit[@]+"${limit[@]}"} "$venv/bin/python" scripts/conformance/claude_code.py --claude "$claude_bin" \
  --base-url "http://127.0.0.1:$anthropic_port" --chat-mock "http://127.0.0.1:$chat_port" \
  --usage-log "$usage_log" || failed+=("Claude Code")
if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
