#!/usr/bin/env python3
"""Claude Code (`claude -p`) against a running modelmux, through a translated OpenAI-only backend
(see scripts/conformance.sh).

Expects the modelmux of anthropic_conformance.py, with the client key `sk-mm-claude-code` (name
"claude-code") and the endpoint chat-m (alias "claude-*") in front of anthropic_mock.py --mode
openai. Claude Code runs once with ANTHROPIC_MODEL=chat-m and once with its own claude-… ids. The mock
scripts the task: asked to "create the file PATH", it answers with a Bash tool call that writes
the file; once the tool result is back, with the final text. Claude Code runs offline, with a
fresh HOME, telemetry, auto-update and nonessential traffic off.

Prints one PASS/FAIL line per check; exits 1 if any check fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

KEY = "sk-mm-claude-code"
FINAL_TEXT = "Done: the file is written."


def fetch(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def ledger(path, key):
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in (json.loads(x) for x in f if x.strip()) if line.get("key") == key]
    except FileNotFoundError:
        return []


def run(args, label, env_model):
    """One `claude -p` task; returns a list of failure messages."""
    failures = []
    fetch(args.chat_mock + "/__reset", "POST")
    before = len(ledger(args.usage_log, "claude-code"))
    with tempfile.TemporaryDirectory(prefix="modelmux-claude-") as tmp:
        home, work = os.path.join(tmp, "home"), os.path.join(tmp, "work")
        os.makedirs(home)
        os.makedirs(work)
        target = os.path.join(work, "hello.txt")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "ANTHROPIC_BASE_URL": args.base_url,
            "ANTHROPIC_API_KEY": KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_BUG_COMMAND": "1",
        }
        env.update(env_model)
        started = time.monotonic()
        try:
            p = subprocess.run(
                [args.claude, "-p", f"Please create the file {target} now.", "--allowedTools", "Bash"],
                cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return [f"{label}: claude -p did not finish within 120 s"], None
        took = time.monotonic() - started
        out = p.stdout.strip()
        if p.returncode != 0:
            failures.append(f"{label}: exit {p.returncode}; stdout {out!r}; stderr {p.stderr.strip()[-600:]!r}")
        if out != FINAL_TEXT:
            failures.append(f"{label}: printed {out!r}, expected {FINAL_TEXT!r}")
        if not os.path.exists(target):
            failures.append(f"{label}: {target} was not created")
        else:
            with open(target, encoding="utf-8") as f:
                content = f.read()
            if content != "modelmux-was-here\n":
                failures.append(f"{label}: {target} holds {content!r}")
    got = fetch(args.chat_mock + "/__requests")
    chats = [r for r in got if r["path"] == "/v1/chat/completions"]
    paths = sorted({r["path"] for r in got})
    if paths != ["/v1/chat/completions"]:
        failures.append(f"{label}: the OpenAI-only backend got requests on {paths}")
    if len(chats) != 2:
        failures.append(f"{label}: {len(chats)} chat completions reached the backend, expected 2 (tool call, answer)")
    else:
        first, second = chats[0]["body"], chats[1]["body"]
        names = [t["function"]["name"] for t in first.get("tools") or []]
        if "Bash" not in names:
            failures.append(f"{label}: Bash not among the tools sent: {names}")
        tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
        if [m.get("tool_call_id") for m in tool_msgs] != ["call_bash_1"]:
            failures.append(f"{label}: second request's tool messages {tool_msgs}")
        for r in chats:
            leaked = [h for h in r["headers"] if h.startswith("anthropic-") or h == "x-api-key"]
            if leaked or KEY in json.dumps(r["headers"]):
                failures.append(f"{label}: client headers reached the chat backend: {leaked}")
    deadline = time.monotonic() + 5
    lines = []
    while time.monotonic() < deadline:
        lines = ledger(args.usage_log, "claude-code")[before:]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    summary = [(x["model"], x["path"], x["status"], x["prompt_tokens"], x["completion_tokens"], x["estimated"],
                x["outcome"], x.get("end_user"), x.get("session")) for x in lines]
    model = env_model.get("ANTHROPIC_MODEL", "chat-m")
    # Claude Code's metadata.user_id (the chat backend gets it as `user`) names its device and
    # session: the device is the ledger's end user, the session (x-claude-code-session-id) its session.
    try:
        who = json.loads(chats[0]["body"]["user"]) if chats else {}
    except (KeyError, ValueError):
        who = {}
    device, session = who.get("device_id"), who.get("session_id")
    if not device or not session:
        failures.append(f"{label}: no device and session in the user the chat backend got: {who}")
    want = [(model, "/messages", 200, 50, 20, False, "complete", device, session),
            (model, "/messages", 200, 40, 7, False, "complete", device, session)]
    if summary != want:
        failures.append(f"{label}: ledger lines {summary}, expected {want}")
    return failures, took


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claude", required=True, help="the claude binary")
    ap.add_argument("--base-url", required=True, help="modelmux, without /v1")
    ap.add_argument("--chat-mock", required=True)
    ap.add_argument("--usage-log", required=True)
    args = ap.parse_args()
    args.claude = os.path.abspath(args.claude)  # it runs in a temporary working directory
    version = subprocess.run([args.claude, "--version"], capture_output=True, text=True,
                             env={"HOME": tempfile.gettempdir(), "PATH": os.environ.get("PATH", "")}).stdout.strip()
    print(f"claude {version} -> {args.base_url}", flush=True)
    runs = [
        ("claude -p creates a file with Bash through a translated backend (ANTHROPIC_MODEL=chat-m)",
         {"ANTHROPIC_MODEL": "chat-m", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "chat-m"}),
        ("claude -p with its own claude-… model ids, landing on chat-m by its alias claude-*", {}),
    ]
    failed = 0
    for label, env_model in runs:
        failures, took = run(args, label, env_model)
        if failures:
            failed += 1
            for f in failures:
                print(f"FAIL {f}", flush=True)
        else:
            print(f"PASS {label} [{took * 1000:.0f} ms]", flush=True)
    if failed:
        print(f"{failed} of {len(runs)} Claude Code checks FAILED", flush=True)
        return 1
    print(f"all {len(runs)} Claude Code checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
