#!/usr/bin/env bash
# `make image`: the FROM scratch image from the binary `make static` builds, with podman or
# docker (whichever is installed; CONTAINER_ENGINE chooses), tagged IMAGE (default
# modelmux:local). No registry is needed: nothing is pulled for FROM scratch. `docker build .`
# builds the same image with the Rust stage instead (see the Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_bins.sh
. scripts/container_engine.sh
tag="${IMAGE:-modelmux:local}"
engine_pick || { echo "image: $ENGINE_WHY" >&2; exit 1; }
STATIC_SKIP_TESTS=1 ./scripts/static.sh
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx" "${ENGINE_CONF_DIR:-}"' EXIT
image_context "$ctx" "$(cargo_target_dir)/static/modelmux"
engine_build "$tag" "$ctx" --build-arg MODELMUX_BINARY=prebuilt
echo "image: built $tag with $ENGINE"
