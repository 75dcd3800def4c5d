#!/usr/bin/env python3
"""Fails when files under src/ import each other in a circle.

Reads every `crate::…` and `super::…` path outside `#[cfg(test)]` blocks, resolves it to the file
that defines the module, and reports each strongly connected component of more than one file.
Run from the repository root: `python3 scripts/import_graph.py` (exit 1 on a circle)."""
import os
import re
import sys

SRC = "src"


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def files():
    out = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                out[module_of(p)] = p
    return out


def strip_tests(text):
    # Drop everything from the first `#[cfg(test)]` item on: test modules sit at the end of a file.
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")


def targets(mod, text, mods, reexports):
    refs = []
    for m in GROUP.finditer(text):
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].split("::")
            if item and item[0] and item[0] != "self":
                refs.append((m.group(1), m.group(2) + "::" + "::".join(item)))
            elif item and item[0] == "self":
                refs.append((m.group(1), m.group(2)))
    for m in PATH.finditer(text):
        refs.append((m.group(1), m.group(2)))
    out = set()
    for root, tail in refs:
        parts = [p for p in tail.split("::") if p]
        base = {"crate": (), "self": mod}.get(root, mod[:-1])
        full = base + tuple(parts)
        # the longest prefix that names a file's module
        for k in range(len(full), 0, -1):
            if full[:k] in mods:
                hit = full[:k]
                # `crate::config::Secret` names the child that `config/mod.rs` re-exports it from.
                if k < len(full):
                    hit = reexports.get(hit, {}).get(full[k], hit)
                if hit != mod:
                    out.add(hit)
                break
    return out


def read_graph(mods):
    reexports = {}
    for mod, path in mods.items():
        with open(path) as f:
            text = strip_comments(f.read())
        for m in re.finditer(r"pub(?:\([a-z]+\))?\s+use\s+(?:self::)?([a-z_][a-z0-9_]*)::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", text):
            child = mod + (m.group(1),)
            if child in mods:
                for name in m.group(2).strip("{}").split(","):
                    name = name.strip().split(" as ")[-1].strip()
                    if name:
                        reexports.setdefault(mod, {})[name] = child
    graph = {}
    for mod, path in mods.items():
        with open(path) as f:
            text = strip_tests(strip_comments(f.read()))
        # `super` in a/b.rs (and in a/mod.rs's parent's terms) means the parent module.
        graph[mod] = targets(mod, text, mods, reexports)
    return graph


def sccs(graph):
    # Tarjan's strongly connected components
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def main():
    mods = files()
    graph = read_graph(mods)
    bad = 0
    # Files: a child using its parent's items is an edge, a parent declaring `mod child;` is not.
    for c in sccs(graph):
        if len(c) > 1:
            bad += 1
            print("file circle: " + " <-> ".join(mods[m] for m in sorted(c)))
    # Layers: the top-level modules (config, policy, auth, …) must form no circle either, whichever
    # files carry the edges.
    top = {}
    for v, ws in graph.items():
        for w in ws:
            if v[:1] != w[:1] and v and w:
                top.setdefault(v[0], set()).add(w[0])
    for c in sccs(top):
        if len(c) > 1:
            bad += 1
            print("module circle: " + " <-> ".join(sorted(c)))
    if bad:
        return 1
    print(f"no import circle among {len(mods)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
