#!/usr/bin/env bash
# `make static`: build a fully static modelmux and prove it.
#
#   1. build: x86_64-unknown-linux-musl (installs the rustup target, and musl-tools when we are
#      root on Debian/Ubuntu: ring compiles C and needs a musl C compiler); if that is not
#      possible, falls back to glibc with +crt-static (works, but glibc's static getaddrinfo
#      still wants NSS libraries at run time, so prefer musl for FROM scratch images).
#   2. copy to <cargo's target dir>/static/modelmux and show `file`, `ldd` and the size (budget: 3.5 MiB).
#   3. smoke test on loopback: demo backend reached as http://localhost:PORT, one plain and
#      one streamed chat completion through the static binary, --check-config, --healthcheck.
#   4. TLS: an endpoint pointing at a local TLS server whose certificate comes from a private
#      test CA must fail certificate verification (502): proves rustls and the bundled webpki
#      roots work in the static binary; when the build supports CM_OPEN_WEBUI_PROXY_CA_FILE,
#      trusting that CA must then give a full HTTPS exchange (200).
#   5. empty root: when we are root, chroot into a directory holding only the binary and its
#      config and run it as uid 65532 (what the FROM scratch image does), then start it as the
#      image does: no flags, the image's default config (deploy/config.docker.json) at
#      /etc/modelmux/config.json, --healthcheck with the same environment.
#
# Environment: STATIC_TARGET (default x86_64-unknown-linux-musl), STATIC_MAX_BYTES (default
# 3670016), STATIC_SKIP_TESTS=1 to only build and inspect.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${STATIC_TARGET:-x86_64-unknown-linux-musl}"
max_bytes="${STATIC_MAX_BYTES:-3670016}"
# Cargo says where it builds (CARGO_TARGET_DIR is honoured), never a hard-coded ./target.
. scripts/cargo_bins.sh
out="$(cargo_target_dir)/static/modelmux"

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'static: FAIL: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
step "build ($target)"
built=""
musl_cc_ok() { command -v x86_64-linux-musl-gcc >/dev/null 2>&1 || command -v musl-gcc >/dev/null 2>&1; }
if [ "$target" = x86_64-unknown-linux-musl ]; then
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" || echo "static: cannot add rustup target $target"
  fi
  if ! musl_cc_ok && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "static: ring needs a musl C compiler; installing musl-tools"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1; }) ||
      echo "static: apt-get install musl-tools failed"
  fi
  if musl_cc_ok && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    if ! command -v x86_64-linux-musl-gcc >/dev/null 2>&1; then
      export CC_x86_64_unknown_linux_musl=musl-gcc
    fi
    # A failure here is the code's, not the toolchain's: glibc would fail the same way.
    built="$(cargo_build_bin modelmux --release --locked --bin modelmux --target "$target")" ||
      fail "musl build failed"
  else
    echo "static: no musl toolchain (rustup target or musl-gcc missing)"
  fi
  if [ -z "$built" ]; then
    echo "static: falling back to glibc with -C target-feature=+crt-static"
    target=x86_64-unknown-linux-gnu
  fi
fi
if [ -z "$built" ]; then
  built="$(RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo_build_bin modelmux --release --locked --bin modelmux --target "$target")"
fi
mkdir -p "$(dirname "$out")"
cp "$built" "$out"
echo "static: $built -> $out"

# ---------------------------------------------------------------------------------------------
step "linkage and size"
file_out="$(file -L "$out")"
ldd_out="$(ldd "$out" 2>&1 || true)"
echo "file: $file_out"
echo "ldd:  $(echo "$ldd_out" | sed 's/^[[:space:]]*//')"
if command -v readelf >/dev/null 2>&1; then
  echo "readelf: $(readelf -d "$out" 2>/dev/null | grep -c '(NEEDED)' || true) NEEDED shared libraries, interpreter: $(readelf -l "$out" | grep -o 'Requesting program interpreter: [^]]*' || echo none)"
fi
echo "$file_out" | grep -Eq 'statically linked|static-pie linked' || fail "file does not say statically linked"
echo "$ldd_out" | grep -Eq 'not a dynamic executable|statically linked' || fail "ldd lists shared libraries"
bytes="$(stat -c %s "$out")"
awk -v b="$bytes" 'BEGIN { printf "size: %d bytes = %.2f MB = %.2f MiB\n", b, b / 1e6, b / 1048576 }'
if [ "$bytes" -ge "$max_bytes" ]; then
  # The glibc fallback carries more libc (about 3.3 MB): a warning there, a failure for musl.
  case "$target" in
    *-musl) fail "binary is $bytes bytes, budget $max_bytes" ;;
    *) echo "static: WARNING: $bytes bytes is over the $max_bytes budget (glibc fallback; musl is smaller)" ;;
  esac
fi
"$out" --version

if [ -n "${STATIC_SKIP_TESTS:-}" ]; then
  echo "static: STATIC_SKIP_TESTS set; skipping the smoke, TLS and chroot checks"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
step "smoke test on loopback"
demo="$(cargo_build_bin demo_backend --release --locked --bin demo_backend)"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # PORT PID NAME LOG
  local i
  for i in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { cat "$4" >&2; fail "$3 exited before listening"; }
    sleep 0.1
  done
  cat "$4" >&2
  fail "$3 is not listening on $1 after 10 s"
}
chat() { # PORT MODEL TEXT [stream] -> body then "HTTP <code>"
  local stream=false
  [ "${4:-}" = stream ] && stream=true
  curl -sS --max-time 20 -H 'Content-Type: application/json' \
    -d "{\"model\":\"$2\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"$3\"}]}" \
    -w '\nHTTP %{http_code}\n' "http://127.0.0.1:$1/v1/chat/completions"
}

backend_port="$(free_port)"
tls_port="$(free_port)"
proxy_port="$(free_port)"

"$demo" "127.0.0.1:$backend_port" --chunk-delay-ms 0 >"$tmp/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port" "$!" "demo backend" "$tmp/backend.log"

# "localhost" exercises the resolver of the static binary; ${...} exercises env substitution.
export MODELMUX_STATIC_TEST_KEY=sk-static-smoke
cat >"$tmp/config.json" <<EOF
{
  "endpoints": {
    "echo": {
      "displayName": "Echo via localhost",
      "url": "http://localhost:$backend_port",
      "apiKey": "\${MODELMUX_STATIC_TEST_KEY}",
      "actualModelName": "echo-backend"
    },
    "echo-ip": {
      "displayName": "Echo via 127.0.0.1",
      "url": "http://127.0.0.1:$backend_port",
      "actualModelName": "echo-backend"
    },
    "tls-private-ca": {
      "displayName": "TLS with a private CA (untrusted by default)",
      "url": "https://127.0.0.1:$tls_port",
      "actualModelName": "nobody"
    }
  }
}
EOF
chmod 644 "$tmp/config.json"

"$out" --check-config --config "$tmp/config.json"
"$out" --config "$tmp/config.json" --host 127.0.0.1 --port "$proxy_port" >"$tmp/proxy.log" 2>&1 &
pids+=($!)
wait_port "$proxy_port" "$!" "modelmux (static)" "$tmp/proxy.log"
"$out" --healthcheck --port "$proxy_port"

reply="$(chat "$proxy_port" echo 'hello from the static binary')"
echo "$reply"
echo "$reply" | grep -q '^HTTP 200$' || fail "chat completion via localhost did not answer 200"
echo "$reply" | grep -q 'hello from the static binary' || fail "echo content missing"
streamed="$(chat "$proxy_port" echo 'streamed hello' stream)"
echo "stream: $(echo "$streamed" | grep -c '^data: ') data lines, last: $(echo "$streamed" | grep '^data: ' | tail -n1), $(echo "$streamed" | tail -n1)"
echo "$streamed" | grep -q '^data: \[DONE\]' || fail "stream did not end with [DONE]"
echo "static: smoke OK (plain and streamed completions through http://localhost:$backend_port)"

# ---------------------------------------------------------------------------------------------
step "TLS: a server whose CA the proxy does not trust must fail certificate verification"
# A throwaway CA and a server certificate for 127.0.0.1 (webpki refuses a CA certificate used
# as a server certificate, so a bare `req -x509` cert would not do for the positive check).
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$tmp/leaf.ext"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=modelmux-static-test-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$tmp/key.pem" -out "$tmp/leaf.csr"
  openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 1 -extfile "$tmp/leaf.ext" -out "$tmp/cert.pem"
} >/dev/null 2>&1 || fail "openssl could not make the test certificates"
cat >"$tmp/tls_server.py" <<'EOF'
import socket, ssl, sys
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    conn.settimeout(10)
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError) as e:
        print("tls server: handshake failed:", e, flush=True)
        conn.close()
        continue
    print("tls server: handshake completed", flush=True)
    try:  # answer one chat completion, so a client that trusts the cert sees a full exchange
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = tls.recv(65536)
            if not chunk:
                break
            body += chunk
        reply = (b'{"id":"chatcmpl-tls","object":"chat.completion","created":1,"model":"tls-backend",'
                 b'"choices":[{"index":0,"message":{"role":"assistant","content":"hello over TLS"},'
                 b'"finish_reason":"stop"}]}')
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + b"Content-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply)
    except OSError as e:
        print("tls server: exchange failed:", e, flush=True)
    tls.close()
EOF
python3 "$tmp/tls_server.py" "$tls_port" "$tmp/cert.pem" "$tmp/key.pem" >"$tmp/tls.log" 2>&1 &
pids+=($!)
wait_port "$tls_port" "$!" "TLS server" "$tmp/tls.log"
sleep 0.2
seen="$(wc -l <"$tmp/tls.log")" # skip the wait_port probe's aborted handshake
reply="$(chat "$proxy_port" tls-private-ca 'hello over TLS')"
echo "$reply"
sleep 0.3
tail -n "+$((seen + 1))" "$tmp/tls.log" >"$tmp/tls.new"
cat "$tmp/tls.new"
grep 'tls-private-ca\|127.0.0.1:'"$tls_port" "$tmp/proxy.log" | tail -n 2 || true
echo "$reply" | grep -q '^HTTP 502$' || fail "expected 502 from the untrusted TLS backend"
grep -qi 'unknown ca\|UNKNOWN_CA\|bad certificate\|certificate' "$tmp/tls.new" ||
  fail "the TLS server did not see a certificate alert from the proxy"
echo "static: TLS OK (rustls handshake ran and rejected the untrusted certificate)"
# Positive check when this build can trust an extra CA: the same backend must then answer 200.
if "$out" --help | grep -q CM_OPEN_WEBUI_PROXY_CA_FILE; then
  ca_port="$(free_port)"
  CM_OPEN_WEBUI_PROXY_CA_FILE="$tmp/ca.pem" "$out" --config "$tmp/config.json" --host 127.0.0.1 \
    --port "$ca_port" >"$tmp/proxy-ca.log" 2>&1 &
  pids+=($!)
  wait_port "$ca_port" "$!" "modelmux (CA file)" "$tmp/proxy-ca.log"
  reply="$(chat "$ca_port" tls-private-ca 'hello over TLS')"
  echo "$reply"
  echo "$reply" | grep -q '^HTTP 200$' || fail "with CM_OPEN_WEBUI_PROXY_CA_FILE the TLS backend should answer 200"
  echo "static: TLS OK with CM_OPEN_WEBUI_PROXY_CA_FILE (full HTTPS exchange through the static binary)"
else
  echo "static: this build has no CM_OPEN_WEBUI_PROXY_CA_FILE; skipping the trusted-CA TLS check"
fi

# ---------------------------------------------------------------------------------------------
step "empty root: chroot into a directory with only the binary and its config"
if [ "$(id -u)" != 0 ] || ! command -v chroot >/dev/null 2>&1; then
  echo "static: SKIP chroot check (needs root and chroot)"
else
  root="$tmp/root"
  mkdir -p "$root"
  chmod 755 "$root"
  cp "$out" "$root/modelmux"
  cp "$tmp/config.json" "$root/config.json"
  chmod 755 "$root/modelmux"
  if ! chroot --userspec=65532:65532 "$root" /modelmux --version; then
    echo "static: SKIP chroot check (chroot not permitted here)"
  else
    (cd "$root" && find . -mindepth 1 | sort | sed 's/^/  root: /')
    chroot --userspec=65532:65532 "$root" /modelmux --check-config --config /config.json
    chroot_port="$(free_port)"
    chroot --userspec=65532:65532 "$root" /modelmux --config /config.json --host 127.0.0.1 \
      --port "$chroot_port" >"$tmp/chroot.log" 2>&1 &
    pids+=($!)
    wait_port "$chroot_port" "$!" "modelmux (chroot)" "$tmp/chroot.log"
    chroot --userspec=65532:65532 "$root" /modelmux --healthcheck --port "$chroot_port" ||
      fail "--healthcheck inside the empty root failed"
    # An IP-literal backend needs no file at all.
    reply="$(chat "$chroot_port" echo-ip 'hello from an empty root')"
    echo "$reply" | grep -q '^HTTP 200$' || { echo "$reply"; fail "chat through the chrooted binary failed"; }
    echo "static: chroot: http://127.0.0.1 backend -> $(echo "$reply" | tail -n 1)"
    # musl resolves "localhost" from /etc/hosts only (no built-in special case): with no
    # /etc/hosts it fails. Docker and Kubernetes always mount /etc/hosts, even into FROM scratch.
    reply="$(chat "$chroot_port" echo 'hello via localhost')"
    echo "static: chroot: http://localhost backend without /etc/hosts -> $(echo "$reply" | tail -n 1)"
    mkdir -p "$root/etc"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
    reply="$(chat "$chroot_port" echo 'hello via localhost')"
    echo "static: chroot: http://localhost backend with a one-line /etc/hosts (as Docker provides) -> $(echo "$reply" | tail -n 1)"
    echo "$reply" | grep -q '^HTTP 200$' || { echo "$reply"; fail "localhost did not resolve even with /etc/hosts"; }
    echo "static: chroot OK (only the binary and its config, uid 65532)"
    # The Docker image's own config, placed and found as the Dockerfile does (no flags, the path
    # from CM_OPEN_WEBUI_PROXY_CONFIG_FILE, the key from the environment), as
    # `docker run -e OPENAI_API_KEY modelmux` starts it; a free port stands in for 3333.
    mkdir -p "$root/etc/modelmux"
    install -m 444 deploy/config.docker.json "$root/etc/modelmux/config.json"
    image_port="$(free_port)"
    image_env=(CM_OPEN_WEBUI_PROXY_CONFIG_FILE=/etc/modelmux/config.json
      CM_OPEN_WEBUI_PROXY_PORT="$image_port" OPENAI_API_KEY=sk-static-image-check)
    env "${image_env[@]}" chroot --userspec=65532:65532 "$root" /modelmux --check-config ||
      fail "the image's default config (deploy/config.docker.json) does not load"
    env "${image_env[@]}" chroot --userspec=65532:65532 "$root" /modelmux >"$tmp/image.log" 2>&1 &
    pids+=($!)
    wait_port "$image_port" "$!" "modelmux (image layout)" "$tmp/image.log"
    env "${image_env[@]}" chroot --userspec=65532:65532 "$root" /modelmux --healthcheck ||
      fail "--healthcheck with the image's environment failed"
    models="$(curl -sS --max-time 5 "http://127.0.0.1:$image_port/v1/models")"
    echo "$models" | grep -q '"id":"gpt-4o-mini"' || { echo "$models"; fail "the image's default model is not listed"; }
    echo "static: image layout OK (/etc/modelmux/config.json from deploy/config.docker.json serves gpt-4o-mini)"
  fi
fi

step "done: $out ($bytes bytes) is static, serves, speaks TLS and runs from an empty root"
