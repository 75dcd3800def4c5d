"""The conversation affinity section of `make bench` (issue 23, item 6); `--only affinity`.

Three demo backends model an inference server's prefix cache (`demo_backend --prefix-cache
HIT_MS,MISS_MS`: a turn whose earlier turns that backend served answers its first byte after
HIT_MS, any other after MISS_MS, as a server re-prefilling the whole history would). 50
conversations of several turns run at once through modelmux, each turn sending the whole
history and an `X-OpenWebUI-Chat-Id`, once with the endpoint's `affinity` off and once on.
Reported per run: the share of later turns (those with earlier turns to find) that hit the
cache, the median and p90 time to the response's first byte of those turns, and how the
conversations spread over the backends. Standard library only; started from bench.py, whose
process helpers (spawn, stop by PID) it uses.
"""

import http.client
import json
import statistics
import threading
import time

HIT_MS = 5
MISS_MS = 80
BACKENDS = 3
CONVERSATIONS = 50
TURNS = 6


def conversation(port, cid, results):
    """One conversation's turns on one keep-alive connection: (turn, seconds to the response
    head, cache outcome, backend) per turn."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    messages = [{"role": "user", "content": "%s: turn 0, a question" % cid}]
    out = []
    for turn in range(TURNS):
        body = '{"model":"m","stream":true,"messages":%s}' % _json(messages)
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "X-OpenWebUI-Chat-Id": cid})
        resp = conn.getresponse()
        ttfb = time.perf_counter() - start
        resp.read()
        out.append((turn, ttfb, resp.getheader("X-Mock-Prefix-Cache", "?"),
                    resp.getheader("X-Mock-Backend", "?"), resp.status))
        messages.append({"role": "assistant", "content": "answer %d" % turn})
        messages.append({"role": "user", "content": "turn %d, another question" % (turn + 1)})
    conn.close()
    results[cid] = out


def _json(v):
    return json.dumps(v, separators=(",", ":"))


def one_run(bench, ports, affinity, tag):
    endpoint = {
        "backends": [{"url": "http://127.0.0.1:%d" % p, "actualModelName": "echo"} for p in ports],
        "affinity": affinity,
    }
    mm, port = bench.start_modelmux(ports[0], extra={"endpoints": {"m": endpoint}})
    try:
        results = {}
        threads = [threading.Thread(target=conversation, args=(port, "%s-%d" % (tag, i), results))
                   for i in range(CONVERSATIONS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        bench.stop(mm)
    later = [r for turns in results.values() for r in turns if r[0] > 0]
    ttfbs = [r[1] for r in later]
    # Where each conversation's turns went: one backend each with affinity.
    spread = {}
    moved = 0
    for turns in results.values():
        backends = {r[3] for r in turns}
        moved += len(backends) > 1
        spread[turns[-1][3]] = spread.get(turns[-1][3], 0) + 1
    return {
        "affinity": affinity,
        "turns": sum(len(t) for t in results.values()),
        "errors": sum(1 for t in results.values() for r in t if r[4] != 200),
        "hits": sum(1 for r in later if r[2] == "hit"),
        "later": len(later),
        "p50": statistics.median(ttfbs) if ttfbs else 0.0,
        "p90": bench.pct(ttfbs, 90) if ttfbs else 0.0,
        "spread": sorted(spread.values(), reverse=True),
        "moved": moved,
        "wall": wall,
    }


def run(bench, args):
    """Both runs (off, then on), each against three fresh backends (empty caches)."""
    rows = []
    for tag, affinity in (("off", False), ("on", True)):
        backends = [bench.spawn([bench.BACKEND, "127.0.0.1:0", "--chunk-delay-ms", "0",
                                 "--prefix-cache", "%d,%d" % (HIT_MS, MISS_MS)])
                    for _ in range(BACKENDS)]
        try:
            ports = [bench.listening_port(b.pid) for b in backends]
            rows.append(one_run(bench, ports, affinity, "conversation-%s" % tag))
        finally:
            for b in backends:
                bench.stop(b)
    return rows


def section(rows):
    L = ["### Conversation affinity: prefix-cache hits (%d backends, %d concurrent conversations "
         "of %d turns)" % (BACKENDS, CONVERSATIONS, TURNS), ""]
    L.append("Each backend models a prefix cache: a turn whose earlier turns it served answers "
             "its first byte after %d ms, any other after %d ms. Hits and time to first byte are "
             "over the turns after the first (%d per run)." % (HIT_MS, MISS_MS,
                                                              CONVERSATIONS * (TURNS - 1)))
    L.append("")
    L.append("| affinity | cache hits | median time to first byte | p90 | conversations moved "
             "between backends | conversations per backend (last turn) | errors | run time |")
    L.append("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        L.append("| %s | %d of %d (%.1f%%) | %.1f ms | %.1f ms | %d of %d | %s | %d | %.2f s |" % (
            "on" if r["affinity"] else "off", r["hits"], r["later"],
            100.0 * r["hits"] / r["later"] if r["later"] else 0.0,
            r["p50"] * 1000, r["p90"] * 1000, r["moved"], CONVERSATIONS,
            ", ".join(str(n) for n in r["spread"]), r["errors"], r["wall"]))
    L.append("")
    return "\n".join(L)
