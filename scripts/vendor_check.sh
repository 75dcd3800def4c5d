#!/usr/bin/env bash
# `make vendor-check`: shows how vendor/tiny_http and vendor/ureq differ from the pristine
# crates.io releases they were copied from, fails when a changed file is not named in the
# crate's MODELMUX_PATCHES.md, and runs each vendored crate's own unit tests (the vendored
# src/ with the pristine manifest, so its dev-dependencies are there).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The pristine sources, through cargo itself (no patch applies to this throwaway project).
# Each crate's tests run on its vendored manifest plus the few dev-dependencies its unit tests
# use (the pristine dev-dependency lists hold crates that no longer build on current Rust).
mkdir -p "$work/pristine/src"
cat > "$work/pristine/Cargo.toml" <<'TOML'
[package]
name = "pristine"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
tiny_http = "=0.12.0"
ureq = { version = "=2.12.1", default-features = false }
TOML
touch "$work/pristine/src/lib.rs"
(cd "$work/pristine" && cargo vendor --quiet --versioned-dirs "$work/crates" >/dev/null)

status=0
check() { # crate version dev-dependencies "cargo flags" "tests to skip"
  local crate=$1 version=$2 devdeps=$3 flags=$4 skips=$5
  local pristine="$work/crates/$crate-$version" vendored="$root/vendor/$crate"
  echo "== $crate $version: vendor/$crate/src against crates.io"
  local changed
  changed=$(diff -rq "$pristine/src" "$vendored/src" | sed -E 's#^Files .*/src/(.*) and .* differ$#\1#; s#^Only in '"$vendored"'/src(/?)(.*): (.*)$#\2\1\3 (added)#; s#^Only in '"$pristine"'/src(/?)(.*): (.*)$#\2\1\3 (removed)#' || true)
  local d
  d=$(diff -ru "$pristine/src" "$vendored/src" || true)
  echo "$changed" | sed 's/^/  changed: /'
  echo "  lines added: $(grep -c '^+[^+]' <<< "$d" || true), removed: $(grep -c '^-[^-]' <<< "$d" || true)"
  [ -n "${VERBOSE:-}" ] && echo "$d"
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    file=${line%% (*}
    if ! grep -q "src/$file" "$vendored/MODELMUX_PATCHES.md"; then
      echo "vendor-check: vendor/$crate/src/$file differs from crates.io but MODELMUX_PATCHES.md does not name it" >&2
      status=1
    fi
  done <<< "$changed"
  echo "== $crate: its own unit tests"
  local t="$work/test-$crate"
  mkdir -p "$t"
  cp -r "$vendored/src" "$vendored/Cargo.toml" "$t/"
  printf '\n[workspace]\n\n[dev-dependencies]\n%b' "$devdeps" >> "$t/Cargo.toml"
  local skip_args=()
  for s in $skips; do skip_args+=(--skip "$s"); done
  # shellcheck disable=SC2086 # flags are words on purpose
  if (cd "$t" && timeout 600 cargo test --lib --target-dir "$work/target" $flags -- "${skip_args[@]}" >"$work/test-$crate.log" 2>&1); then
    grep -E '^test result' "$work/test-$crate.log"
  else
    tail -n 30 "$work/test-$crate.log"
    echo "vendor-check: the unit tests of vendored $crate failed" >&2
    status=1
  fi
}
check tiny_http 0.12.0 "" "" ""
# ureq's tests that need the internet (google.com, httpbin.org, an unroutable address) are
# skipped: this machine and CI reach only package registries.
check ureq 2.12.1 'env_logger = { version = "<=0.9", default-features = false }\nserde = { version = "1", features = ["derive"] }\n' \
  "--no-default-features --features tls,json" \
  "connect_http_google connect_https_google_rustls status_code_error_redirect read_range_rustls socket_addr_fail_over"
exit $status
