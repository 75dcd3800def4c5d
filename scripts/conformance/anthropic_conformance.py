#!/usr/bin/env python3
"""Anthropic Python SDK conformance checks against a running modelmux (see scripts/conformance.sh).

Expects modelmux with client keys `sk-mm-client-1` (name "sdk") and `sk-mm-limited` (name
"limited", one request a minute), a usage ledger at --usage-log, and two endpoints in front of
scripts/conformance/anthropic_mock.py:
  native-m -> the mock in --mode native (messagesApi "native", actual model "mock-native",
              display name "Native mock", apiKeyHeader "x-api-key", aliases ["claude-native-*"])
  chat-m   -> the mock in --mode openai (translated, actual model "mock-chat", display name
              "Chat mock", aliases ["claude-*"])
Every check runs against both, non-streaming and streaming, and asserts exact text and fields,
and what the mock received (its /__requests).

Prints one PASS/FAIL line per check; exits 1 if any check fails.
"""

import argparse
import json
import sys
import time
import traceback
import urllib.request

import anthropic

CLIENT_KEY = "sk-mm-client-1"
LIMITED_KEY = "sk-mm-limited"
MODELS = {"native": "native-m", "translate": "chat-m"}
BACKEND_MODEL = {"native": "mock-native", "translate": "mock-chat"}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                     "required": ["city"]},
}
RAW_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
              "message_delta", "message_stop"}
FAILURES = []
COUNT = [0]


def check(name):
    def wrap(fn):
        def run(*args, **kwargs):
            label = name.format(*args[1:], **kwargs)
            COUNT[0] += 1
            started = time.monotonic()
            try:
                detail = fn(*args, **kwargs)
            except AssertionError as e:
                FAILURES.append(label)
                print(f"FAIL {label}: {e}", flush=True)
                return
            except Exception as e:  # noqa: BLE001 - an unexpected exception is a failure too
                FAILURES.append(label)
                print(f"FAIL {label}: unexpected {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(limit=2, file=sys.stderr)
                return
            ms = (time.monotonic() - started) * 1000
            print(f"PASS {label}{f' ({detail})' if detail else ''} [{ms:.0f} ms]", flush=True)

        return run

    return wrap


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def equal(got, want, what):
    expect(got == want, f"{what}: got {got!r}, expected {want!r}")


class Mocks:
    """The two mock backends: what they received."""

    def __init__(self, native, chat):
        self.urls = {"native": native, "translate": chat}

    def _call(self, mode, path, method="GET"):
        req = urllib.request.Request(self.urls[mode] + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def reset(self):
        for mode in self.urls:
            self._call(mode, "/__reset", "POST")

    def requests(self, mode):
        return self._call(mode, "/__requests")

    def last(self, mode):
        got = self.requests(mode)
        expect(got, f"the {mode} mock received nothing")
        return got[-1]


def ask(client, mode, stream, **kw):
    """One Messages call; returns (final message, raw event types or None, response headers)."""
    kw.setdefault("max_tokens", 256)
    kw.setdefault("extra_headers", {"x-claude-code-session-id": "sess-conformance-1"})
    if not stream:
        raw = client.messages.with_raw_response.create(model=MODELS[mode], **kw)
        return raw.parse(), None, raw.headers
    kinds = []
    with client.messages.stream(model=MODELS[mode], **kw) as s:
        for event in s:
            if event.type in RAW_EVENTS:
                kinds.append(event.type if event.type != "content_block_delta" else event.delta.type)
        return s.get_final_message(), kinds, s.response.headers


def user(text):
    return [{"role": "user", "content": text}]


def blocks(msg):
    """The content blocks as plain dicts, without the fields the SDK fills with None."""
    out = []
    for b in msg.content:
        d = {k: v for k, v in b.model_dump().items() if v is not None}
        out.append(d)
    return out


@check("text ({0}, stream={1})")
def text(client, mode, stream, mocks):
    msg, kinds, _ = ask(client, mode, stream, messages=user("[scenario:text] say hello"))
    equal(blocks(msg), [{"type": "text", "text": "Hello from the mock."}], "content")
    equal((msg.role, msg.type, msg.stop_reason, msg.stop_sequence), ("assistant", "message", "end_turn", None),
          "role, type, stop_reason, stop_sequence")
    equal((msg.usage.input_tokens, msg.usage.output_tokens), (12, 5), "usage (input, output)")
    equal(msg.model, {"native": "mock-native", "translate": "chat-m"}[mode], "model")
    if stream:
        equal(kinds, ["message_start", "content_block_start"] + ["text_delta"] * 4
              + ["content_block_stop", "message_delta", "message_stop"], "event sequence")
    sent = mocks.last(mode)
    equal(sent["body"]["model"], BACKEND_MODEL[mode], "the backend's model")
    return None


@check("system blocks ({0}, stream={1})")
def system(client, mode, stream, mocks):
    blocks_in = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.9; cc_entrypoint=sdk-py"},
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
    ]
    msg, _, _ = ask(client, mode, stream, system=blocks_in, messages=user("[scenario:system] hi"))
    if mode == "native":  # passed through: every block, in order
        want = "system=" + "\n".join(b["text"] for b in blocks_in)
        equal(mocks.last(mode)["body"]["system"], blocks_in, "the native backend's system")
    else:  # Claude Code's attribution block dropped, the rest one system message
        want = "system=You are terse.\nAnswer in French."
        equal(mocks.last(mode)["body"]["messages"][0], {"role": "system", "content": "You are terse.\nAnswer in French."},
              "the chat backend's first message")
    equal(msg.content[0].text, want, "text")
    return None


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@check("images, base64 and url ({0}, stream={1})")
def images(client, mode, stream, mocks):
    content = [
        {"type": "text", "text": "[scenario:image] what are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    msg, _, _ = ask(client, mode, stream, messages=[{"role": "user", "content": content}])
    want = {
        "native": f"saw image image/png {PNG}; image url https://example.com/cat.png",
        "translate": f"saw image_url data:image/png;base64,{PNG}; image_url https://example.com/cat.png",
    }[mode]
    equal(msg.content[0].text, want, "text")
    return None


@check("two-turn tool loop, arguments {3} ({0}, stream={1})")
def tool_loop(client, mode, stream, mocks, how):
    scenario = "tool_split" if how == "split over 12 chunks" else "tool_one"
    first = user(f"[scenario:{scenario}] weather in Paris?")
    msg, kinds, _ = ask(client, mode, stream, tools=[WEATHER_TOOL], messages=first)
    equal(msg.stop_reason, "tool_use", "stop_reason")
    equal([b.type for b in msg.content], ["text", "tool_use"], "block types")
    equal(msg.content[0].text, "Let me check.", "text before the call")
    call = msg.content[1]
    equal((call.name, call.input), ("get_weather", WEATHER_ARGS), "tool_use name and input")
    expect(call.id, "tool_use without an id")
    if stream:
        fragments = kinds.count("input_json_delta")
        equal(fragments, 12 if scenario == "tool_split" else 1, "input_json_delta events")
    second = first + [
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"},
                                     {"type": "text", "text": "Summarize."}]},
    ]
    msg, _, _ = ask(client, mode, stream, tools=[WEATHER_TOOL], messages=second)
    equal(msg.content[0].text, f"Result for {call.id}: 18 C and sunny", "the answer after the tool result")
    equal(msg.stop_reason, "end_turn", "stop_reason")
    sent = mocks.last(mode)["body"]["messages"]
    if mode == "translate":
        equal([m["role"] for m in sent], ["user", "assistant", "tool", "user"], "roles the chat backend got")
        tc = sent[1]["tool_calls"]
        equal((len(tc), tc[0]["id"], tc[0]["function"]["name"], json.loads(tc[0]["function"]["arguments"])),
              (1, call.id, "get_weather", WEATHER_ARGS), "the assistant's tool_calls")
        equal((sent[2]["tool_call_id"], sent[2]["content"]), (call.id, "18 C and sunny"), "the tool message")
    else:
        equal(sent, second, "the native backend's messages")
    return f"tool_use id {call.id}"


@check("tool_choice {3} ({0}, stream={1})")
def tool_choice(client, mode, stream, mocks, choice):
    msg, _, _ = ask(client, mode, stream, tools=[WEATHER_TOOL], tool_choice=choice,
                    messages=user("[scenario:tool_choice] weather?"))
    if mode == "native":
        want = {"tool_choice": choice}
    elif choice["type"] == "any":
        want = {"tool_choice": "required"}
    else:
        want = {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False}
    equal(json.loads(msg.content[0].text), want, "what the backend received")
    return None


@check("stop_sequences ({0}, stream={1})")
def stop_sequences(client, mode, stream, mocks):
    msg, _, _ = ask(client, mode, stream, stop_sequences=["END", "STOP"], messages=user("[scenario:stop] count"))
    equal((msg.content[0].text, msg.stop_reason, msg.stop_sequence), ("one two", "stop_sequence", "STOP"),
          "text, stop_reason, stop_sequence")
    key = "stop" if mode == "translate" else "stop_sequences"
    equal(mocks.last(mode)["body"].get(key), ["END", "STOP"], f"the backend's {key}")
    return None


@check("thinking ({0}, stream={1})")
def thinking(client, mode, stream, mocks):
    msg, kinds, _ = ask(client, mode, stream, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                        messages=user("[scenario:thinking] six times seven?"))
    equal([(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in msg.content],
          [("thinking", "Six times seven."), ("text", "42")], "blocks")
    if stream:
        equal(kinds.count("thinking_delta"), 2, "thinking_delta events")
    if mode == "translate":
        body = mocks.last(mode)["body"]
        expect("thinking" not in body, f"thinking reached the chat backend: {body}")
    return None


@check("an error mid-stream ({0})")
def error_mid_stream(client, mode, mocks):
    got = []
    try:
        with client.messages.stream(model=MODELS[mode], max_tokens=100,
                                    messages=user("[scenario:error_mid] go")) as s:
            for piece in s.text_stream:
                got.append(piece)
    except anthropic.APIStatusError as e:
        want = {
            "native": {"type": "error", "error": {"type": "overloaded_error", "message": "the mock backend is overloaded"}},
            "translate": {"type": "error", "error": {"type": "api_error", "message": "the mock backend ran out of memory"}},
        }[mode]
        equal(e.body, want, "the error event")
        equal("".join(got), "partial", "text before the error")
        return f"{type(e).__name__}: {e.message}"
    raise AssertionError(f"no error raised; text {''.join(got)!r}")


@check("quota 429: RateLimitError with retry-after and x-should-retry false ({0})")
def quota(base_url, mode):
    limited = anthropic.Anthropic(base_url=base_url, api_key=LIMITED_KEY, max_retries=0, timeout=15.0)
    for attempt in range(3):  # one request a minute: the second is refused unless a minute ended between
        try:
            limited.messages.create(model=MODELS[mode], max_tokens=10, messages=user("[scenario:text] hi"))
        except anthropic.RateLimitError as e:
            equal(e.status_code, 429, "status")
            equal(e.body["type"], "error", "body type")
            equal(e.body["error"]["type"], "rate_limit_error", "error type")
            equal(e.response.headers.get("x-should-retry"), "false", "x-should-retry")
            wait = e.response.headers.get("retry-after", "")
            expect(wait.isdigit() and 1 <= int(wait) <= 60, f"retry-after {wait!r} is not whole seconds in 1..60")
            # With retries allowed, the SDK must still not retry (x-should-retry: false).
            patient = limited.with_options(max_retries=2)
            started = time.monotonic()
            try:
                patient.messages.create(model=MODELS[mode], max_tokens=10, messages=user("[scenario:text] hi"))
            except anthropic.RateLimitError:
                pass
            took = time.monotonic() - started
            expect(took < 1.0, f"the SDK waited {took:.1f} s: it retried despite x-should-retry: false")
            return f"after {attempt + 1} requests, retry-after {wait}"
    raise AssertionError("no 429 in 3 requests")


@check("count_tokens ({0})")
def count_tokens(client, mode, mocks):
    kw = dict(model=MODELS[mode], messages=user("count these four words"))
    if mode == "native":
        got = client.messages.count_tokens(**kw)
        equal(got.input_tokens, 44, "input_tokens (the mock's 40 + 4 words)")
        sent = mocks.last(mode)
        equal((sent["path"], sent["body"]["model"]), ("/v1/messages/count_tokens", "mock-native"), "forwarded")
        return None
    before = len(mocks.requests(mode))
    try:
        client.messages.count_tokens(**kw)
    except anthropic.NotFoundError as e:
        equal(e.body["error"]["type"], "not_found_error", "error type")
        equal(len(mocks.requests(mode)), before, "requests reaching the chat backend")
        return e.message
    raise AssertionError("no NotFoundError")


@check("x-api-key and Bearer client auth; client keys never reach the backend ({0})")
def auth(base_url, mode, mocks):
    wrong = anthropic.Anthropic(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=15.0)
    try:
        wrong.messages.create(model=MODELS[mode], max_tokens=10, messages=user("[scenario:text] hi"))
        raise AssertionError("a wrong x-api-key was accepted")
    except anthropic.AuthenticationError as e:
        equal(e.body["error"]["type"], "authentication_error", "error type")
    bearer = anthropic.Anthropic(base_url=base_url, api_key=None, auth_token=CLIENT_KEY, max_retries=0, timeout=15.0)
    msg = bearer.messages.create(model=MODELS[mode], max_tokens=10, messages=user("[scenario:text] hi"),
                                 extra_headers={"anthropic-version": "2023-06-01",
                                                "anthropic-beta": "some-beta-2099-01-01"})
    equal(msg.content[0].text, "Hello from the mock.", "text with a Bearer token")
    headers = mocks.last(mode)["headers"]
    expect(CLIENT_KEY not in json.dumps(headers), f"the client key reached the backend: {headers}")
    if mode == "native":
        equal((headers.get("anthropic-version"), headers.get("anthropic-beta")), ("2023-06-01", "some-beta-2099-01-01"),
              "anthropic headers forwarded verbatim")
        equal((headers.get("x-api-key"), headers.get("authorization")), ("sk-native-backend", None),
              "the endpoint's key in the header it takes (apiKeyHeader x-api-key)")
    else:
        leaked = [h for h in headers if h.startswith("anthropic-") or h == "x-api-key"]
        equal(leaked, [], "anthropic headers or x-api-key at the chat backend")
        equal(headers.get("authorization"), "Bearer sk-chat-backend", "the endpoint's key")
    return None


@check("aliases: claude-… ids land on a local model ({0}, stream={1})")
def aliases(client, mode, stream, mocks, usage_log):
    alias = {"native": "claude-native-test-1", "translate": "claude-sonnet-4-5-20250929"}[mode]
    kw = {"model": alias, "max_tokens": 64, "messages": user("[scenario:text] hi")}
    if stream:
        with client.messages.stream(**kw) as s:
            msg, headers = s.get_final_message(), s.response.headers
    else:
        raw = client.messages.with_raw_response.create(**kw)
        msg, headers = raw.parse(), raw.headers
    equal(msg.content[0].text, "Hello from the mock.", "text")
    # A translated Message answers with the id the client sent; a native one as its backend said.
    equal(msg.model, {"native": "mock-native", "translate": alias}[mode], "model")
    equal(mocks.last(mode)["body"]["model"], BACKEND_MODEL[mode], "the backend's model")
    rid = headers.get("x-request-id")
    line = ledger_lines(usage_log, {rid}).get(rid)
    expect(line is not None, f"no ledger line for {rid}")
    equal(line["model"], MODELS[mode], "the ledger's model")
    return None


@check("models.list in Anthropic's shape, models.retrieve; HEAD /api/hello")
def models_list(client, base_url):
    page = client.models.list()
    got = [(m.type, m.id, m.display_name) for m in page.data]
    equal(got, [("model", "native-m", "Native mock"), ("model", "chat-m", "Chat mock")], "models")
    equal((page.has_more, page.first_id, page.last_id), (False, "native-m", "chat-m"), "has_more, first_id, last_id")
    for m in page.data:
        expect(m.created_at is not None and m.created_at.tzinfo is not None, f"{m.id}: created_at {m.created_at!r}")
    one = client.models.retrieve("chat-m")
    equal((one.type, one.id, one.display_name), ("model", "chat-m", "Chat mock"), "models.retrieve")
    req = urllib.request.Request(base_url + "/api/hello", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        equal(r.status, 200, "HEAD /api/hello")
    return f"{[m.id for m in page.data]}"


def ledger_lines(path, request_ids):
    deadline = time.monotonic() + 5
    while True:
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        found = {line["request_id"]: line for line in lines if line.get("request_id") in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@check("ledger lines exact ({0}, stream={1})")
def ledger(client, mode, stream, mocks, usage_log):
    msg, _, headers = ask(client, mode, stream, metadata={"user_id": "ledger-user"},
                          messages=user("[scenario:ledger] count me"))
    want_usage = {"native": (3, 7, 11, 9), "translate": (10, 0, 11, 9)}[mode]
    u = msg.usage
    equal((u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens, u.output_tokens), want_usage,
          "client usage (input, cache writes, cache reads, output)")
    rid = headers.get("x-request-id")
    expect(rid, "no x-request-id")
    line = ledger_lines(usage_log, {rid}).get(rid)
    expect(line is not None, f"no ledger line for {rid}")
    volatile = {"ts", "request_id", "duration_ms", "ttfb_ms", "backend"}
    got = {k: v for k, v in line.items() if k not in volatile}
    want = {"replica": "conformance", "user": "sdk", "key": "sdk", "end_user": "ledger-user", "session": "sess-conformance-1",
            "model": MODELS[mode], "path": "/messages", "status": 200, "prompt_tokens": 21, "completion_tokens": 9,
            "cached_tokens": 11, "reasoning_tokens": 0, "estimated": False, "outcome": "complete"}
    if mode == "native":  # prompt-cache writes (7, of which 3 for an hour) get their own fields
        want.update(cache_write_tokens=7, cache_write_1h_tokens=3)
    equal(got, want, "ledger line")
    equal(list(got), [k for k in ["replica", "user", "key", "end_user", "session", "model", "path", "status", "prompt_tokens",
                                  "completion_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                                  "reasoning_tokens", "estimated", "outcome"] if k in want], "ledger field order")
    equal(line["backend"], mocks.urls[mode].split("//")[1], "ledger backend")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="modelmux, without /v1 (the SDK adds /v1/messages)")
    ap.add_argument("--native-mock", required=True)
    ap.add_argument("--chat-mock", required=True)
    ap.add_argument("--usage-log", required=True)
    args = ap.parse_args()
    client = anthropic.Anthropic(base_url=args.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=15.0)
    mocks = Mocks(args.native_mock, args.chat_mock)
    print(f"anthropic {anthropic.__version__} -> {args.base_url}", flush=True)
    models_list(client, args.base_url)
    for mode in ("native", "translate"):
        for stream in (False, True):
            text(client, mode, stream, mocks)
            system(client, mode, stream, mocks)
            images(client, mode, stream, mocks)
            tool_loop(client, mode, stream, mocks, "split over 12 chunks")
            tool_loop(client, mode, stream, mocks, "in one chunk")
            tool_choice(client, mode, stream, mocks, {"type": "tool", "name": "get_weather",
                                                      "disable_parallel_tool_use": True})
            tool_choice(client, mode, stream, mocks, {"type": "any"})
            stop_sequences(client, mode, stream, mocks)
            thinking(client, mode, stream, mocks)
            ledger(client, mode, stream, mocks, args.usage_log)
            aliases(client, mode, stream, mocks, args.usage_log)
        error_mid_stream(client, mode, mocks)
        count_tokens(client, mode, mocks)
        auth(args.base_url, mode, mocks)
        quota(args.base_url, mode)
    if FAILURES:
        print(f"{len(FAILURES)} of {COUNT[0]} checks FAILED: {', '.join(FAILURES)}", flush=True)
        return 1
    print(f"all {COUNT[0]} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
