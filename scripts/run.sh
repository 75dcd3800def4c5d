#!/usr/bin/env bash
# `make run`: start modelmux with config.json, or with config.example.json plus the demo backend.
# It stays in the foreground (Ctrl-C stops modelmux and the demo backend).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_bins.sh
config="${CM_OPEN_WEBUI_PROXY_CONFIG_FILE:-config.json}"
if [ -f "$config" ]; then
  modelmux="$(cargo_build_bin modelmux --release --bin modelmux)"
else
  echo "run: $config not found; using config.example.json with the built-in demo backend on 127.0.0.1:3334"
  wanted="$config"
  config=config.example.json
  # A demo backend left by another `make run` would answer in place of this one.
  if (exec 3<>/dev/tcp/127.0.0.1/3334) 2>/dev/null; then
    echo "run: port 3334 is already in use (another make run?); stop it, or create $wanted" >&2
    exit 1
  fi
  # The small demo backend compiles beside the proxy instead of after it; the second call
  # only asks cargo where the (fresh) proxy binary is.
  demo="$(cargo_build_bin demo_backend --release --bin modelmux --bin demo_backend)"
  modelmux="$(cargo_build_bin modelmux --release --bin modelmux)"
  # --include-usage: the demo honours stream_options.include_usage, so streamed token counts in
  # the usage ledger and /metrics are exact, as the README promises.
  "$demo" 127.0.0.1:3334 --include-usage &
  demo_pid=$!
  trap 'kill "$demo_pid" 2>/dev/null || true' EXIT INT TERM
fi
CM_OPEN_WEBUI_PROXY_CONFIG_FILE="$config" "$modelmux" "$@"
