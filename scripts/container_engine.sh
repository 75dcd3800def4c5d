# Sourced by scripts/image.sh and scripts/image_test.sh: which container engine builds and runs
# the image, and the build context of the prebuilt image.
#
# engine_pick sets ENGINE (podman or docker) and the array ENGINE_CMD, or returns 1 with the
# reason in ENGINE_WHY. CONTAINER_ENGINE=podman|docker chooses; otherwise podman when installed
# (it needs no daemon), else docker when its daemon answers.
#
# Podman as Debian packages it (apt-get install podman runc) runs rootful here with runc and
# cgroupfs; crun fails on these machines' cgroups, and runc refuses podman's default rlimits
# ("error setting rlimit type 7: operation not permitted"), so a containers.conf with
# `default_ulimits = []` is passed through CONTAINERS_CONF unless one is set already.
engine_pick() {
  ENGINE="${CONTAINER_ENGINE:-}"
  ENGINE_WHY=""
  if [ -z "$ENGINE" ]; then
    if command -v podman >/dev/null 2>&1; then
      ENGINE=podman
    elif command -v docker >/dev/null 2>&1; then
      ENGINE=docker
    else
      ENGINE_WHY="neither podman nor docker is installed (Debian: apt-get install podman runc)"
      return 1
    fi
  fi
  case "$ENGINE" in
    podman)
      command -v podman >/dev/null 2>&1 || { ENGINE_WHY="CONTAINER_ENGINE=podman but podman is not installed"; return 1; }
      ENGINE_CMD=(podman)
      if command -v runc >/dev/null 2>&1; then ENGINE_CMD+=(--runtime runc); fi
      if [ ! -d /run/systemd/system ]; then ENGINE_CMD+=(--cgroup-manager=cgroupfs); fi
      if [ -z "${CONTAINERS_CONF:-}" ]; then
        ENGINE_CONF_DIR="$(mktemp -d)"
        printf '[containers]\ndefault_ulimits = []\n' >"$ENGINE_CONF_DIR/containers.conf"
        export CONTAINERS_CONF="$ENGINE_CONF_DIR/containers.conf"
      fi
      ;;
    docker)
      command -v docker >/dev/null 2>&1 || { ENGINE_WHY="CONTAINER_ENGINE=docker but docker is not installed"; return 1; }
      local err
      if ! err="$(docker info 2>&1 >/dev/null)"; then
        ENGINE_WHY="docker is installed but its daemon does not answer: $(printf '%s' "$err" | tail -n 1)"
        return 1
      fi
      ENGINE_CMD=(docker)
      ;;
    *)
      ENGINE_WHY="CONTAINER_ENGINE must be podman or docker, not $ENGINE"
      return 1
      ;;
  esac
}

engine() { "${ENGINE_CMD[@]}" "$@"; }

# engine_build TAG CONTEXT [extra build args]: podman keeps HEALTHCHECK only in the docker
# image format.
engine_build() {
  local tag=$1 ctx=$2
  shift 2
  if [ "$ENGINE" = podman ]; then
    engine build --format docker -t "$tag" "$@" "$ctx"
  else
    DOCKER_BUILDKIT=1 engine build -t "$tag" "$@" "$ctx"
  fi
}

# image_context DIR BINARY: the build context of `--build-arg MODELMUX_BINARY=prebuilt`: the
# Dockerfile, the static binary as ./modelmux, the empty data/modelmux/ and the default config.
image_context() {
  local dir=$1 bin=$2
  mkdir -p "$dir/data/modelmux" "$dir/deploy"
  cp Dockerfile "$dir/Dockerfile"
  cp "$bin" "$dir/modelmux"
  cp deploy/config.docker.json "$dir/deploy/config.docker.json"
}
