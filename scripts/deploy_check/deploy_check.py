#!/usr/bin/env python3
"""`make deploy-check`: the deploy recipes parse, agree with each other and with the image, and
every default they, the docs and the README state is the one `modelmux --help` states.

1. deploy/docker-compose.yml and every deploy/kubernetes/*.yaml parse as YAML.
2. Each shipped config (deploy/config.*.json and the ConfigMap's config.json) passes
   `modelmux --check-config` with its ${VAR}s set, its usageLog moved to a temporary folder.
3. Compose: Open WebUI forwards signed user info with the secret modelmux checks and presents
   the client key modelmux knows; the ledger is on a writable named volume at the image's data
   folder; Redis is the limits store; healthchecks use --healthcheck; every ${VAR} the compose
   file needs is in deploy/example.env.
   Dockerfile: the runtime stage is FROM scratch, its USER and VOLUME are what the recipes
   assume, and its Rust stage uses the cargo command scripts/static.sh uses.
4. Kubernetes: 2+ replicas, readiness on /health, one ledger file per pod on the pod's own
   volume, every ${VAR} of the config and every Secret key wired, the grace period longer than
   the drain, a PodDisruptionBudget and the Redis Service the config names.
5. Numbers: each `CM_OPEN_WEBUI_PROXY_*` default written in README.md, docs/, deploy/ or the
   Dockerfile equals --help's; the binary size they state is within 10% of target/static/modelmux
   when `make static` has built it.
Prints one line per failed check and exits 1 if any failed.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.chdir(ROOT)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def env_refs(text):
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))


def compose_ref(value):
    """The variable a compose value such as `${X:?msg}` or `${X:-}` takes, else None."""
    m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?-][^}]*)?\}", str(value))
    return m.group(1) if m else None


def modelmux_binary():
    out = subprocess.run(
        ["cargo", "build", "--locked", "--bin", "modelmux", "--message-format=json"],
        capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and (msg.get("executable") or "").endswith("/modelmux"):
            return msg["executable"]
    sys.exit("deploy_check: cargo reported no modelmux binary")


# ---------------------------------------------------------------------------------------------
# 1. YAML
compose = yaml.safe_load(open("deploy/docker-compose.yml"))
k8s = []
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            check(isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"),
                  f"{path}: a document without apiVersion and kind")
            k8s.append((path, doc))


def k8s_one(kind, name):
    found = [d for _, d in k8s if d.get("kind") == kind and d["metadata"]["name"] == name]
    check(len(found) == 1, f"deploy/kubernetes: expected one {kind} {name}, found {len(found)}")
    return found[0] if found else {}


configmap = k8s_one("ConfigMap", "modelmux-config")
k8s_config_text = configmap.get("data", {}).get("config.json", "{}")
configs = {
    "deploy/config.docker.json": open("deploy/config.docker.json").read(),
    "deploy/config.compose.json": open("deploy/config.compose.json").read(),
    "deploy/kubernetes/configmap.yaml": k8s_config_text,
}

# ---------------------------------------------------------------------------------------------
# 2. Each config as the server reads it.
binary = modelmux_binary()
with tempfile.TemporaryDirectory() as tmp:
    for name, text in configs.items():
        cfg = json.loads(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CM_OPEN_WEBUI_PROXY_")}
        for var in env_refs(text):
            env[var] = "deploy-check-" + var.lower() + "-0123456789abcdef"
        if "usageLog" in cfg:
            cfg["usageLog"] = os.path.join(tmp, os.path.basename(cfg["usageLog"]))
        path = os.path.join(tmp, "config.json")
        json.dump(cfg, open(path, "w"))
        r = subprocess.run([binary, "--check-config", "--config", path], env=env,
                           capture_output=True, text=True)
        check(r.returncode == 0,
              f"{name}: modelmux --check-config failed: {(r.stderr or r.stdout).strip()[-300:]}")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout

# The Dockerfile's Rust stage (not run here: it pulls rust:1-bookworm) builds what `make static`
# builds, the binary the image test puts in the same runtime stage.
cargo_cmd = "cargo build --release --locked --bin modelmux --target"
check(cargo_cmd in open("Dockerfile").read() and cargo_cmd.replace("cargo build", "cargo_build_bin modelmux")
      in open("scripts/static.sh").read(),
      f"Dockerfile and scripts/static.sh should both build with `{cargo_cmd} <arch>-unknown-linux-musl`")
check(re.search(r"^FROM \$\{MODELMUX_BINARY\} AS binary$", open("Dockerfile").read(), re.M)
      and re.search(r"^FROM scratch$", open("Dockerfile").read(), re.M),
      "Dockerfile: the runtime stage FROM scratch, its binary from the stage MODELMUX_BINARY names")
image_user = re.search(r"^USER (\d+):(\d+)$", open("Dockerfile").read(), re.M)
check(image_user, "Dockerfile: no numeric USER")
image_uid = int(image_user.group(1)) if image_user else None
data_dir = "/var/lib/modelmux"
check(re.search(r'^VOLUME \["' + data_dir + r'"\]$', open("Dockerfile").read(), re.M),
      f"Dockerfile: no VOLUME [\"{data_dir}\"]")

# ---------------------------------------------------------------------------------------------
# 3. Compose
services = compose.get("services", {})
mm, owui, redis = services.get("modelmux", {}), services.get("open-webui", {}), services.get("redis", {})
check(mm and owui and redis, "compose: services modelmux, open-webui and redis")
ccfg = json.loads(configs["deploy/config.compose.json"])
mm_env = mm.get("environment", {})
owui_env = owui.get("environment", {})


def config_var(value, what):
    refs = env_refs(str(value))
    check(len(refs) == 1, f"config.compose.json: {what} should be one ${{VAR}}, is {value!r}")
    return next(iter(refs), None)


jwt_var = config_var(ccfg.get("openWebUI", {}).get("jwtSecret"), "openWebUI.jwtSecret")
key_var = config_var((ccfg.get("proxyKeys") or [{}])[0].get("key"), "proxyKeys[0].key")
check(str(owui_env.get("ENABLE_FORWARD_USER_INFO_HEADERS")).lower() == "true",
      "compose: open-webui needs ENABLE_FORWARD_USER_INFO_HEADERS: \"true\"")
check(compose_ref(owui_env.get("FORWARD_USER_INFO_HEADER_JWT_SECRET")) is not None
      and compose_ref(owui_env.get("FORWARD_USER_INFO_HEADER_JWT_SECRET")) == compose_ref(mm_env.get(jwt_var)),
      "compose: Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET and modelmux's "
      f"{jwt_var} (openWebUI.jwtSecret) must come from the same variable")
check(compose_ref(owui_env.get("OPENAI_API_KEY")) is not None
      and compose_ref(owui_env.get("OPENAI_API_KEY")) == compose_ref(mm_env.get(key_var)),
      f"compose: Open WebUI's OPENAI_API_KEY and modelmux's {key_var} (proxyKeys[0].key) must be one variable")
check(owui_env.get("OPENAI_API_BASE_URL") == "http://modelmux:3333/v1",
      "compose: Open WebUI's OPENAI_API_BASE_URL should be http://modelmux:3333/v1")
for var in env_refs(configs["deploy/config.compose.json"]):
    check(var in mm_env, f"compose: config.compose.json uses ${{{var}}}, not in modelmux's environment")
log = ccfg.get("usageLog", "")
check(log.startswith(data_dir + "/"), f"config.compose.json: usageLog {log!r} is not under {data_dir}")
mounts = mm.get("volumes", [])
data_mount = [m for m in mounts if str(m).split(":")[1:2] == [data_dir]]
check(len(data_mount) == 1 and not str(data_mount[0]).endswith(":ro")
      and str(data_mount[0]).split(":")[0] in (compose.get("volumes") or {}),
      f"compose: modelmux needs a writable named volume at {data_dir} (the ledger)")
check(mm.get("read_only") is True, "compose: modelmux should run with read_only: true")
check(mm.get("healthcheck", {}).get("test") == ["CMD", "/modelmux", "--healthcheck"],
      "compose: modelmux's healthcheck should be [CMD, /modelmux, --healthcheck]")
check(owui.get("depends_on", {}).get("modelmux", {}).get("condition") == "service_healthy",
      "compose: open-webui should wait for modelmux to be healthy")
store = ccfg.get("limitsStore", "")
check(re.match(r"rediss?://([^@/]*@)?redis:6379/", store) is not None and "redis" in services,
      f"compose: limitsStore {store!r} should name the redis service")
check(bool(ccfg.get("limits")), "config.compose.json: a per-user quota example (limits)")
example_vars = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", open("deploy/example.env").read(), re.M))
compose_text = open("deploy/docker-compose.yml").read()
for var in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_text)):
    check(var in example_vars, f"compose: ${{{var}}} is not in deploy/example.env")

# ---------------------------------------------------------------------------------------------
# 4. Kubernetes
sts = k8s_one("StatefulSet", "modelmux")
spec = sts.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
container = (pod.get("containers") or [{}])[0]
check(spec.get("replicas", 1) >= 2, "kubernetes: at least 2 replicas")
check(container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/health",
      "kubernetes: readiness on GET /health")
check(any(p.get("containerPort") == 3333 for p in container.get("ports", [])), "kubernetes: port 3333")
env = {e["name"]: e for e in container.get("env", [])}
kcfg = json.loads(k8s_config_text)
for var in env_refs(k8s_config_text):
    check(var in env, f"kubernetes: the config uses ${{{var}}}, not in the container's env")
check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
      "kubernetes: POD_NAME from the downward API (metadata.name)")
klog = kcfg.get("usageLog", "")
check("${POD_NAME}" in klog, f"kubernetes: usageLog {klog!r} should name the pod (one ledger per pod)")
ledger_dir = os.path.dirname(klog)
claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
ledger_mounts = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == ledger_dir]
check(len(ledger_mounts) == 1 and not ledger_mounts[0].get("readOnly")
      and ledger_mounts[0].get("name") in claims,
      f"kubernetes: {ledger_dir} should be a writable mount of the pod's own volume claim")
check(ledger_dir == data_dir, f"kubernetes: the ledger folder {ledger_dir} is not the image's {data_dir}")
sec = pod.get("securityContext", {})
check(sec.get("runAsUser") == image_uid and sec.get("fsGroup") == image_uid,
      f"kubernetes: runAsUser and fsGroup should be the image's user {image_uid}")
check(container.get("securityContext", {}).get("readOnlyRootFilesystem") is True,
      "kubernetes: readOnlyRootFilesystem")
secret = k8s_one("Secret", "modelmux-keys")
secret_keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
for _, doc in k8s:
    for tpl in [doc.get("spec", {}).get("template", {}).get("spec", {})]:
        for c in tpl.get("containers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    check(ref.get("name") == "modelmux-keys" and ref.get("key") in secret_keys,
                          f"kubernetes: {doc['metadata']['name']} env {e['name']} refers to a missing Secret key {ref}")
drain = int(env.get("CM_OPEN_WEBUI_PROXY_DRAIN_SECS", {}).get("value", "30"))
check(pod.get("terminationGracePeriodSeconds", 30) > drain,
      "kubernetes: terminationGracePeriodSeconds must exceed CM_OPEN_WEBUI_PROXY_DRAIN_SECS")
pdb = k8s_one("PodDisruptionBudget", "modelmux")
check(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= labels.items()
      and pdb.get("spec", {}).get("selector", {}).get("matchLabels"),
      "kubernetes: the PodDisruptionBudget should select the modelmux pods")
svc = k8s_one("Service", spec.get("serviceName", "?"))
check(svc.get("spec", {}).get("clusterIP") == "None", "kubernetes: the StatefulSet's serviceName should be headless")
k8s_one("Service", "modelmux")
m = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+):(\d+)/", kcfg.get("limitsStore", ""))
check(m is not None, "kubernetes: limitsStore should be a redis:// URL")
if m:
    rsvc = k8s_one("Service", m.group(1))
    check(any(str(p.get("port")) == m.group(2) for p in rsvc.get("spec", {}).get("ports", [])),
          f"kubernetes: Service {m.group(1)} does not serve port {m.group(2)}")

# ---------------------------------------------------------------------------------------------
# 5. Numbers
defaults = {}
for var, value in re.findall(r"(CM_OPEN_WEBUI_PROXY_[A-Z_]+)[^\n]*?default:? (\d+)", help_text):
    defaults[var] = value
check(defaults.get("CM_OPEN_WEBUI_PROXY_WORKERS"), "--help states no worker default")
docs = ["README.md", "Dockerfile"] + sorted(glob.glob("docs/*.md")) + sorted(
    f for f in glob.glob("deploy/**", recursive=True) if os.path.isfile(f))
said = re.compile(r"^`?\s*(?:\((\d+)(?: s)?\)|\|\s*`(\d+)`)|default:? `?(\d+)")
for path in docs:
    text = open(path, errors="replace").read()
    for m in re.finditer(r"CM_OPEN_WEBUI_PROXY_[A-Z_]+", text):
        var = m.group(0)
        if var not in defaults:
            continue
        window = text[m.end():m.end() + 80].split("CM_OPEN_WEBUI_PROXY_")[0]
        window = re.split(r"[.;]\s", window)[0]
        n = said.search(window)
        if n:
            value = next(g for g in n.groups() if g)
            line = text.count("\n", 0, m.start()) + 1
            check(value == defaults[var],
                  f"{path}:{line}: says {var} defaults to {value}; --help says {defaults[var]}")

static = os.path.join("target", "static", "modelmux")
if os.path.exists(static):
    size = os.path.getsize(static)
    for path in docs:
        text = open(path, errors="replace").read()
        for m in re.finditer(r"(?:binary|modelmux)[^.\n]{0,80}?about (\d+(?:\.\d+)?) MB", text):
            stated = float(m.group(1)) * 1e6
            line = text.count("\n", 0, m.start()) + 1
            check(abs(stated - size) <= 0.1 * size,
                  f"{path}:{line}: states about {m.group(1)} MB; {static} is {size / 1e6:.2f} MB")
else:
    print(f"deploy_check: {static} not built (make static): binary sizes in the docs not compared")

for f in failures:
    print(f"deploy_check: FAIL: {f}")
if failures:
    sys.exit(1)
print(f"deploy_check: OK ({len(k8s)} Kubernetes documents, compose with {len(services)} services, "
      f"{len(configs)} configs checked with --check-config, {len(defaults)} defaults from --help)")
