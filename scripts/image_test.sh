#!/usr/bin/env bash
# The container image, built and run as the deploy recipes run it (called by .ci/run).
#
#   1. the FROM scratch runtime stage of the Dockerfile, built from the binary `make static`
#      makes (STATIC_SKIP_TESTS=1 ./scripts/static.sh: the same cargo command as the Dockerfile's
#      Rust stage); its contents are exactly the binary, the default config and the empty data
#      folder owned by 65532, its user 65532:65532, its HEALTHCHECK `/modelmux --healthcheck`.
#   2. the compose recipe's config (deploy/config.compose.json, with a mock backend for its
#      endpoints and a local redis-server for its limitsStore), read-only root filesystem, no
#      capabilities, the config folder mounted read-only and a named volume at
#      /var/lib/modelmux: the quickstart's three curls, a signed Open WebUI user token taken as
#      the user and a forged one refused, a request without the key refused, /usage, --healthcheck
#      inside the container, the server running as uid 65532, quota counters in Redis, a stream
#      in flight at SIGTERM (`stop`) finished and the container exiting 0, and every one of those
#      requests in the ledger on the volume; `modelmux usage` in the container reads it.
#   3. the Kubernetes recipe's config (the ConfigMap in deploy/kubernetes/configmap.yaml) with
#      POD_NAME set as the downward API sets it: the ledger is usage-<pod name>.jsonl on a host
#      folder; when the build locks its ledger, a second container on the same file must refuse
#      to start.
#
# Skips (exit 0, with a banner saying why) only when no container engine can build or run a
# container here: neither podman nor docker installed, docker's daemon not answering, or a probe
# image holding one text file (nothing of modelmux) failing to build or to get as far as exec.
# IMAGE_TEST_REQUIRED=1 turns those skips into failures.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cargo_bins.sh
. scripts/container_engine.sh

started=$SECONDS
say() { printf 'image_test: %s\n' "$*"; }
fail() {
  printf 'image_test: FAIL: %s\n' "$*" >&2
  exit 1
}
skip() {
  if [ -n "${IMAGE_TEST_REQUIRED:-}" ]; then
    fail "cannot run containers here (IMAGE_TEST_REQUIRED is set): $*"
  fi
  printf '\n%s\nimage_test: SKIPPED: the container image was NOT tested.\nimage_test: reason: %s\n%s\n\n' \
    '************************************************************************' "$*" \
    '************************************************************************' >&2
  exit 0
}

engine_pick || skip "$ENGINE_WHY"
say "engine: $ENGINE ($("${ENGINE_CMD[0]}" --version 2>/dev/null | head -n 1)), command: ${ENGINE_CMD[*]}"

tmp="$(mktemp -d)"
id="mm-image-test-$$"
tag="localhost/modelmux:image-test-$$"
pids=()
containers=()
volume=""
cleanup() {
  local p c
  # -v: also the anonymous volume the image's VOLUME gave a container run without one.
  for c in "${containers[@]}"; do engine rm -f -v "$c" >/dev/null 2>&1 || true; done
  [ -n "$volume" ] && { engine volume rm -f "$volume" >/dev/null 2>&1 || true; }
  engine rmi -f "$tag" "$tag-probe" >/dev/null 2>&1 || true
  # podman keeps the prebuilt stage as an untagged image; its build log names it.
  local stage
  stage="$(sed -n 's/^.*STEP 1\/1: FROM \([0-9a-f]\{64\}\) AS binary$/\1/p' "$tmp/build.log" 2>/dev/null | head -n 1)"
  [ -n "$stage" ] && { engine rmi "$stage" >/dev/null 2>&1 || true; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp" "${ENGINE_CONF_DIR:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Can this engine build at all? A FROM scratch image of one text file, nothing of ours in it.
mkdir -p "$tmp/probe"
echo probe >"$tmp/probe/probe.txt"
printf 'FROM scratch\nCOPY probe.txt /probe.txt\n' >"$tmp/probe/Dockerfile"
if ! err="$(engine build -t "$tag-probe" "$tmp/probe" 2>&1)"; then
  skip "$ENGINE cannot build a FROM scratch image here: $(printf '%s' "$err" | tail -n 3 | tr '\n' ' ')"
fi
# Can it run one? Executing a file the image lacks gets exit 127 ("not found") from an engine
# that got as far as exec; an engine that cannot set up a container (namespaces, cgroups,
# rlimits) fails earlier with another code. Nothing of modelmux is involved yet.
set +e
err="$(engine run --rm --no-healthcheck --network host "$tag-probe" /nonexistent 2>&1)"
rc=$?
set -e
if [ "$rc" != 127 ]; then
  skip "$ENGINE cannot run a container here (exit $rc where a working engine exits 127): $(printf '%s' "$err" | tail -n 3 | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------
say "static binary (scripts/static.sh, STATIC_SKIP_TESTS=1)"
# The size budget is `make static`'s to enforce (it warns here): this test is about the image.
STATIC_SKIP_TESTS=1 STATIC_MAX_BYTES=$((64 << 20)) ./scripts/static.sh >"$tmp/static.log" 2>&1 || {
  cat "$tmp/static.log" >&2
  fail "scripts/static.sh failed"
}
grep -E '^(file|size):' "$tmp/static.log" | sed 's/^/image_test:   /'
bin="$(cargo_target_dir)/static/modelmux"
budget="$(sed -n 's/^max_bytes="${STATIC_MAX_BYTES:-\([0-9]*\)}"$/\1/p' scripts/static.sh)"
if [ -n "$budget" ] && [ "$(stat -c %s "$bin")" -ge "$budget" ]; then
  say "WARNING: the binary is $(stat -c %s "$bin") bytes, over make static's budget of $budget (make static fails)"
fi
image_context "$tmp/ctx" "$bin"
say "building the runtime stage (--build-arg MODELMUX_BINARY=prebuilt)"
engine_build "$tag" "$tmp/ctx" --build-arg MODELMUX_BINARY=prebuilt >"$tmp/build.log" 2>&1 || {
  cat "$tmp/build.log" >&2
  fail "building the image failed"
}

set +e
version="$(engine run --rm --no-healthcheck --network host "$tag" --version 2>"$tmp/run.err")"
rc=$?
set -e
[ "$rc" = 0 ] || {
  cat "$tmp/run.err" >&2
  fail "modelmux --version in the image exited $rc"
}
say "image runs: $version"

# ---------------------------------------------------------------------------------------------
say "image contents and metadata"
probe_ctr="$(engine create "$tag")"
containers+=("$probe_ctr")
engine export "$probe_ctr" | tar -tvf - >"$tmp/contents.txt"
engine image inspect "$tag" >"$tmp/inspect.json"
python3 - "$tmp/contents.txt" "$tmp/inspect.json" <<'EOF' || fail "image contents or metadata are not as the Dockerfile promises"
import json, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
# tar -tv: mode owner/group size date time name
entries = {r[-1].rstrip("/"): (r[0], r[1]) for r in rows}
# podman and docker add empty mount points for the files they manage in a container.
managed = {"dev", "proc", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv",
           "run", "run/.containerenv", "dev/console", "dev/pts", "dev/shm", "etc/mtab"}
expected = {"modelmux", "etc", "etc/modelmux", "etc/modelmux/config.json", "var", "var/lib",
            "var/lib/modelmux"}
extra = set(entries) - expected - managed
missing = expected - set(entries)
ok = True
if missing or extra:
    print(f"image_test: missing {sorted(missing)}, unexpected {sorted(extra)}")
    ok = False
if entries.get("var/lib/modelmux", ("", ""))[1] != "65532/65532":
    print(f"image_test: /var/lib/modelmux owned by {entries.get('var/lib/modelmux')}, not 65532/65532")
    ok = False
if entries.get("var/lib", ("", ""))[1] != "0/0":
    print(f"image_test: /var/lib owned by {entries.get('var/lib')}, not root")
    ok = False
image = json.load(open(sys.argv[2]))[0]
cfg = image["Config"]
want = {"User": "65532:65532", "Entrypoint": ["/modelmux"]}
for k, v in want.items():
    if cfg.get(k) != v:
        print(f"image_test: Config.{k} is {cfg.get(k)!r}, not {v!r}")
        ok = False
if "/var/lib/modelmux" not in (cfg.get("Volumes") or {}):
    print(f"image_test: no VOLUME /var/lib/modelmux: {cfg.get('Volumes')}")
    ok = False
# docker keeps it in Config, podman beside it.
hc = (cfg.get("Healthcheck") or image.get("Healthcheck") or {}).get("Test")
if hc != ["CMD", "/modelmux", "--healthcheck"]:
    print(f"image_test: HEALTHCHECK is {hc!r}")
    ok = False
if "CM_OPEN_WEBUI_PROXY_CONFIG_FILE=/etc/modelmux/config.json" not in (cfg.get("Env") or []):
    print(f"image_test: Env is {cfg.get('Env')}")
    ok = False
sys.exit(0 if ok else 1)
EOF
say "  $(grep -c . "$tmp/contents.txt") entries; /var/lib/modelmux owned by 65532; user 65532:65532; HEALTHCHECK /modelmux --healthcheck"

# ---------------------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # PORT NAME LOG [CONTAINER]
  local i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if [ -n "${4:-}" ] && [ "$(engine inspect -f '{{.State.Running}}' "$4" 2>/dev/null)" != true ]; then
      engine logs "$4" >&2 2>&1 || true
      fail "$2 exited before listening"
    fi
    sleep 0.1
  done
  [ -n "${4:-}" ] && { engine logs "$4" >&2 2>&1 || true; }
  [ -f "$3" ] && cat "$3" >&2
  fail "$2 is not listening on $1 after 15 s"
}

say "mock backend and redis-server on loopback"
demo="$(cargo_build_bin demo_backend --locked --bin demo_backend 2>"$tmp/cargo.log")" || {
  cat "$tmp/cargo.log" >&2
  fail "building demo_backend failed"
}
backend_port="$(free_port)"
"$demo" "127.0.0.1:$backend_port" --include-usage --chunk-delay-ms 20 >"$tmp/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port" "demo backend" "$tmp/backend.log"
command -v redis-server >/dev/null || fail "redis-server is not installed (Debian: apt-get install redis-server)"
redis_port="$(free_port)"
redis_password="image-test-$$-redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --requirepass "$redis_password" >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" "redis-server" "$tmp/redis.log"

# The recipes' configs with the mock for their endpoints and the local Redis for limitsStore;
# everything else (keys, identity, usageLog, limits) as shipped.
recipe_config() { # SOURCE OUT
  python3 - "$1" "$2" "$backend_port" "$redis_port" <<'EOF'
import json, sys
src, out, backend, redis = sys.argv[1:5]
if src.endswith(".yaml"):
    import yaml
    docs = [d for d in yaml.safe_load_all(open(src)) if d]
    text = next(d for d in docs if d.get("kind") == "ConfigMap")["data"]["config.json"]
else:
    text = open(src).read()
cfg = json.loads(text)
cfg["endpoints"] = {"echo": {"url": f"http://127.0.0.1:{backend}", "actualModelName": "echo-backend"}}
cfg["limitsStore"] = "redis://:${REDIS_PASSWORD}@127.0.0.1:" + redis + "/0"
json.dump(cfg, open(out, "w"), indent=2)
EOF
}
mkdir -p "$tmp/etc-compose" "$tmp/etc-k8s"
recipe_config deploy/config.compose.json "$tmp/etc-compose/config.json"
recipe_config deploy/kubernetes/configmap.yaml "$tmp/etc-k8s/config.json"
chmod 755 "$tmp" "$tmp/etc-compose" "$tmp/etc-k8s"
chmod 644 "$tmp/etc-compose/config.json" "$tmp/etc-k8s/config.json"

jwt_secret="image-test-$$-jwt-secret-0123456789abcdef"
owui_key="image-test-$$-owui-key"
admin_key="image-test-$$-admin-key"
# A token as Open WebUI signs it with FORWARD_USER_INFO_HEADER_JWT_SECRET.
jwt() { # SUB SECRET
  python3 - "$1" "$2" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": sys.argv[1], "email": sys.argv[1] + "@example.com", "name": sys.argv[1],
                       "role": "user", "iss": "open-webui", "iat": now, "exp": now + 300}).encode())
sig = b64(hmac.new(sys.argv[2].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
}
run_modelmux() { # NAME PORT ETC_DIR DATA_MOUNT [extra engine args] -> container id
  local name=$1 port=$2 etc=$3 data=$4
  shift 4
  # stderr to a file: podman without systemd complains that it cannot set up healthcheck
  # timers (the test runs the healthcheck itself).
  engine run -d --name "$name" --network host --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    -e CM_OPEN_WEBUI_PROXY_HOST=127.0.0.1 -e CM_OPEN_WEBUI_PROXY_PORT="$port" \
    -e CM_OPEN_WEBUI_PROXY_DRAIN_SECS=20 \
    -e OWUI_JWT_SECRET="$jwt_secret" -e MODELMUX_OWUI_KEY="$owui_key" \
    -e CM_OPEN_WEBUI_PROXY_ADMIN_KEY="$admin_key" -e REDIS_PASSWORD="$redis_password" \
    -v "$etc:/etc/modelmux:ro" -v "$data:/var/lib/modelmux" "$@" "$tag" 2>"$tmp/$name.err" || {
    cat "$tmp/$name.err" >&2
    fail "starting container $name failed"
  }
}
chat() { # PORT USER_TOKEN TEXT [stream] -> body, then "HTTP <code>"
  local stream=false
  [ "${4:-}" = stream ] && stream=true
  curl -sS -N --max-time 30 -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $owui_key" -H "X-OpenWebUI-User-Jwt: $2" \
    -d "{\"model\":\"echo\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"$3\"}]}" \
    -w '\nHTTP %{http_code}\n' "http://127.0.0.1:$1/v1/chat/completions"
}
expect() { # WHAT TEXT PATTERN
  printf '%s\n' "$2" | grep -qE -- "$3" || {
    printf '%s\n' "$2" >&2
    fail "$1: no match for $3"
  }
}

# ---------------------------------------------------------------------------------------------
say "the compose recipe's config: read-only root, named volume, identity, Redis, drain"
volume="$id-data"
engine volume create "$volume" >/dev/null
port="$(free_port)"
ctr="$(run_modelmux "$id-compose" "$port" "$tmp/etc-compose" "$volume")"
containers+=("$ctr")
wait_port "$port" "modelmux (compose config)" /dev/null "$ctr"

expect "/health" "$(curl -sS -w '\nHTTP %{http_code}' "http://127.0.0.1:$port/health")" '^HTTP 200$'
# The quickstart's three curls, with the recipe's client key and a signed user.
ann="$(jwt ann "$jwt_secret")"
expect "/v1/models" "$(curl -sS -H "Authorization: Bearer $owui_key" -w '\nHTTP %{http_code}' \
  "http://127.0.0.1:$port/v1/models")" '"id":"echo"'
reply="$(chat "$port" "$ann" 'hello from the image')"
expect "chat completion" "$reply" '^HTTP 200$'
expect "chat completion" "$reply" '"content":"hello from the image"'
reply="$(chat "$port" "$ann" 'stream me please' stream)"
expect "streamed chat completion" "$reply" '^data: \[DONE\]'
expect "streamed chat completion" "$reply" '^HTTP 200$'
say "  /health, /v1/models, a chat completion and a streamed one: 200"
forged="$(jwt mallory not-the-secret-0123456789abcdef0123)"
expect "forged user token" "$(chat "$port" "$forged" 'let me in')" '^HTTP 401$'
expect "no client key" "$(curl -sS -w '\nHTTP %{http_code}' -H 'Content-Type: application/json' \
  -d '{"model":"echo","messages":[{"role":"user","content":"x"}]}' \
  "http://127.0.0.1:$port/v1/chat/completions")" '^HTTP 401$'
say "  a forged user token and a request without the client key: 401"
usage="$(curl -sS -H "Authorization: Bearer $admin_key" "http://127.0.0.1:$port/usage?by=user")"
expect "/usage" "$usage" '"user":"ann","requests":2,'
engine exec "$ctr" /modelmux --healthcheck >/dev/null || fail "/modelmux --healthcheck in the container exited non-zero"
# As docs/deploy.md shows it: `docker compose exec modelmux /modelmux usage --by user,model`.
report="$(engine exec "$ctr" /modelmux usage --by user)"
expect "modelmux usage in the container" "$report" '^ann +2 '
if [ "$ENGINE" = podman ]; then
  # The image's own HEALTHCHECK, as the engine runs it.
  engine healthcheck run "$ctr" 2>/dev/null || fail "podman healthcheck run: unhealthy"
fi
say "  /usage and modelmux usage in the container answer for ann; --healthcheck inside it: 0"
pid="$(engine inspect -f '{{.State.Pid}}' "$ctr")"
if [ -r "/proc/$pid/status" ]; then
  uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
  [ "$uid" = 65532 ] || fail "the server runs as uid $uid, not 65532"
  say "  the server runs as uid $uid; $(grep -E '^VmRSS:' "/proc/$pid/status" | tr -s ' \t' ' ')"
fi
keys="$(redis-cli -p "$redis_port" -a "$redis_password" --no-auth-warning --scan | grep -c . || true)"
[ "$keys" -gt 0 ] || fail "no quota counters in Redis: the limitsStore was not used"
say "  $keys keys in Redis (the per-user quota went through the shared store)"

# SIGTERM with a stream in flight: it must finish, its ledger line be written, the exit be 0.
# 300 words 20 ms apart: a 6 s stream.
long="$(printf 'word%s ' $(seq 1 300))"
: >"$tmp/drained.txt"
chat "$port" "$(jwt bob "$jwt_secret")" "$long" stream >"$tmp/drained.txt" 2>&1 &
stream_pid=$!
for _ in $(seq 1 50); do
  grep -q '^data: ' "$tmp/drained.txt" && break
  sleep 0.1
done
grep -q '^data: ' "$tmp/drained.txt" || fail "the long stream had not started after 5 s"
! grep -q '^data: \[DONE\]' "$tmp/drained.txt" || fail "the long stream ended before stop: nothing was drained"
engine stop -t 25 "$ctr" >/dev/null 2>&1
wait "$stream_pid" || true
expect "stream in flight at SIGTERM" "$(cat "$tmp/drained.txt")" '^data: \[DONE\]'
exit_code="$(engine inspect -f '{{.State.ExitCode}}' "$ctr")"
[ "$exit_code" = 0 ] || {
  engine logs "$ctr" >&2 2>&1 || true
  fail "the container exited $exit_code after SIGTERM"
}
say "  SIGTERM during a stream: the stream finished, exit 0"

mountpoint="$(engine volume inspect -f '{{.Mountpoint}}' "$volume")"
ledger="$mountpoint/usage.jsonl"
[ -s "$ledger" ] || fail "no ledger at usage.jsonl on the volume ($(ls -la "$mountpoint" 2>&1))"
python3 - "$ledger" <<'EOF' || fail "the ledger on the volume lacks lines"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
def have(what, pred):
    if not any(pred(l) for l in lines):
        print(f"image_test: no ledger line for {what}:")
        for l in lines:
            print("  ", json.dumps(l))
        sys.exit(1)
have("ann's two chats", lambda l: l["user"] == "ann" and l["status"] == 200)
assert sum(1 for l in lines if l["user"] == "ann" and l["outcome"] == "complete") == 2, lines
have("bob's drained stream", lambda l: l["user"] == "bob" and l["outcome"] == "complete" and l["completion_tokens"] >= 300)
have("the forged token, refused", lambda l: l["status"] == 401 and l["user"] == "openwebui")
print(f"image_test:   {len(lines)} ledger lines on the volume, users {sorted({l['user'] for l in lines})}")
EOF
owner="$(stat -c %u:%g "$ledger")"
[ "$owner" = 65532:65532 ] || fail "the ledger is owned by $owner, not 65532:65532"
say "  ledger files on the volume: $(cd "$mountpoint" && ls | tr '\n' ' ')(owner $owner)"

# ---------------------------------------------------------------------------------------------
say "the Kubernetes recipe's config: usage-\${POD_NAME}.jsonl on a host folder"
mkdir -p "$tmp/data-k8s"
# What fsGroup does for the pod's volume.
chown 65532:65532 "$tmp/data-k8s" 2>/dev/null || chmod 0777 "$tmp/data-k8s"
port="$(free_port)"
ctr="$(run_modelmux "$id-k8s" "$port" "$tmp/etc-k8s" "$tmp/data-k8s" -e POD_NAME=modelmux-0)"
containers+=("$ctr")
wait_port "$port" "modelmux (Kubernetes config)" /dev/null "$ctr"
expect "chat completion (Kubernetes config)" "$(chat "$port" "$(jwt cy "$jwt_secret")" 'hello pod')" '^HTTP 200$'
ledger="$tmp/data-k8s/usage-modelmux-0.jsonl"
grep -q '"user":"cy"' "$ledger" 2>/dev/null || fail "no line for cy in usage-modelmux-0.jsonl ($(ls "$tmp/data-k8s"))"
say "  ledger: $(ls "$tmp/data-k8s" | tr '\n' ' ')"
if [ -e "$ledger.lock" ]; then
  # One writer per ledger: a second process on this file must stop at start.
  set +e
  engine run --rm --no-healthcheck --name "$id-k8s-second" --network host --read-only \
    -e CM_OPEN_WEBUI_PROXY_HOST=127.0.0.1 -e CM_OPEN_WEBUI_PROXY_PORT="$(free_port)" \
    -e OWUI_JWT_SECRET="$jwt_secret" -e MODELMUX_OWUI_KEY="$owui_key" \
    -e REDIS_PASSWORD="$redis_password" -e POD_NAME=modelmux-0 \
    -v "$tmp/etc-k8s:/etc/modelmux:ro" -v "$tmp/data-k8s:/var/lib/modelmux" \
    "$tag" >"$tmp/second.log" 2>&1
  rc=$?
  set -e
  [ "$rc" != 0 ] || fail "a second container on usage-modelmux-0.jsonl started"
  grep -q 'already written by another process' "$tmp/second.log" || {
    cat "$tmp/second.log" >&2
    fail "the second container did not say why it stopped"
  }
  say "  a second container on the same ledger refused to start (exit $rc)"
else
  say "  this build keeps no ledger lock file: the one-writer check is skipped"
fi
engine stop -t 25 "$ctr" >/dev/null 2>&1

say "OK in $((SECONDS - started)) s ($ENGINE)"
