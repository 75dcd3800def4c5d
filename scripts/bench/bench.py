#!/usr/bin/env python3
"""Benchmark driver for `make bench` (started by scripts/bench.sh; standard library only).

Starts the demo mock backend, modelmux (plain and with the optional features whose cost is
reported: the access log, the usage ledger) and nginx on loopback (free ports), drives load
with wrk and a few small raw-socket clients, prints a markdown report and writes it to
BENCHMARKS.md. Every process it starts is recorded by PID and stopped by PID on exit; all
traffic goes to 127.0.0.1.

A new modelmux row (say "limits on") is one more entry in `variants()`: a name, the config
fields it adds and the environment it sets.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import affinity as affinity_bench  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
MODELMUX = os.path.join(ROOT, "target", "release", "modelmux")
BACKEND = os.path.join(ROOT, "target", "release", "demo_backend")
# What `make static` builds (the shipped binary); its idle RSS is an extra row when it exists.
STATIC = os.path.join(ROOT, "target", "static", "modelmux")
LUA = os.path.join(HERE, "post.lua")
BODY = '{"model":"echo","messages":[{"role":"user","content":"hello there world"}]}'
STREAM_BODY = (
    '{"model":"echo","stream":true,"messages":[{"role":"user","content":"hello there world"}]}'
)
# 198 words: the echo model streams one SSE event per word, then a stop event and [DONE].
CHUNKS_PER_STREAM = 200
LONG_STREAM_BODY = json.dumps({
    "model": "echo", "stream": True,
    "messages": [{"role": "user", "content": " ".join("w%d" % i for i in range(CHUNKS_PER_STREAM - 2))}],
}, separators=(",", ":"))
# The same words as an Anthropic Messages stream: modelmux translates it to the same chat
# completion, so the backend sends the same 200 events, which go out as Anthropic's events.
LONG_MESSAGES_BODY = json.dumps({
    "model": "echo", "stream": True, "max_tokens": 4096,
    "messages": [{"role": "user", "content": " ".join("w%d" % i for i in range(CHUNKS_PER_STREAM - 2))}],
}, separators=(",", ":"))
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
TRANSLATED = "modelmux, /v1/messages translated"

# LiteLLM refuses to start without a master key; a fresh one per run, sent by wrk as a bearer token.
PEER_KEY = "sk-bench-" + secrets.token_hex(16)
CHILDREN = []  # Popen objects we started; stopped by PID on exit
TMP = tempfile.mkdtemp(prefix="modelmux-bench-")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes


def spawn(args, env=None, stdout=None, stderr=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.Popen(
        args,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
    )
    CHILDREN.append(p)
    return p


def stop(p, grace=3.0):
    if p is None or p.poll() is not None:
        if p in CHILDREN:
            CHILDREN.remove(p)
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(CHILDREN):
        stop(p, grace=1.0)


def listening_port(pid, timeout=15.0):
    """The TCP port a process listens on, from /proc (works when its log is quiet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        inodes = set()
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except FileNotFoundError:
            raise RuntimeError("process %d exited before listening" % pid)
        for state, port, inode in tcp_sockets():
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                return port
        time.sleep(0.01)
    raise RuntimeError("process %d is not listening after %.0f s" % (pid, timeout))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_status(pids):
    """Summed VmRSS (KiB) and threads of the processes `pids`."""
    total = {"rss_kib": 0, "threads": 0}
    for pid in pids:
        out = {}
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
        total["rss_kib"] += int(out["VmRSS"].split()[0])
        total["threads"] += int(out["Threads"])
    return total


def cpu_seconds(pid):
    """utime + stime of a whole process (every thread, living or exited), from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def context_switches(pid):
    """Voluntary + involuntary context switches summed over the process's threads."""
    total = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return 0
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split(":")[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry))
    return out


class Usage:
    """CPU time and context switches of some processes between `start()` and `stop()`."""

    def __init__(self, pids):
        self.pids = list(pids)

    def snapshot(self):
        return (time.perf_counter(), sum(cpu_seconds(p) for p in self.pids),
                sum(context_switches(p) for p in self.pids))

    def start(self):
        self.before = self.snapshot()

    def stop(self):
        after = self.snapshot()
        b = self.before
        return {"seconds": after[0] - b[0], "cpu": after[1] - b[1], "ctx": after[2] - b[2]}


def tcp_sockets():
    """(state, local port, inode) of every TCP socket on the machine, from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    yield parts[3], int(parts[1].rsplit(":", 1)[1], 16), parts[9]
        except FileNotFoundError:
            pass


def established(port):
    """Established TCP connections whose local port is `port` (server side of a listener)."""
    return sum(1 for state, local, _ in tcp_sockets() if state == "01" and local == port)


def start_backend(delay_ms, port=0):
    p = spawn([BACKEND, "127.0.0.1:%d" % port, "--chunk-delay-ms", str(delay_ms)])
    return p, listening_port(p.pid)


# ----------------------------------------------------------------------------- the targets


def variants():
    """modelmux rows besides the plain one: (name, extra config fields, extra environment).
    Each runs in the keep-alive rows at concurrency 1 and 16 and reports what the feature
    costs per request."""
    # Limits that never refuse: the row measures the admission work (reserve, settle, the
    # x-ratelimit headers), not refusals.
    rules = [{"match": {"user": "*"}, "requestsPerMinute": 10**15, "tokensPerMinute": 10**15},
             {"match": {"user": "*", "model": "*"}, "tokensPerDay": 10**15}]
    # Prices for the echo model, and a cost budget (with warnAt) that never refuses: against
    # "limits (local)", what pricing and a money budget add (the worst case priced at admission,
    # the cost at the end, four more counters per identity).
    pricing = {"echo": {"input": 2.5, "output": 10}}
    budget = rules + [{"match": {"user": "*"}, "costPerDay": 10**9, "warnAt": 0.9}]
    rows = [
        ("modelmux, access log", {},
         {"CM_OPEN_WEBUI_PROXY_LOG_LEVEL": "info"}),
        ("modelmux, usage ledger", {"usageLog": os.path.join(TMP, "usage.jsonl")}, {}),
        # The same ledger with every request priced (a glob default): the cost computed and
        # written to the ledger, /metrics and the access log entry; against the row above.
        ("modelmux, usage ledger + prices",
         {"usageLog": os.path.join(TMP, "usage-priced.jsonl"),
          "pricing": {"*": {"input": 2.5, "output": 10, "cachedInput": 1.25}}}, {}),
        ("modelmux, limits (local)", {"limits": rules}, {}),
        ("modelmux, limits + pricing + cost budget (local)",
         {"limits": budget, "pricing": pricing}, {}),
    ]
    # Traces: every request recorded (always_on) and exported to a sink that answers 200.
    sink = start_otlp_sink()
    rows.append(("modelmux, traces (always_on)", {},
                 {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % sink,
                  "OTEL_TRACES_SAMPLER": "always_on"}))
    redis = start_redis()
    if redis:
        rows.append(("modelmux, limits (Redis)",
                     {"limits": rules, "limitsStore": "redis://127.0.0.1:%d/0" % redis}, {}))
        rows.append(("modelmux, limits + pricing + cost budget (Redis)",
                     {"limits": budget, "pricing": pricing,
                      "limitsStore": "redis://127.0.0.1:%d/0" % redis}, {}))
    return rows


OTLP_SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def start_otlp_sink():
    """An OTLP/HTTP endpoint that reads each export and answers 200, for the traces row (stopped
    with the other children)."""
    port = free_port()
    spawn([sys.executable, "-c", OTLP_SINK, str(port)])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return port
        except OSError:
            time.sleep(0.05)
    return port


def start_redis():
    """A redis-server on a free loopback port for the Redis limits row (stopped with the other
    children); None when redis-server is not installed."""
    binary = shutil.which("redis-server")
    if not binary:
        return None
    port = free_port()
    spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", TMP])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return port
        except OSError:
            pass
        time.sleep(0.05)
    return None


def write_config(backend_port, extra=None):
    path = os.path.join(TMP, "modelmux-%d-%s.json" % (backend_port, secrets.token_hex(4)))
    cfg = {
        "endpoints": {
            "echo": {
                "url": "http://127.0.0.1:%d" % backend_port,
                "apiKey": "",
                "actualModelName": "echo",
            }
        }
    }
    cfg.update(extra or {})
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def start_modelmux(backend_port, workers=None, port=0, extra=None, env=None, binary=None):
    """modelmux with the access log off (level warn) unless `env` turns it on; the log goes to
    a file, as a service manager would keep it."""
    full = {"CM_OPEN_WEBUI_PROXY_LOG_LEVEL": "warn"}
    if workers:
        full["CM_OPEN_WEBUI_PROXY_WORKERS"] = str(workers)
    full.update(env or {})
    err = open(os.path.join(TMP, "modelmux-%s.log" % secrets.token_hex(4)), "ab")
    p = spawn(
        [binary or MODELMUX, "--host", "127.0.0.1", "--port", str(port),
         "--config", write_config(backend_port, extra)],
        env=full,
        stderr=err,
        stdout=err,
    )
    err.close()
    port = listening_port(p.pid)
    wait_health(port, "/health")
    return p, port


def nginx_binary():
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def nginx_version(binary):
    out = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().split("/")[-1]


def start_nginx(binary, backend_port):
    """nginx with one worker, proxy_pass to an upstream keepalive pool at the mock, no
    buffering (so SSE chunks go out as they come), no access log (as modelmux at level warn)."""
    port = free_port()
    d = os.path.join(TMP, "nginx-%d" % port)
    os.makedirs(d)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /health {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
""".format(d=d, port=port, backend=backend_port,
           user="user root;" if os.geteuid() == 0 else ""))
    p = spawn([binary, "-p", d, "-c", conf], stderr=open(os.path.join(d, "stderr.log"), "ab"))
    if not wait_health(port, "/health", timeout=10, proc=p):
        stop(p)
        with open(os.path.join(d, "error.log")) as f:
            raise RuntimeError("nginx did not start: " + f.read()[-500:])
    workers = []
    deadline = time.time() + 5
    while not workers and time.time() < deadline:
        workers = children_of(p.pid)
        time.sleep(0.01)
    return p, port, workers


class Target:
    """Something that answers POST `path` (chat completions unless said) on `port`; `pids` are
    measured."""

    def __init__(self, name, proc, port, pids=None, modes=("keep-alive", "new conn/request"),
                 levels=None, path=CHAT_PATH):
        self.name, self.proc, self.port, self.modes, self.levels = name, proc, port, modes, levels
        self._pids = pids
        self.path = path

    def pids(self):
        return self._pids if self._pids is not None else [self.proc.pid]


# ----------------------------------------------------------------------------- tiny HTTP


def http_get_status(port, path, timeout=2.0):
    """Status code of GET path, or None if the connection failed."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    except OSError:
        return None
    finally:
        s.close()


def wait_health(port, path, timeout=15.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if http_get_status(port, path) == 200:
            return True
        time.sleep(0.05)
    return False


def stream_request(port, body, path=CHAT_PATH):
    return (
        "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (path, len(body), body)
    ).encode()


def read_stream(port, body, timeout=30, path=CHAT_PATH):
    """(first response byte, first SSE event, whole reply) in seconds from before connect()."""
    req = stream_request(port, body, path)
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.sendall(req)
        buf = b""
        first = event = None
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            now = time.perf_counter()
            if first is None:
                first = now - t0
            buf += chunk
            if event is None and b"data:" in buf:
                event = now - t0
            if buf.endswith(b"\r\n0\r\n\r\n"):
                break
        if not buf.startswith(b"HTTP/1.1 200") or event is None:
            raise RuntimeError("bad stream reply: %r" % buf[:200])
        return first, event, buf
    finally:
        s.close()


def dechunk(reply):
    """The body of a chunked HTTP response (chunk boundaries fall anywhere in the events)."""
    _, _, rest = reply.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2:]
    return body


def ttfb_once(port):
    first, event, _ = read_stream(port, STREAM_BODY, timeout=10)
    return first, event


# ----------------------------------------------------------------------------- wrk


def wrk(port, conc, seconds, close=False, auth="", body=BODY, measure=None, path=CHAT_PATH):
    """One wrk run; with `measure` (a Usage), CPU and context switches are sampled over the
    middle of the run (after a ramp-up, before the end) and divided by wrk's request rate."""
    env = dict(os.environ, BENCH_BODY=body, BENCH_CLOSE="1" if close else "0", BENCH_AUTH=auth)
    threads = 1 if conc == 1 else min(2, conc)
    cmd = [
        "wrk", "-t%d" % threads, "-c%d" % conc, "-d%ds" % seconds, "--timeout", "10s",
        "-s", LUA, "http://127.0.0.1:%d%s" % (port, path),
    ]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    used = None
    if measure is not None and seconds >= 2:
        margin = min(1.0, seconds / 4)
        time.sleep(margin)
        measure.start()
        time.sleep(seconds - 2 * margin)
        used = measure.stop()
    out, err = p.communicate(timeout=seconds + 60)
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            if used and r["rps"]:
                r["cpu_us"] = used["cpu"] / used["seconds"] / r["rps"] * 1e6
                r["ctx"] = used["ctx"] / used["seconds"] / r["rps"]
            return r
    raise RuntimeError("wrk printed no summary:\n" + out + err)


# ----------------------------------------------------------------------------- sections


def bench_nonstream(args, peer_cmd, nginx):
    """Rows of (mode, conc, target, result). One backend port, the backend restarted per level."""
    backend_port = free_port()
    backend, _ = start_backend(0, backend_port)
    direct = Target("direct", backend, backend_port)
    mm, mm_port = start_modelmux(backend_port)
    targets = [direct, Target("modelmux", mm, mm_port)]
    for name, extra, env in variants():
        p, port = start_modelmux(backend_port, extra=extra, env=env)
        targets.append(Target(name, p, port, modes=("keep-alive",), levels=(1, 16)))
        if args.baseline and any(w and w in name for w in args.baseline_variants.split(",")):
            p, port = start_modelmux(backend_port, extra=extra, env=env, binary=args.baseline)
            targets.append(Target(name + " (baseline)", p, port, modes=("keep-alive",), levels=(1, 16)))
    if args.baseline:
        p, port = start_modelmux(backend_port, binary=args.baseline)
        targets.append(Target("modelmux (baseline)", p, port))
    if nginx:
        p, port, workers = start_nginx(nginx, backend_port)
        targets.append(Target("nginx", p, port, pids=workers))
    modes = ["keep-alive"]
    if not args.no_close_rows:
        modes.append("new conn/request")
    rows = []
    rss_after = None

    def run(targets):
        nonlocal backend, rss_after
        for mode in modes:
            close = mode != "keep-alive"
            for conc in args.concurrency:
                # A fresh backend per level keeps its request log (it records every request) small.
                stop(backend)
                backend, _ = start_backend(0, backend_port)
                direct.proc = backend
                for t in targets:
                    if mode not in t.modes or (t.levels and conc not in t.levels):
                        continue
                    auth = PEER_KEY if t.name == "LiteLLM" else ""
                    wrk(t.port, conc, 1, close, auth)  # warm-up; flushes stale pooled upstream sockets
                    r = wrk(t.port, conc, args.duration, close, auth, measure=Usage(t.pids()))
                    log("%-16s c=%-3d %-24s %8.0f req/s  p50 %.3f ms  p99 %.3f ms  %s us/req  %s cs/req  errors %d"
                        % (mode, conc, t.name, r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000,
                           fmt(r.get("cpu_us"), "%.1f"), fmt(r.get("ctx"), "%.2f"), r["errors"]))
                    rows.append((mode, conc, t.name, r))
            if mode == "keep-alive":
                rss_after = proc_status([mm.pid])

    run(targets)
    for t in targets[1:]:
        stop(t.proc)
    if peer_cmd:
        # A separate pass, so an idle Python server does not share the CPU with the runs above.
        peer, peer_port, why = start_litellm(peer_cmd, backend_port)
        if peer is None:
            log("LiteLLM did not start (%s); skipping the peer rows" % why)
            args.notes.append("LiteLLM was requested but did not start (%s); its rows are missing." % why)
        else:
            run([direct, Target("LiteLLM", peer, peer_port)])
            rows = dedupe_direct(rows)
            stop(peer)
    stop(backend)
    order = {t.name: i for i, t in enumerate(targets)}
    order["LiteLLM"] = len(order)
    rows.sort(key=lambda x: (modes.index(x[0]), x[1], order[x[2]]))
    return rows, rss_after


def dedupe_direct(rows):
    """The LiteLLM pass measures `direct` again; keep the first measurement of each level."""
    seen, out = set(), []
    for row in rows:
        key = (row[0], row[1], row[2])
        if key in seen:
            continue
        seen.add(key)
        out.append(row)
    return out


def bench_stream_cpu(args, nginx):
    """CPU per relayed SSE chunk: wrk drives streams of 200 events through each target, once
    with the events sent back to back and once 1 ms apart; the process's CPU over the middle of
    the run is divided by the chunk rate. Rows of (delay ms, target, result)."""
    rows = []
    for delay in args.stream_delays:
        backend, backend_port = start_backend(delay)
        targets = [Target("direct", backend, backend_port)]
        mm, mm_port = start_modelmux(backend_port)
        targets.append(Target("modelmux", mm, mm_port))
        # The same process and backend chunks, asked through the Messages API (translated).
        targets.append(Target(TRANSLATED, mm, mm_port, path=MESSAGES_PATH))
        if args.baseline:
            p, port = start_modelmux(backend_port, binary=args.baseline)
            targets.append(Target("modelmux (baseline)", p, port))
        if nginx:
            p, port, workers = start_nginx(nginx, backend_port)
            targets.append(Target("nginx", p, port, pids=workers))
        for t in targets:
            body = LONG_MESSAGES_BODY if t.path == MESSAGES_PATH else LONG_STREAM_BODY
            check_stream(t, dechunk(read_stream(t.port, body, path=t.path)[2]))
            wrk(t.port, args.stream_concurrency, 1, body=body, path=t.path)
            r = wrk(t.port, args.stream_concurrency, args.stream_duration, body=body,
                    measure=Usage(t.pids()), path=t.path)
            if r.get("cpu_us") is not None:
                r["cpu_us_chunk"] = r["cpu_us"] / CHUNKS_PER_STREAM
                r["ctx_chunk"] = r["ctx"] / CHUNKS_PER_STREAM
            log("streams %d ms apart c=%-3d %-20s %6.1f streams/s  %s us/chunk  %s cs/chunk  errors %d"
                % (delay, args.stream_concurrency, t.name, r["rps"], fmt(r.get("cpu_us_chunk"), "%.2f"),
                   fmt(r.get("ctx_chunk"), "%.3f"), r["errors"]))
            rows.append((delay, t.name, r))
        for t in targets:
            stop(t.proc)
    return rows


def check_stream(t, body):
    """Every backend event made it through: 200 SSE events relayed, or, translated, one
    text_delta per word between message_start and message_stop."""
    if t.path == MESSAGES_PATH:
        deltas = body.count(b'"type":"text_delta"')
        if deltas != CHUNKS_PER_STREAM - 2 or not body.startswith(b"event: message_start") \
                or not body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n'):
            raise RuntimeError("%s: %d text deltas, expected %d: %r"
                               % (t.name, deltas, CHUNKS_PER_STREAM - 2, body[:300]))
        return
    events = body.count(b"data: ")
    if events != CHUNKS_PER_STREAM:
        raise RuntimeError("%s relayed %d events, expected %d" % (t.name, events, CHUNKS_PER_STREAM))


LEDGER_AND_LIMITS = "modelmux, usage ledger + limits (local)"


def ledger_and_limits_extra():
    """Config fields of the modelmux with the usage ledger and local limits (that never
    refuse) on, whose CPU per request is compared with the plain one's."""
    rules = [{"match": {"user": "*"}, "requestsPerMinute": 10**15, "tokensPerMinute": 10**15},
             {"match": {"user": "*", "model": "*"}, "tokensPerDay": 10**15}]
    return {"usageLog": os.path.join(TMP, "usage-goals-%s.jsonl" % secrets.token_hex(4)),
            "limits": rules}


def bench_goals(args, nginx):
    """The per-request goals measured `args.goal_runs` times, the targets interleaved within
    each run so every target sees the same machine: wrk at 16 keep-alive connections through
    modelmux, modelmux with the ledger and limits on, nginx (and a baseline binary); then
    streams of 200 events sent back to back through modelmux and nginx.
    {"c16": {name: [result, ...]}, "chunks": {name: [result, ...]}}"""
    out = {"c16": {}, "chunks": {}}
    backend, backend_port = start_backend(0)
    targets = []
    mm, port = start_modelmux(backend_port)
    targets.append(Target("modelmux", mm, port))
    p, port = start_modelmux(backend_port, extra=ledger_and_limits_extra())
    targets.append(Target(LEDGER_AND_LIMITS, p, port))
    if args.baseline:
        p, port = start_modelmux(backend_port, binary=args.baseline)
        targets.append(Target("modelmux (baseline)", p, port))
        p, port = start_modelmux(backend_port, extra=ledger_and_limits_extra(), binary=args.baseline)
        targets.append(Target("modelmux (baseline), usage ledger + limits (local)", p, port))
    if nginx:
        p, port, workers = start_nginx(nginx, backend_port)
        targets.append(Target("nginx", p, port, pids=workers))
    for t in targets:
        wrk(t.port, 16, 1)
    for i in range(args.goal_runs):
        for t in targets:
            r = wrk(t.port, 16, args.goal_duration, measure=Usage(t.pids()))
            log("goals run %d: c=16 %-40s %8.0f req/s  %s us/req" % (
                i + 1, t.name, r["rps"], fmt(r.get("cpu_us"), "%.1f")))
            out["c16"].setdefault(t.name, []).append(r)
    for t in targets:
        stop(t.proc)
    chunk_targets = [t for t in targets if t.name in ("modelmux", "modelmux (baseline)", "nginx")]
    for t in chunk_targets:
        t.proc, t.port, *rest = (start_nginx(nginx, backend_port) if t.name == "nginx"
                                 else start_modelmux(backend_port, binary=args.baseline
                                                     if "baseline" in t.name else None))
        if rest:
            t._pids = rest[0]
        wrk(t.port, args.stream_concurrency, 1, body=LONG_STREAM_BODY)
    for i in range(args.goal_runs):
        for t in chunk_targets:
            r = wrk(t.port, args.stream_concurrency, args.goal_duration, body=LONG_STREAM_BODY,
                    measure=Usage(t.pids()))
            if r.get("cpu_us") is not None:
                r["cpu_us_chunk"] = r["cpu_us"] / CHUNKS_PER_STREAM
            log("goals run %d: streams %-20s %s us/chunk" % (
                i + 1, t.name, fmt(r.get("cpu_us_chunk"), "%.2f")))
            out["chunks"].setdefault(t.name, []).append(r)
    for t in chunk_targets:
        stop(t.proc)
    stop(backend)
    return out


def metric_value(port, name):
    """A counter's value from modelmux's /metrics."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            "http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise RuntimeError("/metrics has no %s (not a count-allocs build?)" % name)


def bench_allocs(args):
    """Heap allocations per request, from a build with the counting allocator (`--features
    count-allocs`): wrk at one keep-alive connection, the counters of /metrics read before and
    after, divided by the requests wrk finished. Rows of (what, allocations, reallocations)."""
    binary = args.count_allocs_binary
    if not binary or not os.path.exists(binary):
        log("no count-allocs build (%s); allocations are not counted" % binary)
        return None
    backend, backend_port = start_backend(0)
    rows = []
    cases = [
        ("chat completion", None, BODY, 1),
        ("chat completion, usage ledger + limits (local)", ledger_and_limits_extra(), BODY, 1),
        ("chat completion, streamed (%d events)" % CHUNKS_PER_STREAM, None, LONG_STREAM_BODY,
         CHUNKS_PER_STREAM),
    ]
    for what, extra, body, chunks in cases:
        p, port = start_modelmux(backend_port, extra=extra, binary=binary)
        wrk(port, 1, 1, body=body)
        before = (metric_value(port, "modelmux_allocations_total"),
                  metric_value(port, "modelmux_reallocations_total"))
        r = wrk(port, 1, 2, body=body)
        after = (metric_value(port, "modelmux_allocations_total"),
                 metric_value(port, "modelmux_reallocations_total"))
        n = max(r["requests"], 1)
        rows.append((what, (after[0] - before[0]) / n, (after[1] - before[1]) / n, chunks))
        log("allocations per request, %s: %.1f (+ %.1f reallocations)" % rows[-1][:3])
        stop(p)
    stop(backend)
    return rows


def bench_latency(args, nginx):
    """Added latency at one keep-alive connection: short wrk runs, interleaved direct / modelmux
    / nginx, several rounds; the median p50 of each (one run's p50 swings with whatever else the
    machine is doing). {name: [p50 us, ...]}"""
    backend, backend_port = start_backend(0)
    mm, mm_port = start_modelmux(backend_port)
    targets = [("direct", backend_port), ("modelmux", mm_port)]
    procs = [mm]
    if args.baseline:
        p, port = start_modelmux(backend_port, binary=args.baseline)
        targets.append(("modelmux (baseline)", port))
        procs.append(p)
    if nginx:
        p, port, _ = start_nginx(nginx, backend_port)
        targets.append(("nginx", port))
        procs.append(p)
    for _, port in targets:
        wrk(port, 1, 1)
    out = {name: [] for name, _ in targets}
    for _ in range(args.latency_rounds):
        for name, port in targets:
            out[name].append(wrk(port, 1, args.latency_seconds)["p50_us"])
    log("c=1 p50 medians: " + ", ".join("%s %.0f us" % (n, statistics.median(v)) for n, v in out.items()))
    for p in procs:
        stop(p)
    stop(backend)
    return out


def start_litellm(cmd, backend_port):
    port = free_port()
    cfg = os.path.join(TMP, "litellm.yaml")
    with open(cfg, "w") as f:
        f.write(
            "model_list:\n"
            "  - model_name: echo\n"
            "    litellm_params:\n"
            "      model: openai/echo\n"
            "      api_base: http://127.0.0.1:%d/v1\n"
            "      api_key: bench-dummy-key\n"
            "litellm_settings:\n"
            "  telemetry: false\n" % backend_port
        )
    out = open(os.path.join(TMP, "litellm.log"), "ab")
    p = spawn(
        cmd + ["--config", cfg, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env={"LITELLM_MASTER_KEY": PEER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "NO_PROXY": "*",
             "LITELLM_TELEMETRY": "False"},
        stdout=out, stderr=out,
    )
    out.close()
    log("waiting for LiteLLM to start (log: %s)" % os.path.join(TMP, "litellm.log"))
    if not wait_health(port, "/health/liveliness", timeout=180, proc=p):
        stop(p)
        return None, None, "no healthy /health/liveliness within 180 s"
    # One real request, so a broken setup is reported instead of benchmarked.
    try:
        req = urllib.request.Request(
            "http://127.0.0.1:%d/v1/chat/completions" % port, data=BODY.encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + PEER_KEY})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=60) as resp:
            reply = json.loads(resp.read())
        if reply["choices"][0]["message"]["content"] != "hello there world":
            raise RuntimeError("unexpected reply %r" % reply)
    except Exception as e:  # noqa: BLE001
        stop(p)
        return None, None, "test request failed: %s" % e
    return p, port, ""


def bench_ttfb(args, nginx):
    """{name: [(first byte, first event)]}, sequential requests interleaved across targets."""
    backend, backend_port = start_backend(0)
    mm, mm_port = start_modelmux(backend_port)
    targets = [("direct", backend_port), ("modelmux", mm_port)]
    procs = [mm]
    if nginx:
        p, port, _ = start_nginx(nginx, backend_port)
        targets.append(("nginx", port))
        procs.append(p)
    for _ in range(10):  # warm-up
        for _, port in targets:
            ttfb_once(port)
    out = {name: [] for name, _ in targets}
    for _ in range(args.ttfb_requests):
        for name, port in targets:
            out[name].append(ttfb_once(port))
    for p in procs:
        stop(p)
    stop(backend)
    return out


async def _open_stream(port, body, got_first, release, results, sem):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=30)
        except Exception as e:  # noqa: BLE001
            results.append(("connect", repr(e)))
            got_first()
            return
    try:
        writer.write(stream_request(port, body))
        await writer.drain()
        buf = b""
        while b"data:" not in buf:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=60)
            if not chunk:
                break
            buf += chunk
        ok = buf.startswith(b"HTTP/1.1 200") and b"data:" in buf
        results.append(("ok", None) if ok else ("bad", buf[:120]))
        got_first()
        await release.wait()
    except Exception as e:  # noqa: BLE001
        results.append(("error", repr(e)))
        got_first()
    finally:
        writer.close()


async def _many_streams(port, n, words, pids, backend_port):
    body = json.dumps({
        "model": "echo", "stream": True,
        "messages": [{"role": "user", "content": " ".join("w%d" % i for i in range(words))}],
    })
    results = []
    done = asyncio.Event()
    release = asyncio.Event()
    count = [0]

    def got_first():
        count[0] += 1
        if count[0] >= n:
            done.set()

    sem = asyncio.Semaphore(64)  # limit simultaneous connects
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(_open_stream(port, body, got_first, release, results, sem))
             for _ in range(n)]
    try:
        await asyncio.wait_for(done.wait(), timeout=words - 5)
    except asyncio.TimeoutError:
        log("not every stream got its first chunk within %d s; measuring anyway" % (words - 5))
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    status = proc_status(pids)
    status["upstream"] = established(backend_port)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return results, status, elapsed


def bench_streams(args, nginx):
    """1,000 open streams through modelmux with its default settings, then through nginx."""
    n = args.streams
    words = 40  # 1 word per second: streams would run ~40 s; we close them after measuring
    backend, backend_port = start_backend(1000)
    out = {}
    starters = [("modelmux", lambda: start_modelmux(backend_port))]
    if nginx:
        starters.append(("nginx", lambda: start_nginx(nginx, backend_port)))
    for name, start in starters:
        started = start()
        proc, port = started[0], started[1]
        pids = [proc.pid] + (started[2] if len(started) > 2 else [])
        time.sleep(1.0)
        idle = proc_status(pids)
        results, loaded, elapsed = asyncio.run(_many_streams(port, n, words, pids, backend_port))
        ok = sum(1 for r in results if r[0] == "ok")
        if ok != n:
            bad = [r for r in results if r[0] != "ok"][:3]
            log("%s: only %d of %d streams got a first chunk; e.g. %r" % (name, ok, n, bad))
        time.sleep(6.0)  # the proxy notices the closed clients; idle threads exit after 5 s
        after = proc_status(pids)
        after["upstream"] = established(backend_port)
        healthy = http_get_status(port, "/health") == 200
        stop(proc)
        out[name] = {"idle": idle, "loaded": loaded, "after": after, "ok": ok, "n": n,
                     "open_seconds": elapsed, "healthy_after": healthy}
        log("%s: %d streams open: %s, %d threads" % (name, ok, mib(loaded["rss_kib"]), loaded["threads"]))
    stop(backend)
    return out


def idle_rss(args, backend_port, binary):
    """VmRSS and threads 1 s after start, the median of `--idle-runs` starts: which of the
    binary's code pages a start maps depends on where ASLR put it (the kernel maps 64 KiB
    around each page fault), so one start varies by about 0.1 MiB."""
    runs = []
    for _ in range(args.idle_runs):
        mm, _ = start_modelmux(backend_port, binary=binary)
        time.sleep(1.0)
        runs.append(proc_status([mm.pid]))
        stop(mm)
    runs.sort(key=lambda r: r["rss_kib"])
    mid = dict(runs[len(runs) // 2])
    mid["runs"] = len(runs)
    mid["min_kib"], mid["max_kib"] = runs[0]["rss_kib"], runs[-1]["rss_kib"]
    return mid


def bench_idle_and_startup(args, nginx):
    backend, backend_port = start_backend(0)
    cfg = write_config(backend_port)
    times = []
    for _ in range(args.startup_runs):
        port = free_port()
        t0 = time.perf_counter()
        p = spawn([MODELMUX, "--host", "127.0.0.1", "--port", str(port), "--config", cfg],
                  env={"CM_OPEN_WEBUI_PROXY_LOG_LEVEL": "warn"})
        while True:
            if http_get_status(port, "/health", timeout=1.0) == 200:
                times.append(time.perf_counter() - t0)
                break
            if p.poll() is not None or time.perf_counter() - t0 > 10:
                raise RuntimeError("modelmux did not answer /health within 10 s")
            time.sleep(0.0005)
        stop(p)
    idle = {"modelmux": idle_rss(args, backend_port, MODELMUX)}
    if os.path.exists(STATIC):
        idle["static"] = idle_rss(args, backend_port, STATIC)
    if args.baseline:
        idle["baseline"] = idle_rss(args, backend_port, args.baseline)
    if nginx:
        p, _, workers = start_nginx(nginx, backend_port)
        time.sleep(1.0)
        idle["nginx"] = proc_status([p.pid] + workers)
        stop(p)
    stop(backend)
    return times, idle


# ----------------------------------------------------------------------------- report


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    commit = sh("git rev-parse --short HEAD") or "unknown"
    if sh("git status --porcelain --untracked-files=no -- src vendor Cargo.toml Cargo.lock"):
        commit += " (+ uncommitted changes in src/vendor/Cargo)"
    try:
        load = "%.1f" % os.getloadavg()[0]
    except OSError:
        load = "?"
    return {
        "nproc": sh("nproc") or str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem": mem,
        "rustc": sh("rustc --version"),
        "wrk": (sh("wrk --version 2>&1 | head -1").split(" Copyright")[0]),
        "commit": commit,
        "load": load,
    }


ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


def fmt(v, pattern):
    return "—" if v is None else pattern % v


def ms(seconds):
    return "%.3f" % (seconds * 1000)


def pct(values, p):
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def mib(kib):
    return "%.1f MiB" % (kib / 1024)


def ratio_of_medians(a, b):
    return statistics.median(a) / statistics.median(b)


def goals(goal_runs, latency, allocs, streams, idle):
    """The issue's goals, computed from this run: (goal, measured, holds). The per-request
    goals are medians over the goal runs (the latency goal: over the latency table's rounds)."""
    out = []
    c16 = (goal_runs or {}).get("c16", {})
    chunks = (goal_runs or {}).get("chunks", {})
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    have = lambda runs, key: runs and all(r.get(key) for r in runs)  # noqa: E731
    mm, ng = c16.get("modelmux"), c16.get("nginx")
    if have(mm, "cpu_us") and have(ng, "cpu_us"):
        a, b = med(mm, "cpu_us"), med(ng, "cpu_us")
        out.append(("CPU per request at 16 keep-alive connections <= 1.3x nginx's",
                    "%.1f us vs %.1f us (%.2fx)" % (a, b, a / b), a <= 1.3 * b))
    if mm and ng:
        a, b = med(mm, "rps"), med(ng, "rps")
        out.append(("req/s at 16 keep-alive connections >= 1.0x nginx's",
                    "%.0f vs %.0f (%.2fx)" % (a, b, a / b), a >= b))
    cm, cn = chunks.get("modelmux"), chunks.get("nginx")
    if have(cm, "cpu_us_chunk") and have(cn, "cpu_us_chunk"):
        a, b = med(cm, "cpu_us_chunk"), med(cn, "cpu_us_chunk")
        out.append(("CPU per relayed SSE chunk <= 1.2x nginx's (events back to back)",
                    "%.2f us vs %.2f us (%.2fx)" % (a, b, a / b), a <= 1.2 * b))
    if latency and "modelmux" in latency and "nginx" in latency:
        d = statistics.median(latency["direct"])
        a = statistics.median(latency["modelmux"]) - d
        b = statistics.median(latency["nginx"]) - d
        holds = a <= 1.3 * b if b > 0 else a <= 0
        out.append(("added p50 at 1 keep-alive connection <= 1.3x nginx's (latency table)",
                    "+%.0f us vs +%.0f us (%s)" % (a, b, ("%.2fx" % (a / b)) if b > 0 else "n/a"),
                    holds))
    ll = c16.get(LEDGER_AND_LIMITS)
    if have(mm, "cpu_us") and have(ll, "cpu_us"):
        a, b = med(ll, "cpu_us"), med(mm, "cpu_us")
        out.append(("usage ledger + local limits on: CPU per request <= +10% over off (c=16)",
                    "%.1f us vs %.1f us (%+.0f%%)" % (a, b, (a / b - 1) * 100), a <= 1.1 * b))
    for what, n, _, _ in allocs or []:
        if what == "chat completion":
            out.append(("allocations per chat completion <= 50 (count-allocs build)",
                        "%.2f" % n, n <= 50))
    if idle and "modelmux" in idle:
        kib = idle["modelmux"]["rss_kib"]
        out.append(("idle RSS < 4 MiB", mib(kib), kib < 4 * 1024))
    if streams and "modelmux" in streams:
        m = streams["modelmux"]
        out.append(("1,000 open streams with the default settings, RSS < 64 MiB",
                    "%d of %d streams, %s" % (m["ok"], m["n"], mib(m["loaded"]["rss_kib"])),
                    m["ok"] == m["n"] and m["loaded"]["rss_kib"] < 64 * 1024))
    return out


def delay_label(delay):
    return "events back to back" if delay == 0 else "events %d ms apart" % delay


def report(args, m, rows, rss_after_load, latency, ttfb, stream_rows, streams, startup, idle, size,
           goal_runs=None, allocs=None):
    L = []
    L.append("Measured %s UTC on: %s CPUs, %s, Linux %s, %s RAM (load average %s at the start); "
             "%s; %s; %s; modelmux commit %s."
             % (args.date, m["nproc"], m["cpu"], m["kernel"], m["mem"], m["load"], m["rustc"],
                m["wrk"], ("nginx " + args.nginx_version) if args.nginx_version else "no nginx",
                m["commit"]))
    L.append("")
    g = goals(goal_runs, latency, allocs, streams, idle)
    if g:
        L.append("### Goals (issue 23), from this run")
        L.append("")
        if goal_runs:
            L.append("Each per-request figure is the median of %d runs of %d s, the targets "
                     "interleaved within each run (the added latency: of the latency table's "
                     "rounds)." % (args.goal_runs, args.goal_duration))
            L.append("")
        L.append("| goal | measured (median) | pass |")
        L.append("|---|---:|:---:|")
        for name, value, holds in g:
            L.append("| %s | %s | %s |" % (name, value, "pass" if holds else "**FAIL**"))
        L.append("")
    if goal_runs:
        L.append("### Goal runs (each run's figure)")
        L.append("")
        L.append("| measure | target | runs | median |")
        L.append("|---|---|---|---:|")
        for name, runs in goal_runs["c16"].items():
            for key, label, f in (("rps", "req/s, c=16", "%.0f"), ("cpu_us", "CPU us/req, c=16", "%.1f")):
                vals = [r.get(key) for r in runs]
                if all(v is not None for v in vals):
                    L.append("| %s | %s | %s | %s |" % (label, name, ", ".join(f % v for v in vals),
                                                        f % statistics.median(vals)))
        for name, runs in goal_runs["chunks"].items():
            vals = [r.get("cpu_us_chunk") for r in runs]
            if all(v is not None for v in vals):
                L.append("| CPU us/SSE chunk, back to back | %s | %s | %.2f |" % (
                    name, ", ".join("%.2f" % v for v in vals), statistics.median(vals)))
        L.append("")
    if allocs:
        L.append("### Heap allocations per request (count-allocs build, wrk at 1 keep-alive connection)")
        L.append("")
        L.append("| request | allocations | reallocations | allocations per SSE event |")
        L.append("|---|---:|---:|---:|")
        for what, a, r, chunks in allocs:
            L.append("| %s | %.1f | %.1f | %s |" % (what, a, r, ("%.2f" % (a / chunks)) if chunks > 1 else "—"))
        L.append("")
    if rows:
        L.append("### Non-streaming `POST /v1/chat/completions` (wrk, %d s per run)" % args.duration)
        L.append("")
        if any(t == "LiteLLM" for _, _, t, _ in rows):
            L.append("LiteLLM %s proxy (`litellm --num_workers 1`, master key set, `openai/echo` "
                     "with `api_base` at the same mock backend) is a further peer." % args.litellm_version)
            L.append("")
        L.append("| connections | concurrency | target | req/s | p50 ms | p99 ms | req/s vs direct | p50 vs direct "
                 "| CPU us/req | ctx switches/req | errors |")
        L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        direct = {(mo, c): r for mo, c, t, r in rows if t == "direct"}
        for mo, c, t, r in rows:
            d = direct[(mo, c)]
            ratio = "%.3f×" % (r["rps"] / d["rps"]) if t != "direct" and d["rps"] else "—"
            lat = ("%+.3f ms" % ((r["p50_us"] - d["p50_us"]) / 1000)) if t != "direct" else "—"
            errs = ", ".join("%d %s" % (r[k], k) for k in ERROR_KINDS if r[k]) or "0"
            L.append("| %s | %d | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s |" % (
                mo, c, t, r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000, ratio, lat,
                fmt(r.get("cpu_us"), "%.1f"), fmt(r.get("ctx"), "%.2f"), errs))
        L.append("")
    if latency:
        names = list(latency)
        d = statistics.median(latency["direct"])
        L.append("### Added latency at 1 keep-alive connection (%d interleaved wrk runs of %d s each)"
                 % (args.latency_rounds, args.latency_seconds))
        L.append("")
        L.append("| target | p50 of each run (us) | median p50 (us) | added to direct |")
        L.append("|---|---|---:|---:|")
        for n in names:
            med = statistics.median(latency[n])
            L.append("| %s | %s | %.0f | %s |" % (n, ", ".join("%d" % v for v in latency[n]), med,
                                                 "—" if n == "direct" else "%+.0f us" % (med - d)))
        L.append("")
    if stream_rows:
        L.append("### Streaming: CPU per relayed SSE chunk (wrk, %d connections, %d s, streams of %d "
                 "events)" % (args.stream_concurrency, args.stream_duration, CHUNKS_PER_STREAM))
        L.append("")
        L.append("| events | target | streams/s | chunks/s | CPU us/chunk | ctx switches/chunk | errors |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for delay, t, r in stream_rows:
            errs = ", ".join("%d %s" % (r[k], k) for k in ERROR_KINDS if r[k]) or "0"
            L.append("| %s | %s | %.1f | %.0f | %s | %s | %s |" % (
                delay_label(delay), t, r["rps"], r["rps"] * CHUNKS_PER_STREAM,
                fmt(r.get("cpu_us_chunk"), "%.2f"), fmt(r.get("ctx_chunk"), "%.3f"), errs))
        L.append("")
        by_delay = {}
        for delay, t, r in stream_rows:
            by_delay.setdefault(delay, {})[t] = r.get("cpu_us_chunk")
        ratios = ["%.2fx (%s)" % (s[TRANSLATED] / s["modelmux"], delay_label(d))
                  for d, s in sorted(by_delay.items()) if s.get(TRANSLATED) and s.get("modelmux")]
        if ratios:
            L.append("Translated `/v1/messages` streams against the plain relay of the same chunks, CPU per "
                     "chunk: " + ", ".join(ratios) + ".")
            L.append("")
    if ttfb:
        names = list(ttfb)
        L.append("### Stream time to first byte (%d sequential requests each, new connection each)"
                 % len(ttfb[names[0]]))
        L.append("")
        L.append("| metric | " + " | ".join(names) + " | " +
                 " | ".join("added by " + n for n in names if n != "direct") + " |")
        L.append("|---|" + "---:|" * (2 * len(names) - 1))
        for label, idx in (("first response byte", 0), ("first SSE event", 1)):
            for q in (50, 99):
                vals = {n: pct([x[idx] for x in ttfb[n]], q) for n in names}
                L.append("| %s, p%d (ms) | %s | %s |" % (
                    label, q, " | ".join(ms(vals[n]) for n in names),
                    " | ".join("%+.3f ms" % ((vals[n] - vals["direct"]) * 1000) for n in names if n != "direct")))
        L.append("")
    L.append("### Memory, size, startup")
    L.append("")
    L.append("| metric | modelmux | nginx (master + worker) |")
    L.append("|---|---:|---:|")
    ng_idle = idle.get("nginx") if idle else None
    if idle and "modelmux" in idle:
        i = idle["modelmux"]
        L.append("| RSS idle, threads (median of %d starts; min / max) | %s, %d threads (%s / %s) | %s |" % (
            i["runs"], mib(i["rss_kib"]), i["threads"], mib(i["min_kib"]), mib(i["max_kib"]),
            ("%s, %d threads" % (mib(ng_idle["rss_kib"]), ng_idle["threads"])) if ng_idle else "—"))
    if idle and "baseline" in idle:
        i = idle["baseline"]
        L.append("| RSS idle of the baseline binary, threads (median of %d starts; min / max) "
                 "| %s, %d threads (%s / %s) | — |" % (
                     i["runs"], mib(i["rss_kib"]), i["threads"], mib(i["min_kib"]), mib(i["max_kib"])))
    if idle and "static" in idle:
        i = idle["static"]
        L.append("| RSS idle of the static binary (`make static`, what ships), threads (median of %d starts; "
                 "min / max) | %s, %d threads (%s / %s) | — |" % (
                     i["runs"], mib(i["rss_kib"]), i["threads"], mib(i["min_kib"]), mib(i["max_kib"])))
    if rss_after_load:
        L.append("| RSS after the keep-alive load runs, threads | %s, %d threads | — |"
                 % (mib(rss_after_load["rss_kib"]), rss_after_load["threads"]))
    if streams:
        def cell(name, key, upstream=False):
            s = streams.get(name)
            if not s:
                return "—"
            v = s[key]
            text = "%s, %d threads" % (mib(v["rss_kib"]), v["threads"])
            if upstream:
                text += ", %d upstream" % v["upstream"]
            return text
        n = streams["modelmux"]["n"] if "modelmux" in streams else args.streams
        got = " / ".join("%s %d of %d in %.1f s" % (k, v["ok"], v["n"], v["open_seconds"]) for k, v in streams.items())
        L.append("| RSS with %d concurrent open streams (default settings; first chunk received: %s), "
                 "threads, open upstream connections | %s | %s |"
                 % (n, got, cell("modelmux", "loaded", True), cell("nginx", "loaded", True)))
        health = " / ".join("%s %s" % (k, "200" if v["healthy_after"] else "FAILED") for k, v in streams.items())
        L.append("| RSS 6 s after those clients hung up, threads, open upstream connections (then /health: %s) "
                 "| %s | %s |" % (health, cell("modelmux", "after", True), cell("nginx", "after", True)))
    if size:
        L.append("| binary size | %d bytes (%.1f MiB) | — |" % (size, size / 1024 / 1024))
    if startup:
        L.append("| startup: spawn to first 200 from GET /health, median of %d (min / max) | %.1f ms (%.1f / %.1f ms) | — |" % (
            len(startup), statistics.median(startup) * 1000, min(startup) * 1000, max(startup) * 1000))
    L.append("")
    notes = list(args.notes)
    if rows:
        # wrk counts a `read` error when the server closes a connection that wrk, having seen no
        # `Connection: close` in the response, meant to reuse; the response itself was complete.
        closers = sorted({t for mo, c, t, r in rows
                          if mo != "keep-alive" and r["read"] >= 0.9 * r["requests"] > 0})
        if closers:
            notes.append(
                "In the new-connection rows, %s shows about one wrk `read` error per request: it "
                "answers a `Connection: close` request in full and closes the socket, but its "
                "response carries no `Connection: close` header, so wrk tries to reuse the "
                "connection and sees it closed. The responses arrived complete, so req/s and "
                "latency there are still meaningful." % " and ".join(closers))
        other = sum(r["errors"] for mo, c, t, r in rows if not (mo != "keep-alive" and t in closers))
        if other:
            notes.append("%d requests failed or were answered with a non-2xx status in the other "
                         "load runs (the `errors` column); wrk counts them in req/s too." % other)
    if notes:
        L.append("Notes from this run:")
        L.append("")
        for n in notes:
            L.append("- " + n)
        L.append("")
    return "\n".join(L)


INTRO = """# Benchmarks

`make bench` (`scripts/bench.sh`) builds the release binary and the demo mock backend
(`demo/demo_backend.rs`), starts them, modelmux variants and nginx on loopback with free ports,
drives them with [wrk](https://github.com/wg/wrk) and small Python clients
(`scripts/bench/bench.py`), and rewrites this file. It takes about six minutes; it installs
`wrk` and Debian's `nginx-light` with apt-get if they are missing (nginx is started with its own
config and stopped by PID; `BENCH_NO_NGINX=1` leaves it out). `make bench-peers`
(`BENCH_PEERS=1`) also installs LiteLLM's proxy into `target/bench-venv` and adds it to the
non-streaming table in a separate pass. Extra arguments go to the driver, e.g.
`./scripts/bench.sh --duration 3 --output -` prints a quick report and leaves this file alone,
`--only latency,chunks` runs some sections, `--baseline OLD_BINARY` adds rows for another
modelmux build side by side (`--baseline-variants Redis` also for the feature rows named so).

The peer is nginx 1.22 with one worker process: `proxy_pass` to an `upstream` block with a
`keepalive` pool at the same mock, `proxy_http_version 1.1`, `proxy_buffering off` (so SSE
events go out as they come) and no access log, as modelmux runs here at log level `warn` (no
access log) unless a row says otherwise.

What the tables mean:

- **Goals**: the targets of issue 23, computed from this run, each with a pass/fail column.
  The per-request ones come from a separate pass of `--goal-runs` (3) runs of
  `--goal-duration` (4) s each, the targets interleaved within each run: wrk at 16 keep-alive
  connections through modelmux, through modelmux with the usage ledger and local limits on (rules
  that never refuse), and through nginx; then the back-to-back SSE streams through modelmux and
  nginx. Each goal is judged on the medians; every run's figure is listed under it. The added
  latency goal is judged on the latency table (the median of its rounds).
- **Heap allocations per request**: a build with the counting global allocator
  (`cargo build --release --features count-allocs --target-dir target/count-allocs`, never
  shipped) reports `modelmux_allocations_total` and `modelmux_reallocations_total` in
  `/metrics`; wrk sends requests at one keep-alive connection for 2 s and the counters'
  growth is divided by the requests finished.
- **Non-streaming**: wrk POSTs a three-word chat completion for a fixed time at 1, 16 and 64
  concurrent connections: straight at the mock (`direct`), through modelmux, through nginx,
  and (keep-alive, 1 and 16 connections) through modelmux with one optional feature on, to show
  its cost: the access log (level `info`, to a file), the usage ledger (`usageLog`), the
  same ledger with prices (a top-level `pricing` glob: every request's cost computed and
  recorded; compare with the ledger row), quota limits (local and Redis), and traces (`OTEL_TRACES_SAMPLER=always_on`, every span exported
  over OTLP/HTTP JSON to a sink on loopback; the CPU includes the exporter thread).
  *keep-alive* reuses each connection (what SDKs do); *new conn/request* sends
  `Connection: close`. `CPU us/req` is the process's utime + stime (`/proc/PID/stat`, every
  thread) over the middle of the run divided by the requests in that time (for `direct`, the
  mock's own); `ctx switches/req` likewise from voluntary + involuntary context switches summed
  over `/proc/PID/task/*/status`. For nginx these are its worker process's.
- **Added latency**: p50 at one keep-alive connection, from short runs interleaved across
  targets, several rounds; the median of each target's p50s minus direct's. One run's c=1 p50
  swings with whatever else the machine is doing, so the goal is judged on this table.
- **CPU per relayed SSE chunk**: wrk keeps 32 streams of 200 SSE events going through each
  target, the events sent back to back by the mock and then 1 ms apart; the process's CPU over
  the middle of the run divided by the events relayed (each stream's request overhead is
  included, spread over its 200 events).
  The row *modelmux, /v1/messages translated* is the same process and the same backend events
  asked for through Anthropic's Messages API: each chat chunk is parsed and sent on as
  Anthropic events (`content_block_delta` …), so its CPU per chunk against the plain `modelmux`
  row is the translation's cost.
- **Stream time to first byte**: sequential `"stream": true` requests, each on a new
  connection, interleaved across targets; time from `connect()` to the first response byte and
  to the first `data:` event.
- **Memory**: `VmRSS` and `Threads` from `/proc/PID/status`: idle 1 s after start (the median
  of 5 starts, with the bench's config; the static binary of `make static` too when it has been
  built, at `target/static/modelmux`), after the
  keep-alive load, and with 1,000 concurrent streams held open (default settings; backend
  sending one word per second), read once every stream has received its first chunk, then
  again 6 s after the clients hung up (modelmux's idle threads exit after 5 s), with the number
  of connections to the backend still open (which should drop to 0).
- **Startup**: time from spawning the process to the first `200` from `GET /health`.
- **Conversation affinity** (`scripts/bench/affinity.py`, `--only affinity`, a few seconds):
  three demo backends model a prefix cache (`--prefix-cache 5,80`: a turn whose earlier turns
  that backend served gets its first byte after 5 ms, any other after 80 ms); 50 conversations
  of 6 turns run at once through modelmux with the endpoint's `affinity` off, then on. Cache hits
  and time to the response's first byte are over the turns after the first.

Caveats:

- Load generator, proxies and backend share one small machine (and, where this was measured,
  other people's builds), so each row competes with wrk and the mock for CPU. The mock answers
  instantly; these numbers are the proxy's own overhead, not an LLM workload, where the model's
  seconds dwarf it. Compare rows of one run, never runs of different machines or times.
- CPU is counted in clock ticks (10 ms), so short or idle rows are coarse.
- The mock starts a thread per accepted connection: in the *new conn/request* rows and the
  stream rows `direct` pays that for every request while the proxies reuse pooled upstream
  connections, so a proxy can look as fast as, or faster than, direct.
- A p99 over 200 samples is the second-worst sample; a negative "added" value there is noise.

## Latest results

"""
# Hand-written: where the remaining gap to nginx comes from (kept with the profile that shows it).
ANALYSIS_PATH = os.path.join(HERE, "analysis.md")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "5")))
    ap.add_argument("--concurrency", default=os.environ.get("BENCH_CONCURRENCY", "1,16,64"))
    ap.add_argument("--stream-concurrency", type=int, default=32)
    ap.add_argument("--stream-duration", type=int, default=5)
    ap.add_argument("--stream-delays", default="0,1", help="ms between a stream's events, comma list")
    ap.add_argument("--latency-rounds", type=int, default=5)
    ap.add_argument("--latency-seconds", type=int, default=2)
    ap.add_argument("--ttfb-requests", type=int, default=200)
    ap.add_argument("--goal-runs", type=int, default=3, help="runs whose median each goal is judged on")
    ap.add_argument("--goal-duration", type=int, default=4, help="seconds of each goal run")
    ap.add_argument("--count-allocs-binary",
                    default=os.path.join(ROOT, "target", "count-allocs", "release", "modelmux"),
                    help="a modelmux built with --features count-allocs, for the allocation counts")
    ap.add_argument("--streams", type=int, default=int(os.environ.get("BENCH_STREAMS", "1000")))
    ap.add_argument("--startup-runs", type=int, default=10)
    ap.add_argument("--idle-runs", type=int, default=5)
    ap.add_argument("--no-close-rows", action="store_true")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    ap.add_argument("--baseline", help="another modelmux binary to measure beside this one")
    ap.add_argument("--baseline-variants", default="",
                    help="with --baseline, feature rows (comma list of name parts, e.g. Redis) "
                         "also measured with the baseline binary")
    ap.add_argument("--litellm", help="command that starts LiteLLM's proxy (peer rows)")
    ap.add_argument("--peer-note", action="append", default=[])
    ap.add_argument("--only", default="all",
                    help="comma list: startup,goals,allocs,nonstream,latency,chunks,ttfb,streams,affinity")
    ap.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.stream_delays = [int(d) for d in args.stream_delays.split(",")]
    args.notes = list(args.peer_note)
    args.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    args.litellm_version = ""
    if args.litellm:
        pip = os.path.join(os.path.dirname(args.litellm.split()[0]), "pip")
        for line in sh("'%s' show litellm 2>/dev/null" % pip).splitlines():
            if line.startswith("Version:"):
                args.litellm_version = line.split(":", 1)[1].strip()
    nginx = None if args.no_nginx else nginx_binary()
    args.nginx_version = nginx_version(nginx) if nginx else ""
    if not nginx and not args.no_nginx:
        args.notes.append("nginx was not found; its rows are missing.")
    only = set(args.only.split(","))
    want = lambda s: "all" in only or s in only  # noqa: E731

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        m = machine()
        log("machine: %s CPUs, %s, Linux %s, load %s" % (m["nproc"], m["cpu"], m["kernel"], m["load"]))
        rows = rss_after = latency = ttfb = stream_rows = streams = startup = idle = None
        goal_runs = allocs = None
        if want("startup"):
            log("startup time and idle RSS")
            startup, idle = bench_idle_and_startup(args, nginx)
        if want("goals"):
            log("goals: %d interleaved runs of %d s" % (args.goal_runs, args.goal_duration))
            goal_runs = bench_goals(args, nginx)
        if want("allocs"):
            log("heap allocations per request (count-allocs build)")
            allocs = bench_allocs(args)
        if want("nonstream"):
            log("non-streaming load (wrk)")
            peer_cmd = args.litellm.split() if args.litellm else None
            rows, rss_after = bench_nonstream(args, peer_cmd, nginx)
        if want("latency"):
            log("added latency at 1 keep-alive connection, %d interleaved rounds" % args.latency_rounds)
            latency = bench_latency(args, nginx)
        if want("chunks"):
            log("CPU per relayed SSE chunk (wrk, streams of %d events)" % CHUNKS_PER_STREAM)
            stream_rows = bench_stream_cpu(args, nginx)
        if want("ttfb"):
            log("streaming time to first byte, %d sequential requests each" % args.ttfb_requests)
            ttfb = bench_ttfb(args, nginx)
        if want("streams"):
            log("%d concurrent open streams" % args.streams)
            streams = bench_streams(args, nginx)
        affinity = None
        if want("affinity"):
            log("conversation affinity: prefix-cache hits, %d conversations"
                % affinity_bench.CONVERSATIONS)
            affinity = affinity_bench.run(sys.modules[__name__], args)
        size = os.path.getsize(MODELMUX)
        text = report(args, m, rows, rss_after, latency, ttfb, stream_rows, streams, startup, idle, size,
                      goal_runs, allocs)
        if affinity:
            text += "\n" + affinity_bench.section(affinity)
        print()
        print(text)
        if args.output != "-":
            intro = INTRO
            analysis = ""
            if os.path.exists(ANALYSIS_PATH):
                with open(ANALYSIS_PATH) as f:
                    analysis = "\n" + f.read()
            with open(args.output, "w") as f:
                f.write(intro + text + analysis)
            log("wrote %s" % args.output)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
