#!/usr/bin/env python3
"""Benchmark driver for `make bench` (started by scripts/bench.sh; standard library only).

Starts the demo mock backend and modelmux on loopback (OS-picked ports), drives load with wrk
and a few small raw-socket clients, prints a markdown report and writes it to BENCHMARKS.md.
Every process it starts is recorded by PID and killed on exit; all traffic goes to 127.0.0.1.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
MODELMUX = os.path.join(ROOT, "target", "release", "modelmux")
BACKEND = os.path.join(ROOT, "target", "release", "demo_backend")
LUA = os.path.join(HERE, "post.lua")
BODY = '{"model":"echo","messages":[{"role":"user","content":"hello there world"}]}'
STREAM_BODY = (
    '{"model":"echo","stream":true,"messages":[{"role":"user","content":"hello there world"}]}'
)

# LiteLLM refuses to start without a master key; a fresh one per run, sent by wrk as a bearer token.
PEER_KEY = "sk-bench-" + secrets.token_hex(16)
CHILDREN = []  # Popen objects we started; killed by PID on exit
TMP = tempfile.mkdtemp(prefix="modelmux-bench-")


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


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return {"rss_kib": int(out["VmRSS"].split()[0]), "threads": int(out["Threads"])}


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


def write_config(backend_port):
    path = os.path.join(TMP, "modelmux-%d.json" % backend_port)
    with open(path, "w") as f:
        json.dump(
            {
                "endpoints": {
                    "echo": {
                        "url": "http://127.0.0.1:%d" % backend_port,
                        "apiKey": "",
                        "actualModelName": "echo",
                    }
                }
            },
            f,
        )
    return path


def start_modelmux(backend_port, workers=None, port=0):
    env = {"CM_OPEN_WEBUI_PROXY_LOG_LEVEL": "warn"}
    if workers:
        env["CM_OPEN_WEBUI_PROXY_WORKERS"] = str(workers)
    err = open(os.path.join(TMP, "modelmux.log"), "ab")
    p = spawn(
        [MODELMUX, "--host", "127.0.0.1", "--port", str(port), "--config", write_config(backend_port)],
        env=env,
        stderr=err,
    )
    err.close()
    port = listening_port(p.pid)
    wait_health(port, "/health")
    return p, port


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


def stream_request(port, body):
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    ).encode()


def ttfb_once(port):
    """(first response byte, first SSE event) in seconds from before connect(), new connection."""
    req = stream_request(port, STREAM_BODY)
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
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
            if b"[DONE]" in buf:
                break
        if not buf.startswith(b"HTTP/1.1 200") or event is None:
            raise RuntimeError("bad stream reply: %r" % buf[:200])
        return first, event
    finally:
        s.close()


# ----------------------------------------------------------------------------- wrk


def wrk(port, conc, seconds, close=False, auth=""):
    env = dict(os.environ, BENCH_BODY=BODY, BENCH_CLOSE="1" if close else "0", BENCH_AUTH=auth)
    threads = 1 if conc == 1 else min(2, conc)
    cmd = [
        "wrk", "-t%d" % threads, "-c%d" % conc, "-d%ds" % seconds, "--timeout", "10s",
        "-s", LUA, "http://127.0.0.1:%d/v1/chat/completions" % port,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            return r
    raise RuntimeError("wrk printed no summary:\n" + out.stdout + out.stderr)


# ----------------------------------------------------------------------------- sections


def bench_nonstream(args, peer_cmd):
    """Rows of (mode, conc, target, result). One backend port, restarted per level."""
    backend_port = free_port()
    backend, _ = start_backend(0, backend_port)
    mm, mm_port = start_modelmux(backend_port)
    modes = [("keep-alive", False)]
    if not args.no_close_rows:
        modes.append(("new conn/request", True))
    rows = []
    rss_after = None

    def run(targets, on_mode_done=None):
        nonlocal backend
        for mode, close in modes:
            for conc in args.concurrency:
                # A fresh backend per level keeps its request log (it records every request) small.
                stop(backend)
                backend, _ = start_backend(0, backend_port)
                for name, port in targets:
                    auth = PEER_KEY if name == "LiteLLM" else ""
                    wrk(port, conc, 1, close, auth)  # warm-up; flushes stale pooled upstream sockets
                    r = wrk(port, conc, args.duration, close, auth)
                    log("%-16s c=%-3d %-9s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d"
                        % (mode, conc, name, r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000,
                           r["errors"]))
                    rows.append((mode, conc, name, r))
            if on_mode_done:
                on_mode_done(mode)

    def after_mode(mode):
        nonlocal rss_after
        if mode == "keep-alive":
            rss_after = proc_status(mm.pid)

    run([("direct", backend_port), ("modelmux", mm_port)], after_mode)
    stop(mm)
    if peer_cmd:
        # A separate pass, so an idle Python server does not share the CPU with the runs above.
        peer, peer_port, why = start_litellm(peer_cmd, backend_port)
        if peer is None:
            log("LiteLLM did not start (%s); skipping the peer rows" % why)
            args.notes.append("LiteLLM was requested but did not start (%s); its rows are missing." % why)
        else:
            run([("LiteLLM", peer_port)])
            stop(peer)
    stop(backend)
    order = {"direct": 0, "modelmux": 1, "LiteLLM": 2}
    rows.sort(key=lambda x: ([m for m, _ in modes].index(x[0]), x[1], order[x[2]]))
    return rows, rss_after


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


def bench_ttfb(args):
    backend, backend_port = start_backend(0)
    mm, mm_port = start_modelmux(backend_port)
    for _ in range(10):  # warm-up
        ttfb_once(backend_port)
        ttfb_once(mm_port)
    direct, proxied = [], []
    for _ in range(args.ttfb_requests):  # interleaved, sequential
        direct.append(ttfb_once(backend_port))
        proxied.append(ttfb_once(mm_port))
    stop(mm)
    stop(backend)
    return direct, proxied


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


async def _many_streams(port, n, words, pid, backend_port):
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

    sem = asyncio.Semaphore(64)  # limit simultaneous connects: the listen backlog is 128
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(_open_stream(port, body, got_first, release, results, sem))
             for _ in range(n)]
    try:
        await asyncio.wait_for(done.wait(), timeout=words - 5)
    except asyncio.TimeoutError:
        log("not every stream got its first chunk within %d s; measuring anyway" % (words - 5))
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    status = proc_status(pid)
    status["upstream"] = established(backend_port)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return results, status, elapsed


def bench_streams(args):
    n = args.streams
    words = 40  # 1 word per second: streams would run ~40 s; we close them after measuring
    backend, backend_port = start_backend(1000)
    mm, mm_port = start_modelmux(backend_port, workers=n + 100)
    time.sleep(1.0)
    idle = proc_status(mm.pid)
    results, loaded, elapsed = asyncio.run(_many_streams(mm_port, n, words, mm.pid, backend_port))
    ok = sum(1 for r in results if r[0] == "ok")
    if ok != n:
        bad = [r for r in results if r[0] != "ok"][:3]
        log("only %d of %d streams got a first chunk; e.g. %r" % (ok, n, bad))
    time.sleep(3.0)  # let the proxy notice the closed clients and free the workers
    after = proc_status(mm.pid)
    after["upstream"] = established(backend_port)
    healthy = http_get_status(mm_port, "/health") == 200
    stop(mm)
    stop(backend)
    return {"idle": idle, "loaded": loaded, "after": after, "ok": ok, "n": n,
            "open_seconds": elapsed, "healthy_after": healthy, "workers": n + 100}


def bench_idle_and_startup(args):
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
    mm, _ = start_modelmux(backend_port)
    time.sleep(1.0)
    idle = proc_status(mm.pid)
    stop(mm)
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
    if sh("git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock"):
        commit += " (+ uncommitted changes in src/Cargo)"
    return {
        "nproc": sh("nproc") or str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem": mem,
        "rustc": sh("rustc --version"),
        "wrk": (sh("wrk --version 2>&1 | head -1").split(" Copyright")[0]),
        "commit": commit,
    }


ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


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


def report(args, m, rows, rss_after_load, ttfb, streams, startup, idle, size):
    L = []
    L.append("Measured %s UTC on: %s CPUs, %s, Linux %s, %s RAM; %s; %s; modelmux commit %s."
             % (args.date, m["nproc"], m["cpu"], m["kernel"], m["mem"], m["rustc"], m["wrk"], m["commit"]))
    L.append("")
    if rows:
        L.append("### Non-streaming `POST /v1/chat/completions` (wrk, %d s per run)" % args.duration)
        L.append("")
        if any(t == "LiteLLM" for _, _, t, _ in rows):
            L.append("LiteLLM %s proxy (`litellm --num_workers 1`, master key set, `openai/echo` "
                     "with `api_base` at the same mock backend) is the peer." % args.litellm_version)
            L.append("")
        L.append("| connections | concurrency | target | req/s | p50 ms | p99 ms | req/s vs direct | p50 vs direct | errors |")
        L.append("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        direct = {(mo, c): r for mo, c, t, r in rows if t == "direct"}
        for mo, c, t, r in rows:
            d = direct[(mo, c)]
            ratio = "%.3f×" % (r["rps"] / d["rps"]) if t != "direct" and d["rps"] else "—"
            lat = ("%+.3f ms" % ((r["p50_us"] - d["p50_us"]) / 1000)) if t != "direct" else "—"
            errs = ", ".join("%d %s" % (r[k], k) for k in ERROR_KINDS if r[k]) or "0"
            L.append("| %s | %d | %s | %.0f | %.3f | %.3f | %s | %s | %s |" % (
                mo, c, t, r["rps"], r["p50_us"] / 1000, r["p99_us"] / 1000, ratio, lat, errs))
        L.append("")
    L.append("### Streaming, memory, size, startup")
    L.append("")
    L.append("| metric | direct | via modelmux | added by modelmux |")
    L.append("|---|---:|---:|---:|")
    if ttfb:
        d, p = ttfb
        for label, idx in (("first response byte", 0), ("first SSE event", 1)):
            dv = [x[idx] for x in d]
            pv = [x[idx] for x in p]
            for q in (50, 99):
                L.append("| stream %s, p%d (ms, %d sequential, new connection each) | %s | %s | %+.3f ms |" % (
                    label, q, len(dv), ms(pct(dv, q)), ms(pct(pv, q)), (pct(pv, q) - pct(dv, q)) * 1000))
    L.append("")
    L.append("| metric | value |")
    L.append("|---|---:|")
    if idle:
        L.append("| RSS idle (default 256 workers), threads | %s, %d threads |" % (mib(idle["rss_kib"]), idle["threads"]))
    if rss_after_load:
        L.append("| RSS after the keep-alive load runs (256 workers), threads | %s, %d threads |"
                 % (mib(rss_after_load["rss_kib"]), rss_after_load["threads"]))
    if streams:
        s = streams
        L.append("| RSS idle with %d workers, threads | %s, %d threads |"
                 % (s["workers"], mib(s["idle"]["rss_kib"]), s["idle"]["threads"]))
        L.append("| RSS with %d concurrent open streams (%d of %d got their first chunk in %.1f s), threads, open upstream connections | %s, %d threads, %d upstream |"
                 % (s["n"], s["ok"], s["n"], s["open_seconds"], mib(s["loaded"]["rss_kib"]),
                    s["loaded"]["threads"], s["loaded"]["upstream"]))
        L.append("| RSS 3 s after those clients hung up, threads, open upstream connections (then /health: %s) | %s, %d threads, %d upstream |"
                 % ("200" if s["healthy_after"] else "FAILED", mib(s["after"]["rss_kib"]),
                    s["after"]["threads"], s["after"]["upstream"]))
    if size:
        L.append("| binary size (target/release/modelmux) | %d bytes (%.1f MiB) |" % (size, size / 1024 / 1024))
    if startup:
        L.append("| startup: spawn to first 200 from GET /health, median of %d (min / max) | %.1f ms (%.1f / %.1f ms) |" % (
            len(startup), statistics.median(startup) * 1000, min(startup) * 1000, max(startup) * 1000))
    L.append("")
    notes = list(args.notes)
    if rows:
        ka = {c: r for mo, c, t, r in rows if mo == "keep-alive" and t == "modelmux"}
        nc = {c: r for mo, c, t, r in rows if mo != "keep-alive" and t == "modelmux"}
        dka = {c: r for mo, c, t, r in rows if mo == "keep-alive" and t == "direct"}
        if 1 in ka and ka[1]["p50_us"] > 20000 and dka[1]["p50_us"] < 5000:
            extra = ""
            if 1 in nc and nc[1]["p50_us"] < 5000:
                extra = (" while a new connection per request answers in %.2f ms" % (nc[1]["p50_us"] / 1000))
            notes.append(
                "Through modelmux a keep-alive request at concurrency 1 takes %.1f ms (p50)%s. "
                "A ~40 ms stall on reused connections only is the signature of Nagle's algorithm "
                "meeting the client's delayed ACK (the response head and body leave in separate "
                "small writes on a socket without TCP_NODELAY); it caps keep-alive throughput at "
                "about 25 req/s per connection." % (ka[1]["p50_us"] / 1000, extra))
        # wrk counts a `read` error when the server closes a connection that wrk, having seen no
        # `Connection: close` in the response, meant to reuse; the response itself was complete.
        closers = sorted({t for mo, c, t, r in rows
                          if mo != "keep-alive" and r["read"] >= 0.9 * r["requests"] > 0})
        if closers:
            notes.append(
                "In the new-connection rows, %s shows about one wrk `read` error per request: it "
                "answers a `Connection: close` request in full and closes the socket, but its "
                "response carries no `Connection: close` header, so wrk tries to reuse the "
                "connection and sees it closed. The responses arrived complete (wrk reconnects and "
                "times each request from its own write), so req/s and latency there are still "
                "meaningful; a strict HTTP/1.1 client would log the same surprise."
                % " and ".join(closers))
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
(`demo/demo_backend.rs`, chunk delay 0), starts both on loopback with OS-picked ports, drives
them with [wrk](https://github.com/wg/wrk) and small Python clients (`scripts/bench/`), and
rewrites this file. It takes about two to three minutes; it installs `wrk` with apt-get if it
is missing. `make bench-peers` (`BENCH_PEERS=1`) also installs LiteLLM's proxy into
`target/bench-venv` and adds it to the non-streaming table, pointed at the same mock backend
(skipped with a message if it cannot be installed or started), in a separate pass after the
direct and modelmux runs. Extra arguments go to the driver, e.g.
`./scripts/bench.sh --duration 3 --output -` prints a quick report and leaves this file alone.

What the rows mean:

- **Non-streaming**: wrk POSTs a three-word chat completion for a fixed time at 1, 16 and 64
  concurrent connections, once straight at the mock backend (`direct`) and once through
  modelmux. *keep-alive* reuses each connection (what SDKs do); *new conn/request* sends
  `Connection: close`, so each request pays a TCP handshake. `req/s vs direct` is the
  proxy's throughput as a fraction of the backend's alone; `p50 vs direct` is the latency the
  proxy adds at the median. `errors` counts socket errors, timeouts and non-2xx answers.
- **Stream first byte / first SSE event**: sequential `"stream": true` requests, each on a new
  connection, alternating direct and via modelmux; time from `connect()` to the first
  response byte (what `curl -w %{time_starttransfer}` reports) and to the first `data:` event.
- **RSS**: `VmRSS` and `Threads` from `/proc/PID/status` of the modelmux process: idle right
  after start; after the keep-alive load; and with 1,000 concurrent streams held open (modelmux
  started with `CM_OPEN_WEBUI_PROXY_WORKERS=1100`, backend sending one word per second), read
  once every stream has received its first chunk, then again 3 s after the clients hung up
  (with the number of modelmux-to-backend connections still open, which should drop to 0).
- **Startup**: time from spawning the process to the first `200` from `GET /health`.

Caveats:

- Load generator, proxy and backend share the same machine, so the proxied runs compete with
  wrk and the backend for CPU (on a 2-core machine that is most of the story at concurrency
  16 and 64). The mock backend answers instantly, so these numbers measure the proxy's own
  overhead, not a realistic LLM workload, where the model's seconds dwarf it.
- The mock backend starts a thread per accepted connection. In the *new conn/request* rows and
  the stream rows the direct run pays that for every request while modelmux reuses pooled
  upstream connections, so there the proxy can look as fast as, or faster than, direct.
- A p99 over 200 samples is the second-worst sample; a negative "added" value there is noise.
- Compare runs only on the same machine.

## Latest results

"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "6")))
    ap.add_argument("--concurrency", default=os.environ.get("BENCH_CONCURRENCY", "1,16,64"))
    ap.add_argument("--ttfb-requests", type=int, default=200)
    ap.add_argument("--streams", type=int, default=int(os.environ.get("BENCH_STREAMS", "1000")))
    ap.add_argument("--startup-runs", type=int, default=10)
    ap.add_argument("--no-close-rows", action="store_true")
    ap.add_argument("--litellm", help="command that starts LiteLLM's proxy (peer rows)")
    ap.add_argument("--peer-note", action="append", default=[])
    ap.add_argument("--only", default="all", help="comma list: nonstream,ttfb,streams,startup")
    ap.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.notes = list(args.peer_note)
    args.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    args.litellm_version = ""
    if args.litellm:
        pip = os.path.join(os.path.dirname(args.litellm.split()[0]), "pip")
        for line in sh("'%s' show litellm 2>/dev/null" % pip).splitlines():
            if line.startswith("Version:"):
                args.litellm_version = line.split(":", 1)[1].strip()
    only = set(args.only.split(","))
    want = lambda s: "all" in only or s in only  # noqa: E731

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        m = machine()
        log("machine: %s CPUs, %s, Linux %s" % (m["nproc"], m["cpu"], m["kernel"]))
        rows = rss_after = ttfb = streams = startup = idle = None
        if want("startup"):
            log("startup time and idle RSS")
            startup, idle = bench_idle_and_startup(args)
        if want("nonstream"):
            log("non-streaming load (wrk)")
            peer_cmd = args.litellm.split() if args.litellm else None
            rows, rss_after = bench_nonstream(args, peer_cmd)
        if want("ttfb"):
            log("streaming time to first byte, %d sequential requests each" % args.ttfb_requests)
            ttfb = bench_ttfb(args)
        if want("streams"):
            log("%d concurrent open streams" % args.streams)
            streams = bench_streams(args)
        size = os.path.getsize(MODELMUX)
        text = report(args, m, rows, rss_after, ttfb, streams, startup, idle, size)
        print()
        print(text)
        if args.output != "-":
            with open(args.output, "w") as f:
                f.write(INTRO + text)
            log("wrote %s" % args.output)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
