#!/usr/bin/env bash
# `make run`: start modelmux with config.json, or with config.example.json plus the demo backend.
# It stays in the foreground (Ctrl-C stops modelmux and the demo backend).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${CM_OPEN_WEBUI_PROXY_CONFIG_FILE:-config.json}"
if [ -f "$config" ]; then
  cargo build --release --bin modelmux
else
  echo "run: $config not found; using config.example.json with the built-in demo backend on 127.0.0.1:3334"
  wanted="$config"
  config=config.example.json
  # A demo backend left by another `make run` would answer in place of this one.
  if (exec 3<>/dev/tcp/127.0.0.1/3334) 2>/dev/null; then
    echo "run: port 3334 is already in use (another make run?); stop it, or create $wanted" >&2
    exit 1
  fi
  # One cargo call: the small demo backend compiles beside the proxy instead of after it.
  cargo build --release --bin modelmux --bin demo_backend
  ./target/release/demo_backend 127.0.0.1:3334 &
  demo_pid=$!
  trap 'kill "$demo_pid" 2>/dev/null || true' EXIT INT TERM
fi
CM_OPEN_WEBUI_PROXY_CONFIG_FILE="$config" ./target/release/modelmux "$@"
