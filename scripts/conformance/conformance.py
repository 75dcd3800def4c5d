#!/usr/bin/env python3
"""OpenAI Python SDK conformance checks against a running modelmux (see scripts/conformance.sh).

Expects modelmux in front of two demo backends:
  echo   -> demo_backend --chunk-delay-ms N --include-usage --models echo-real,tiny
            (displayName "Echo", actual model "echo-real")
  locked -> demo_backend --status 401
  demo/* -> the echo backend's base URL with /v1, discovering (displayName "{model} (discovered)")
and CM_OPEN_WEBUI_PROXY_MAX_BODY_BYTES set to --max-body.

Prints one PASS/FAIL line per check; exits 1 if any check fails.
"""

import argparse
import sys
import time
import traceback

import openai

ECHO_TEXT = "the quick brown fox jumps over the lazy dog"
FAILURES = []


def check(name):
    """Decorator: run the check, print PASS/FAIL, record failures (any exception is a FAIL)."""

    def wrap(fn):
        def run(*args, **kwargs):
            started = time.monotonic()
            try:
                detail = fn(*args, **kwargs)
            except AssertionError as e:
                FAILURES.append(name)
                print(f"FAIL {name}: {e}", flush=True)
                return
            except Exception as e:  # noqa: BLE001 - an unexpected exception is a failure too
                FAILURES.append(name)
                print(f"FAIL {name}: unexpected {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(limit=3, file=sys.stderr)
                return
            ms = (time.monotonic() - started) * 1000
            suffix = f" ({detail})" if detail else ""
            print(f"PASS {name}{suffix} [{ms:.0f} ms]", flush=True)

        run.check_name = name
        return run

    return wrap


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def user(text):
    return [{"role": "user", "content": text}]


EXPECTED_NAMES = {
    "echo": "Echo",
    "locked": "locked",
    "demo/echo-real": "echo-real (discovered)",
    "demo/tiny": "tiny (discovered)",
}


@check("models.list shows a wildcard's discovered models within one refresh")
def models_discovered(client):
    deadline = time.monotonic() + 10
    ids = []
    while time.monotonic() < deadline:
        ids = [m.id for m in client.models.list().data]
        if "demo/tiny" in ids:
            return f"after {10 - (deadline - time.monotonic()):.1f} s: {ids}"
        time.sleep(0.1)
    raise AssertionError(f"demo/tiny not listed within 10 s; ids {ids}")


@check("models.list lists configured and discovered ids with display names")
def models_list(client):
    page = client.models.list()
    models = {m.id: m for m in page.data}
    expect(set(models) == set(EXPECTED_NAMES), f"ids {sorted(models)}, expected {sorted(EXPECTED_NAMES)}")
    names = {mid: (m.model_extra or {}).get("name") for mid, m in models.items()}
    expect(names == EXPECTED_NAMES, f"names {names}, expected {EXPECTED_NAMES}")
    for m in models.values():
        expect(m.object == "model", f"{m.id}: object {m.object!r}, expected 'model'")
    return f"names {names}"


@check("chat.completions.create (non-streaming) echoes the message")
def chat_plain(client):
    r = client.chat.completions.create(model="echo", messages=user(ECHO_TEXT))
    expect(len(r.choices) == 1, f"{len(r.choices)} choices, expected 1")
    content = r.choices[0].message.content
    expect(content == ECHO_TEXT, f"content {content!r}, expected {ECHO_TEXT!r}")
    expect(r.model == "echo-real", f"model {r.model!r}, expected 'echo-real'")
    expect(r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason!r}")
    expect(r.usage is not None and r.usage.completion_tokens == len(ECHO_TEXT.split()),
           f"usage {r.usage}")
    return None


@check("chat.completions.create stream=True delivers deltas incrementally")
def chat_stream(client, chunk_delay_ms):
    started = time.monotonic()
    stream = client.chat.completions.create(model="echo", messages=user(ECHO_TEXT), stream=True)
    arrivals = []  # (seconds since request, delta text)
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append((time.monotonic() - started, choice.delta.content))
            if choice.finish_reason:
                finish = choice.finish_reason
    text = "".join(t for _, t in arrivals)
    words = len(ECHO_TEXT.split())
    expect(text == ECHO_TEXT, f"joined deltas {text!r}, expected {ECHO_TEXT!r}")
    expect(len(arrivals) == words, f"{len(arrivals)} content deltas, expected {words} (one per word)")
    expect(finish == "stop", f"finish_reason {finish!r}, expected 'stop'")
    spread = arrivals[-1][0] - arrivals[0][0]
    # The backend pauses chunk_delay_ms between chunks: (words - 1) pauses between first and last.
    # Buffering anywhere in the proxy collapses the spread towards zero.
    minimum = 0.5 * (words - 1) * chunk_delay_ms / 1000
    expect(spread >= minimum,
           f"first delta at {arrivals[0][0]*1000:.0f} ms, last at {arrivals[-1][0]*1000:.0f} ms: "
           f"spread {spread*1000:.0f} ms < {minimum*1000:.0f} ms, deltas were buffered")
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    return (f"first delta {arrivals[0][0]*1000:.0f} ms, last {arrivals[-1][0]*1000:.0f} ms, "
            f"min gap {min(gaps)*1000:.0f} ms")


@check("stream_options include_usage: final chunk has usage and no choices")
def chat_stream_usage(client):
    text = "one two three four"
    stream = client.chat.completions.create(
        model="echo", messages=user(text), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    expect(chunks, "no chunks")
    last = chunks[-1]
    expect(last.choices == [], f"last chunk choices {last.choices}, expected []")
    expect(last.usage is not None, f"last chunk has no usage: {last.model_dump_json()}")
    got = (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens)
    expect(got == (4, 4, 8), f"usage (prompt, completion, total) {got}, expected (4, 4, 8)")
    others = [c for c in chunks[:-1] if c.usage is not None]
    expect(not others, f"{len(others)} earlier chunks carry usage")
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expect(joined == text, f"joined deltas {joined!r}, expected {text!r}")
    return f"usage {got}"


@check("embeddings.create returns the embedding")
def embeddings(client):
    # The SDK asks for base64 unless encoding_format is given; the backend answers with floats
    # either way, and the SDK must accept both.
    for fmt in (None, "float"):
        kwargs = {} if fmt is None else {"encoding_format": fmt}
        r = client.embeddings.create(model="echo", input="hello world", **kwargs)
        expect(len(r.data) == 1, f"{len(r.data)} embeddings, expected 1")
        emb = [round(x, 6) for x in r.data[0].embedding]
        expect(emb == [0.1, 0.2, 0.3], f"encoding_format={fmt}: embedding {emb}")
        expect(r.model == "echo-real", f"model {r.model!r}, expected 'echo-real'")
    return None


@check("backend 401 raises openai.AuthenticationError")
def error_401(client):
    try:
        client.chat.completions.create(model="locked", messages=user("hi"))
    except openai.AuthenticationError as e:
        expect(e.status_code == 401, f"status {e.status_code}")
        return f"message {e.message!r}"
    except openai.APIStatusError as e:
        raise AssertionError(f"{type(e).__name__} status {e.status_code}, expected AuthenticationError 401")
    raise AssertionError("no error raised")


@check("unknown model raises openai.NotFoundError with code model_not_found")
def error_404(client):
    try:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    except openai.NotFoundError as e:
        expect(e.status_code == 404, f"status {e.status_code}")
        expect(e.code == "model_not_found", f"error code {e.code!r}, expected 'model_not_found'")
        body = e.response.json()
        expect(body.get("error", {}).get("code") == "model_not_found", f"body {body}")
        return f"message {e.message!r}"
    except openai.APIStatusError as e:
        raise AssertionError(f"{type(e).__name__} status {e.status_code}, expected NotFoundError 404")
    raise AssertionError("no error raised")


@check("oversized body raises openai.APIStatusError 413")
def error_413(client, max_body):
    big = "x" * 100_000
    expect(len(big) > max_body, "message not over the limit")
    try:
        client.chat.completions.create(model="echo", messages=user(big))
    except openai.APIStatusError as e:
        expect(e.status_code == 413, f"{type(e).__name__} status {e.status_code}, expected 413")
        body = e.response.json()
        expect(isinstance(body.get("error"), dict) and body["error"].get("message"),
               f"body is not an OpenAI-style error: {body}")
        return f"message {e.message!r}"
    raise AssertionError("no error raised")


@check("the SDK's pooled connection stays usable after a 413")
def reuse_after_413(client, max_body, rounds=50):
    # The SDK keeps connections alive. If the proxy closes the connection after a 413 without
    # saying `Connection: close`, the SDK reuses the dead connection and the next call fails with
    # APIConnectionError ("Server disconnected without sending a response") whenever the close
    # has not reached the client yet: a race, hence several rounds.
    big = "x" * (max_body + 35_000)
    failed = []
    connection_header = None
    for i in range(rounds):
        try:
            client.chat.completions.create(model="echo", messages=user(big))
            raise AssertionError(f"round {i}: no 413 for a body over the limit")
        except openai.APIStatusError as e:
            expect(e.status_code == 413, f"round {i}: status {e.status_code}, expected 413")
            connection_header = e.response.headers.get("connection")
        except openai.APIConnectionError as e:
            failed.append(f"the oversized request itself: {e.__cause__ or e!r}")
        try:
            client.models.list()
        except openai.APIConnectionError as e:
            failed.append(f"models.list: {e.__cause__ or e!r}")
    expect(not failed,
           f"{len(failed)} of {2 * rounds} requests ({rounds} oversized + {rounds} models.list, alternating) "
           f"failed with APIConnectionError, e.g. {failed[0] if failed else None}; "
           f"the 413 response's Connection header was {connection_header!r}")
    return f"{rounds} rounds, 413 Connection header {connection_header!r}"


@check("with_raw_response: streaming response is text/event-stream")
def raw_stream_content_type(client):
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=user("raw check"), stream=True)
    ctype = raw.headers.get("content-type", "")
    expect(raw.status_code == 200, f"status {raw.status_code}")
    expect(ctype.split(";")[0].strip().lower() == "text/event-stream",
           f"content-type {ctype!r}, expected text/event-stream")
    joined = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    expect(joined == "raw check", f"joined deltas {joined!r}")
    return f"content-type {ctype!r}"


@check("chat.completions.create through a discovered model asks the backend for its own name")
def chat_discovered(client):
    r = client.chat.completions.create(model="demo/tiny", messages=user("via discovery"))
    expect(r.choices[0].message.content == "via discovery", f"content {r.choices[0].message.content!r}")
    expect(r.model == "tiny", f"model {r.model!r}, expected 'tiny'")
    return None


@check("responses.create (non-streaming) echoes the input with usage")
def responses_plain(client):
    r = client.responses.create(model="echo", input=ECHO_TEXT)
    expect(r.output_text == ECHO_TEXT, f"output_text {r.output_text!r}, expected {ECHO_TEXT!r}")
    expect(r.model == "echo-real", f"model {r.model!r}, expected 'echo-real'")
    words = len(ECHO_TEXT.split())
    got = (r.usage.input_tokens, r.usage.output_tokens) if r.usage else None
    expect(got == (words, words), f"usage (input, output) {got}, expected ({words}, {words})")
    return f"usage {got}"


@check("responses.create stream=True delivers typed events incrementally")
def responses_stream(client, chunk_delay_ms):
    started = time.monotonic()
    stream = client.responses.create(model="echo", input=ECHO_TEXT, stream=True)
    kinds, arrivals, completed = [], [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            arrivals.append((time.monotonic() - started, event.delta))
        if event.type == "response.completed":
            completed = event.response
    expect(kinds[0] == "response.created", f"first event {kinds[0]!r}")
    expect(kinds[-1] == "response.completed", f"last event {kinds[-1]!r}")
    text = "".join(d for _, d in arrivals)
    expect(text == ECHO_TEXT, f"joined deltas {text!r}")
    expect(completed is not None and completed.output_text == ECHO_TEXT, "completed response lacks the text")
    words = len(ECHO_TEXT.split())
    expect(completed.usage is not None and completed.usage.output_tokens == words,
           f"completed usage {completed.usage}")
    spread = arrivals[-1][0] - arrivals[0][0]
    minimum = 0.5 * (words - 1) * chunk_delay_ms / 1000
    expect(spread >= minimum, f"delta spread {spread*1000:.0f} ms < {minimum*1000:.0f} ms: buffered")
    return f"{len(kinds)} events, delta spread {spread*1000:.0f} ms"


@check("responses.retrieve/input_items.list/delete routed by X-Model-Id or ?model=")
def responses_stored(client):
    r = client.responses.retrieve("resp_42", extra_headers={"X-Model-Id": "echo"})
    expect(r.id == "resp_42", f"id {r.id!r}")
    expect(r.model == "echo-real", f"the backend saw model {r.model!r}, expected 'echo-real'")
    items = client.responses.input_items.list("resp_42", extra_query={"model": "echo"})
    expect(len(items.data) == 1, f"{len(items.data)} input items, expected 1")
    client.responses.delete("resp_42", extra_headers={"X-Model-Id": "echo"})
    return None


@check("responses.retrieve without a model raises BadRequestError missing_required_parameter")
def responses_no_model(client):
    try:
        client.responses.retrieve("resp_42")
    except openai.BadRequestError as e:
        expect(e.code == "missing_required_parameter", f"code {e.code!r}")
        expect("X-Model-Id" in e.message and "?model=" in e.message, f"message {e.message!r}")
        return f"message {e.message!r}"
    raise AssertionError("no error raised")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base-url", required=True, help="proxy base URL, e.g. http://127.0.0.1:3333/v1")
    ap.add_argument("--chunk-delay-ms", type=int, default=100)
    ap.add_argument("--max-body", type=int, default=65536)
    args = ap.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key="anything", max_retries=0, timeout=15.0)
    print(f"openai {openai.__version__} -> {args.base_url}", flush=True)
    models_discovered(client)
    models_list(client)
    chat_plain(client)
    chat_stream(client, args.chunk_delay_ms)
    chat_stream_usage(client)
    embeddings(client)
    error_401(client)
    error_404(client)
    raw_stream_content_type(client)
    chat_discovered(client)
    responses_plain(client)
    responses_stream(client, args.chunk_delay_ms)
    responses_stored(client)
    responses_no_model(client)
    # Last: a proxy that mishandles the connection after a 413 must not make other checks flaky.
    error_413(client, args.max_body)
    reuse_after_413(client, args.max_body)

    total = 16
    if FAILURES:
        print(f"{len(FAILURES)} of {total} checks FAILED: {', '.join(FAILURES)}", flush=True)
        return 1
    print(f"all {total} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
