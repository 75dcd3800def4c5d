#!/usr/bin/env python3
"""A small OTLP/HTTP JSON trace receiver for the tests (tests/support/otlp.rs starts it).

Every export is parsed into the official ExportTraceServiceRequest message of the
`opentelemetry-proto` package with protobuf's JSON mapping, which rejects unknown fields,
wrong types and bad enum values. OTLP/JSON writes trace and span ids as hex where the plain
protobuf mapping expects base64; like the OpenTelemetry Collector, the receiver converts them
first, and refuses ids that are not hex of the right length.

Prints its port on the first line of stdout. GET /spans answers what it received; POST /mode
sets how it answers exports: `ok`, `503` (with Retry-After: 2) or `slow` (sleeps 3 s first).
"""
import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

LOCK = threading.Lock()
STATE = {"mode": sys.argv[1] if len(sys.argv) > 1 else "ok", "spans": [], "errors": [],
         "posts": 0, "headers": []}

ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def hex_ids_to_base64(node):
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k in ID_LENGTHS and isinstance(v, str):
                raw = bytes.fromhex(v)  # ValueError for anything but hex
                if len(raw) != ID_LENGTHS[k] or v != v.lower():
                    raise ValueError("%s %r is not %d bytes of lowercase hex" % (k, v, ID_LENGTHS[k]))
                node[k] = base64.b64encode(raw).decode()
            else:
                hex_ids_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            hex_ids_to_base64(v)


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def flatten(req):
    out = []
    for rs in req.resource_spans:
        resource = {a.key: any_value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "traceId": s.trace_id.hex(),
                    "spanId": s.span_id.hex(),
                    "parentSpanId": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": {a.key: any_value(a.value) for a in s.attributes},
                    "status": {"code": s.status.code, "message": s.status.message},
                    "resource": resource,
                    "scope": ss.scope.name,
                })
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"{}", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            body = json.dumps({k: STATE[k] for k in ("spans", "errors", "posts", "headers")})
        self.reply(200, body.encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/mode"):
            with LOCK:
                STATE["mode"] = body.decode().strip()
            return self.reply(200)
        with LOCK:
            STATE["posts"] += 1
            STATE["headers"].append({k.lower(): v for k, v in self.headers.items()})
            mode = STATE["mode"]
        if mode == "slow":
            time.sleep(3)
        if mode == "503":
            return self.reply(503, b'{"code":14}', [("Retry-After", "2")])
        try:
            if self.path != "/v1/traces":
                raise ValueError("export to %s, not /v1/traces" % self.path)
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                raise ValueError("content type %r" % self.headers.get("Content-Type"))
            doc = json.loads(body)
            hex_ids_to_base64(doc)
            req = json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())
        except Exception as e:  # the test reads the errors and fails on any
            with LOCK:
                STATE["errors"].append(repr(e))
            return self.reply(400, json.dumps({"message": repr(e)}).encode())
        with LOCK:
            STATE["spans"].extend(flatten(req))
        self.reply(200, b"{}")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
