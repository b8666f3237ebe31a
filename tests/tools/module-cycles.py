#!/usr/bin/env python3
"""Finds import cycles between the modules of one Rust crate.

Usage: module-cycles.py CRATE_SRC_DIR    (e.g. proxy/src)

Reads every .rs file under the directory, takes the paths it refers to through
`crate::...` and `super::...` (and, in a folder's mod.rs, through its own child
modules), and builds two kinds of graph:

- between the top-level modules (src/foo.rs or src/foo/mod.rs is `foo`);
- inside each module folder, between its submodules (src/foo/bar.rs is `bar`;
  references to the folder's own mod.rs are left out: a parent and its children
  are one unit).

Comments, string literals and `#[cfg(test)]` modules are ignored: doc links and
tests are not dependencies of the code. Exits 1 and prints every cycle found (one
per strongly connected component, as a path), or prints "no cycles" and exits 0.
Standard library only.
"""

import os
import re
import sys


def strip_comments_and_strings(text):
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            # Attribute strings such as #[serde(with = "crate::x")] name real paths.
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            literal = text[i + 1:j]
            out.append('"' + (literal if re.fullmatch(r"[\w:]+", literal) else "") + '"')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += len(re.match(r"'(\\.|[^\\'])'", text[i:i + 4]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_modules(code):
    out, i = [], 0
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(code, i)
        if not m:
            out.append(code[i:])
            return "".join(out)
        out.append(code[i:m.start()])
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        i = j


def module_path(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return []
    if len(rel) == 1 and rel[0] == "bin":
        return []
    return rel


def expand_use_trees(code):
    """Rewrites `a::{b, c::{d}}` groups into the flat paths `a::b`, `a::c::d`."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        paths.extend(flatten(m.group(1).replace("\n", " ")))
    return paths


def flatten(tree, prefix=""):
    tree = tree.strip()
    if not tree:
        return []
    items, depth, cur = [], 0, ""
    for ch in tree:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "{" in item:
            head, rest = item.split("{", 1)
            out.extend(flatten(rest.rsplit("}", 1)[0], prefix + head.strip()))
        else:
            out.append(prefix + re.split(r"\s+as\s+", item)[0].strip())
    return out


def references(code, me, children):
    """Absolute module paths (lists) this file refers to."""
    found = []
    texts = expand_use_trees(code) + re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code)
    # Bare child paths in a mod.rs: `use pool::X`, `pool::f()`.
    for p in texts + re.findall(r"\b\w+(?:::\w+)+", code):
        segs = [s for s in p.split("::") if s]
        if not segs:
            continue
        if segs[0] == "crate":
            found.append(segs[1:])
        elif segs[0] in ("super", "self"):
            base = list(me)
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            found.append(base + segs)
        elif segs[0] in children:
            found.append(list(me) + segs)
    return found


def find_cycles(graph):
    """Tarjan's SCCs; returns one cycle path per non-trivial component."""
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sccs:
        members = set(comp)
        start = comp[0]
        # Shortest path back to start, inside the component (BFS).
        prev, queue, seen = {}, [start], {start}
        found = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph.get(v, ())):
                if w == start:
                    found = v
                    break
                if w in members and w not in seen:
                    seen.add(w)
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        cycles.append((comp, path + [start]))
    return cycles


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src = sys.argv[1]
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[path] = module_path(src, path)
    modules = {tuple(m) for m in files.values()}
    top = {m[0] for m in modules if m}
    edges = {}  # graph name -> {node -> set(node)}

    def add(graph, a, b):
        if a != b:
            edges.setdefault(graph, {}).setdefault(a, set()).add(b)

    for path, me in sorted(files.items()):
        if not me:
            continue  # the crate root declares modules; it is no module itself
        with open(path, encoding="utf-8") as f:
            code = strip_test_modules(strip_comments_and_strings(f.read()))
        is_folder_root = os.path.basename(path) == "mod.rs"
        children = {m[len(me)] for m in modules if len(m) > len(me) and list(m[:len(me)]) == me} if is_folder_root else set()
        for ref in references(code, me, children):
            if not ref or ref[0] not in top:
                continue
            add("crate", me[0], ref[0])
            # Inside a folder: between sibling submodules at each level.
            for depth in range(1, min(len(me), len(ref))):
                if me[:depth] != ref[:depth]:
                    break
                if len(me) > depth and len(ref) > depth and tuple(ref[:depth + 1]) in modules:
                    add("::".join(me[:depth]), me[depth], ref[depth])
    cycles = []
    for graph in sorted(edges):
        for comp, path in find_cycles(edges[graph]):
            cycles.append((graph, comp, path))
    if not cycles:
        print(f"{src}: no cycles ({len(top)} top-level modules, "
              f"{len(edges) - ('crate' in edges)} module folders with submodule edges)")
        return 0
    for graph, comp, path in cycles:
        where = "between top-level modules" if graph == "crate" else f"inside {graph}/"
        print(f"cycle {where}: {' -> '.join(path)}   (component: {', '.join(comp)})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
