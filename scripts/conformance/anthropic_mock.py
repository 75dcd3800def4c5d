#!/usr/bin/env python3
"""A scripted mock LLM backend for the Anthropic conformance checks (scripts/conformance.sh).

  anthropic_mock.py --mode native   speaks Anthropic's Messages API (/v1/messages,
                                    /v1/messages/count_tokens); chat completions are 404
  anthropic_mock.py --mode openai   speaks only OpenAI chat completions (/v1/chat/completions);
                                    /v1/messages is 404, as on a hosted OpenAI-compatible API

Prints "mock listening on http://127.0.0.1:PORT" once it listens (port 0: the OS picks).

What it answers is chosen by a marker `[scenario:NAME]` in the request's first user text, so one
mock serves every check; the same scenario is rendered in either protocol, streamed or not.
Requests without a marker get the Claude Code script (see claude_code_answer). Every request is
recorded; `GET /__requests` returns them (method, path, headers, parsed body) and
`POST /__reset` forgets them, so a check can assert exactly what reached the backend.
Standard library only.
"""

import argparse
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCENARIO = re.compile(r"\[scenario:([a-z_]+)\]")
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
LOCK = threading.Lock()
REQUESTS = []


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# --- what the request says ---------------------------------------------------------------------


def texts_of(content):
    """The text pieces of a message content (string, OpenAI parts or Anthropic blocks)."""
    if isinstance(content, str):
        return [content]
    out = []
    for part in content or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
    return out


def scenario_of(body):
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            for t in texts_of(m.get("content")):
                found = SCENARIO.search(t)
                if found:
                    return found.group(1)
    return None


def tool_result(body, mode):
    """(tool call id, result text) when the last turn answers a tool call, else None."""
    msgs = body.get("messages") or []
    if mode == "openai":
        # The tool messages come right after the assistant's tool_calls, before any user text.
        for m in reversed(msgs):
            if m.get("role") == "tool":
                return m.get("tool_call_id"), "".join(texts_of(m.get("content")))
            if m.get("role") == "assistant":
                return None
        return None
    last = msgs[-1] if msgs else {}
    if last.get("role") != "user" or isinstance(last.get("content"), str):
        return None
    for block in last.get("content") or []:
        if block.get("type") == "tool_result":
            return block.get("tool_use_id"), "".join(texts_of(block.get("content")))
    return None


def system_text(body, mode):
    if mode == "openai":
        return "\n".join(
            "".join(texts_of(m.get("content"))) for m in body.get("messages") or [] if m.get("role") == "system"
        )
    system = body.get("system")
    return "\n".join(texts_of(system)) if system is not None else ""


def images_seen(body, mode):
    seen = []
    for m in body.get("messages") or []:
        if not isinstance(m.get("content"), list):
            continue
        for part in m["content"]:
            if mode == "openai" and part.get("type") == "image_url":
                seen.append("image_url " + part["image_url"]["url"])
            elif mode == "native" and part.get("type") == "image":
                src = part["source"]
                if src["type"] == "base64":
                    seen.append(f"image {src['media_type']} {src['data']}")
                else:
                    seen.append(f"image url {src['url']}")
    return "; ".join(seen)


def compact(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the answer, independent of the protocol ---------------------------------------------------


class Answer:
    """Blocks in order: ("thinking", [chunks]), ("text", [chunks]), ("tool", id, name, [chunks])."""

    def __init__(self, blocks, finish="stop", usage=(10, 5, 0, 0), stop_string=None, fail_after=None):
        self.blocks = blocks
        self.finish = finish  # stop | length | tool_calls
        self.usage = usage  # (input incl. cached, output, cache reads, cache writes)
        self.stop_string = stop_string
        self.fail_after = fail_after  # a stream breaks after this many content deltas


def text(*chunks, **kw):
    return Answer([("text", list(chunks))], **kw)


def split_args(args, size):
    raw = json.dumps(args)
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def answer_for(body, mode):
    result = tool_result(body, mode)
    name = scenario_of(body)
    if name is None:
        return claude_code_answer(body, mode, result)
    if result is not None:
        call_id, content = result
        return text("Result", f" for {call_id}:", f" {content}", usage=(30, 8, 0, 0))
    if name == "text":
        return text("Hello", " from", " the", " mock.", usage=(12, 5, 0, 0))
    if name == "ledger":
        # Native: 3 uncached + 11 cache reads + 7 cache writes; chat: 21 prompt, 11 cached.
        return text("Counted.", usage=(21, 9, 11, 7))
    if name == "system":
        return text("system=", system_text(body, mode))
    if name == "image":
        return text("saw ", images_seen(body, mode))
    if name in ("tool_split", "tool_one"):
        chunks = split_args(WEATHER_ARGS, 3) if name == "tool_split" else split_args(WEATHER_ARGS, 1000)
        call_id = "call_weather_1" if mode == "openai" else "toolu_weather_1"
        return Answer(
            [("text", ["Let me", " check."]), ("tool", call_id, "get_weather", chunks)],
            finish="tool_calls",
            usage=(25, 14, 0, 0),
        )
    if name == "tool_choice":
        said = {"tool_choice": body.get("tool_choice")}
        if "parallel_tool_calls" in body:
            said["parallel_tool_calls"] = body["parallel_tool_calls"]
        return text(compact(said))
    if name == "stop":
        stops = body.get("stop") if mode == "openai" else body.get("stop_sequences")
        return text("one", " two", stop_string=stops[-1] if stops else None)
    if name == "thinking":
        return Answer([("thinking", ["Six times", " seven."]), ("text", ["42"])], usage=(8, 6, 0, 0))
    if name == "error_mid":
        return Answer([("text", ["partial", " never"])], fail_after=1)
    return text(f"unknown scenario {name}")


def claude_code_answer(body, mode, result):
    """Claude Code's requests: the main loop (it sends its tools) creates a file with Bash, then
    answers in words once the tool result is back; anything else (titles, topic checks,
    summaries) gets a short text answer."""
    tools = [t.get("function", t).get("name") for t in body.get("tools") or []]
    if result is not None:
        return text("Done:", " the file is written.", usage=(40, 7, 0, 0))
    if "Bash" in tools:
        target = None
        for m in body.get("messages") or []:
            for t in texts_of(m.get("content")):
                found = re.search(r"create the file (\S+)", t)
                if found:
                    target = found.group(1)
        if target:
            args = {"command": f"echo modelmux-was-here > {target}", "description": "Create the file"}
            call_id = "call_bash_1" if mode == "openai" else "toolu_bash_1"
            return Answer([("tool", call_id, "Bash", split_args(args, 7))], finish="tool_calls", usage=(50, 20, 0, 0))
    return text('{"isNewTopic": false, "title": null}' if "isNewTopic" in json.dumps(body) else "OK")


# --- OpenAI chat completions rendering --------------------------------------------------------


def chat_usage(a):
    prompt, completion, cached, _ = a.usage
    u = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


def chat_json(a, model):
    msg = {"role": "assistant", "content": None}
    for b in a.blocks:
        if b[0] == "thinking":
            msg["reasoning_content"] = "".join(b[1])
        elif b[0] == "text":
            msg["content"] = "".join(b[1])
        else:
            msg.setdefault("tool_calls", []).append(
                {"id": b[1], "type": "function", "function": {"name": b[2], "arguments": "".join(b[3])}}
            )
    choice = {"index": 0, "message": msg, "finish_reason": a.finish}
    if a.stop_string:
        choice["stop_reason"] = a.stop_string  # vLLM names the stop string it matched
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [choice],
        "usage": chat_usage(a),
    }


def chat_events(a, model, include_usage):
    def chunk(delta, finish=None, extra=None):
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        choice.update(extra or {})
        return {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
                "model": model, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""})
    sent = 0
    tool_index = 0
    for b in a.blocks:
        if b[0] in ("thinking", "text"):
            key = "reasoning_content" if b[0] == "thinking" else "content"
            for piece in b[1]:
                if a.fail_after is not None and sent >= a.fail_after:
                    yield {"error": {"message": "the mock backend ran out of memory", "type": "server_error", "code": 500}}
                    return
                yield chunk({key: piece})
                sent += 1
        else:
            _, call_id, name, pieces = b
            head = {"index": tool_index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
            if len(pieces) == 1:  # the whole arguments in the same chunk as the name
                head["function"]["arguments"] = pieces[0]
                yield chunk({"tool_calls": [head]})
            else:
                yield chunk({"tool_calls": [head]})
                for piece in pieces:
                    yield chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": piece}}]})
            tool_index += 1
    yield chunk({}, a.finish, {"stop_reason": a.stop_string} if a.stop_string else None)
    if include_usage:
        yield {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
               "model": model, "choices": [], "usage": chat_usage(a)}


# --- Anthropic Messages rendering -------------------------------------------------------------


def stop_fields(a):
    if a.finish == "tool_calls":
        return "tool_use", None
    if a.finish == "length":
        return "max_tokens", None
    if a.stop_string:
        return "stop_sequence", a.stop_string
    return "end_turn", None


def native_usage(a):
    prompt, completion, reads, writes = a.usage
    u = {"input_tokens": prompt - reads - writes, "cache_creation_input_tokens": writes,
         "cache_read_input_tokens": reads, "output_tokens": completion}
    if writes:  # Anthropic splits the writes by cache lifetime (the 1-hour ones cost more)
        u["cache_creation"] = {"ephemeral_5m_input_tokens": writes - writes // 2,
                               "ephemeral_1h_input_tokens": writes // 2}
    return u


def native_blocks(a):
    out = []
    for b in a.blocks:
        if b[0] == "thinking":
            out.append({"type": "thinking", "thinking": "".join(b[1]), "signature": "sig-mock"})
        elif b[0] == "text":
            out.append({"type": "text", "text": "".join(b[1])})
        else:
            out.append({"type": "tool_use", "id": b[1], "name": b[2], "input": json.loads("".join(b[3]))})
    return out


def native_json(a, model):
    reason, seq = stop_fields(a)
    return {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": native_blocks(a), "stop_reason": reason, "stop_sequence": seq,
            "usage": native_usage(a)}


def native_events(a, model):
    usage = native_usage(a)
    start_usage = dict(usage, output_tokens=1)
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}}
    sent = 0
    for i, b in enumerate(a.blocks):
        if b[0] == "thinking":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
            for piece in b[1]:
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "thinking_delta", "thinking": piece}}
            yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                          "delta": {"type": "signature_delta", "signature": "sig-mock"}}
        elif b[0] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "text", "text": ""}}
            for piece in b[1]:
                if a.fail_after is not None and sent >= a.fail_after:
                    yield "error", {"type": "error", "error": {"type": "overloaded_error",
                                                              "message": "the mock backend is overloaded"}}
                    return
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "text_delta", "text": piece}}
                sent += 1
        else:
            _, call_id, name, pieces = b
            yield "content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": call_id, "name": name, "input": {}}}
            for piece in pieces:
                yield "content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "input_json_delta", "partial_json": piece}}
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    reason, seq = stop_fields(a)
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
                            "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


# --- HTTP ---------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "openai"
    # Head and body go out as separate writes; with Nagle on, each answer waits for a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # the request log below says more
        pass

    def send_json(self, status, value, headers=()):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, val in headers:
            self.send_header(name, val)
        self.end_headers()
        self.wfile.write(data)

    def send_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/__requests":
            with LOCK:
                return self.send_json(200, list(REQUESTS))
        self.record(None)
        if path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [{"id": "mock", "object": "model"}]})
        self.send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def record(self, body):
        entry = {"method": self.command, "path": self.path,
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        with LOCK:
            REQUESTS.append(entry)
        tools = [t.get("function", t).get("name") for t in (body or {}).get("tools") or []] if body else []
        log(f"{self.mode}: {self.command} {self.path} model={(body or {}).get('model')} "
            f"stream={(body or {}).get('stream')} scenario={scenario_of(body) if body else None} "
            f"messages={len((body or {}).get('messages') or [])} tools={tools[:6]}{'...' if len(tools) > 6 else ''}")

    def do_POST(self):
        path = self.path.split("?")[0]
        if path == "/__reset":
            with LOCK:
                REQUESTS.clear()
            return self.send_json(200, {})
        body = self.read_body()
        self.record(body)
        if body is None:
            return self.send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        if self.mode == "openai" and path == "/v1/chat/completions":
            return self.chat(body)
        if self.mode == "native" and path == "/v1/messages":
            return self.messages(body)
        if self.mode == "native" and path == "/v1/messages/count_tokens":
            words = sum(len(t.split()) for m in body.get("messages") or [] for t in texts_of(m.get("content")))
            return self.send_json(200, {"input_tokens": 40 + words})
        self.send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def chat(self, body):
        a = answer_for(body, "openai")
        model = body.get("model")
        if not body.get("stream"):
            return self.send_json(200, chat_json(a, model))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.start_stream()
        for event in chat_events(a, model, include_usage):
            self.send_chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if "error" in event:
                break
        else:
            self.send_chunk(b"data: [DONE]\n\n")
        self.send_chunk(b"")

    def messages(self, body):
        a = answer_for(body, "native")
        model = body.get("model")
        if not body.get("stream"):
            return self.send_json(200, native_json(a, model))
        self.start_stream()
        for name, data in native_events(a, model):
            self.send_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.send_chunk(b"")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("native", "openai"), required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    Handler.mode = args.mode
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"mock ({args.mode}) listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
