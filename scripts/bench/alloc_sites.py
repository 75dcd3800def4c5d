#!/usr/bin/env python3
"""Where a chat completion's heap allocations come from: runs modelmux (a build with debug
symbols, e.g. target/prof/release/modelmux from scripts/bench/profile.sh) under
`valgrind --tool=dhat` in front of the demo mock backend, sends REQUESTS chat completions on one
keep-alive connection, stops it, and prints the allocation sites (the first frame in modelmux's
own code or its HTTP crates) with their allocations per request.

Usage: scripts/bench/alloc_sites.py BINARY [REQUESTS] [EXTRA_CONFIG_JSON] [--stream]
The sites of start-up are included once, so use a few hundred requests."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

STD_PREFIXES = ("alloc::", "core::", "std::", "<alloc::", "<core::", "<std::", "hashbrown::",
                "<hashbrown", "<&", "<[")


def path_of(func):
    """The item path a frame's function belongs to, without generic arguments: for
    `<tiny_http::X as Iterator>::next` the type's path."""
    if func.startswith("<"):
        return func[1:].split(" as ")[0].split(">")[0].split("<")[0]
    out, depth = "", 0
    for ch in func:
        depth += ch == "<"
        if depth == 0:
            out += ch
        depth -= ch == ">"
    return out


def site(frames):
    """The first frame outside the standard library's allocation plumbing, with its line."""
    for f in frames:
        name = f.split(": ", 1)[-1]
        func = name.split(" (")[0]
        if func == "UnknownInlinedFun":
            # An inlined call valgrind cannot name: its file and line still tell.
            where = name[len(func):].strip(" ()")
            if not where.startswith("library/") and not where.startswith("src/alloc.rs"):
                return "inlined at " + where
            continue
        path = path_of(func)
        if "::" in path and not path.startswith(STD_PREFIXES):
            return name
    return frames[-1].split(": ", 1)[-1] if frames else "?"


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "--stream" else None
    body = b.LONG_STREAM_BODY if "--stream" in sys.argv else b.BODY
    out = os.path.join(b.TMP, "dhat.json")
    try:
        backend, bport = b.start_backend(0)
        port = b.free_port()
        cfg = b.write_config(bport, extra)
        p = b.spawn(["valgrind", "--tool=dhat", "--dhat-out-file=" + out, binary, "--host",
                     "127.0.0.1", "--port", str(port), "--config", cfg],
                    env={"CM_OPEN_WEBUI_PROXY_LOG_LEVEL": "warn"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not b.wait_health(port, "/health", timeout=120):
            raise RuntimeError("modelmux under valgrind did not start")
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(n):
            c.request("POST", "/v1/chat/completions", body=body,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        c.close()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        b.stop(backend)
        data = json.load(open(out))
    finally:
        b.stop_all()
    report(data, n)


def report(data, n):
    ftbl = data["ftbl"]
    by = {}
    total = 0
    for pp in data["pps"]:
        frames = [ftbl[i] for i in pp["fs"]]
        k = site(frames)
        own = next((f.split(": ", 1)[-1] for f in frames if "modelmux::" in f), None)
        if own and own != k:
            k += "  <- " + own
        by[k] = by.get(k, 0) + pp["tbk"]
        total += pp["tbk"]
    print("%d requests; %.1f allocations per request in all (start-up included)" % (n, total / n))
    for k, v in sorted(by.items(), key=lambda x: -x[1]):
        if v / n >= 0.05:
            print("%7.2f  %s" % (v / n, k))


if __name__ == "__main__":
    if sys.argv[1].endswith(".json"):  # an earlier run's dhat output: report it again
        report(json.load(open(sys.argv[1])), int(sys.argv[2]))
    else:
        main()
