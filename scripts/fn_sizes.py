#!/usr/bin/env python3
"""Fails when a function under src/ is longer than 100 lines or takes more than 5 parameters.

Test code is exempt: everything from a file's first `#[cfg(test)]` on (test modules sit at the
end of a file) and whole files that are only included as a test module (`fuzz_tests.rs`,
`*_tests.rs`). `self` is not counted as a parameter. Lines are counted from the `fn` line to
the closing brace. Run from the repository root: `python3 scripts/fn_sizes.py` (exit 1 on a
finding); `--all N` lists every function over N lines instead, without failing."""
import os
import re
import sys

SRC = "src"
MAX_LINES = 100
MAX_PARAMS = 5


def blank_literals(text):
    """The text with comments, strings and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 20]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def params(sig):
    """Number of parameters in a `fn name<…>(…)` signature, `self` not counted."""
    start = sig.find("(")
    depth, cur, items = 0, "", []
    for ch in sig[start + 1:]:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    items = [p.strip() for p in items if p.strip()]
    return len([p for p in items if not re.match(r"^(&\s*('\w+\s+)?)?(mut\s+)?self\b", p)])


FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def functions(path):
    with open(path) as f:
        text = f.read()
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    clean = blank_literals(text)
    for m in FN.finditer(clean):
        # the body's opening brace, after the signature (`;` first means no body)
        j = m.end()
        depth = 0
        while j < len(clean):
            ch = clean[j]
            if ch in "(<[":
                depth += 1
            elif ch in ")>]":
                depth -= 1
            elif ch == ";" and depth <= 0:
                j = -1
                break
            elif ch == "{" and depth <= 0:
                break
            j += 1
        if j < 0 or j >= len(clean):
            continue
        sig = clean[m.start():j]
        k, level = j, 0
        while k < len(clean):
            if clean[k] == "{":
                level += 1
            elif clean[k] == "}":
                level -= 1
                if level == 0:
                    break
            k += 1
        first = clean.count("\n", 0, m.start()) + 1
        last = clean.count("\n", 0, k) + 1
        yield m.group(1), first, last - first + 1, params(sig)


def main():
    list_over = None
    if len(sys.argv) == 3 and sys.argv[1] == "--all":
        list_over = int(sys.argv[2])
    bad = 0
    for root, _, names in sorted(os.walk(SRC)):
        for n in sorted(names):
            if not n.endswith(".rs") or n == "fuzz_tests.rs" or n.endswith("_tests.rs"):
                continue
            p = os.path.join(root, n)
            for name, line, length, nparams in functions(p):
                if list_over is not None:
                    if length > list_over or nparams > MAX_PARAMS:
                        print(f"{p}:{line}: {name}: {length} lines, {nparams} parameters")
                elif length > MAX_LINES or nparams > MAX_PARAMS:
                    bad += 1
                    print(f"{p}:{line}: {name}: {length} lines, {nparams} parameters "
                          f"(at most {MAX_LINES} lines and {MAX_PARAMS} parameters)")
    if bad:
        return 1
    if list_over is None:
        print(f"no function in {SRC}/ over {MAX_LINES} lines or {MAX_PARAMS} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
