# Sourced by scripts that run what cargo built. Cargo is asked where each binary is, so
# CARGO_TARGET_DIR, `build.target-dir` and `--target` are honoured and a stale ./target binary
# is never run after building elsewhere.

# cargo_build_bin NAME CARGO_BUILD_ARGS...: builds (diagnostics on stderr as usual) and prints
# the path of binary NAME as cargo reports it; fails if cargo names none.
cargo_build_bin() {
  local name=$1 path
  shift
  path="$(cargo build "$@" --message-format=json-render-diagnostics |
    sed -n 's|.*"reason":"compiler-artifact".*"executable":"\([^"]*/'"$name"'\)".*|\1|p' |
    tail -n 1)" || return 1
  if [ -z "$path" ] || [ ! -x "$path" ]; then
    echo "cargo_build_bin: cargo reported no binary named $name" >&2
    return 1
  fi
  printf '%s\n' "$path"
}

# cargo_target_dir: the target directory cargo uses here.
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps |
    sed -n 's|.*"target_directory":"\([^"]*\)".*|\1|p'
}
