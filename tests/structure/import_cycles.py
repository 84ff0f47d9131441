#!/usr/bin/env python3
"""The house has no import circle: builds the graph of `use crate::` / `super::` / `self::` paths
(and inline `crate::a::b` paths) between the modules of src/, and fails naming every circle it
finds. Each import is lifted to the two siblings under the modules' closest common parent (an
import of `server/settings` from `config/serve` is one of `server` from `config`), so a circle is
one between siblings, folders counting as a whole; a folder's root and its own children are one
module seen from outside and are not a circle. Test modules (`#[cfg(test)] mod tests`) are left
out. Usage: import_cycles.py [SRC_DIR]"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "src")
modules = {}
for folder, _, names in os.walk(root):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            modules[tuple(parts)] = path


def module_of(path):
    """The longest prefix of an item path that names a module file."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


edges = {m: set() for m in modules}
for me, path in modules.items():
    text = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    targets = []
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", text):
        kind, rest = m.group(1), m.group(2).split("::")[1:]
        if kind == "crate":
            targets.append(rest)
        elif kind == "self":
            targets.append(list(me) + rest)
        else:
            up = list(me[:-1])
            while rest and rest[0] == "super":
                up, rest = up[:-1], rest[1:]
            targets.append(up + rest)
    for m in re.finditer(r"\b(crate|super)::\{([^}]*)\}", text):
        base = [] if m.group(1) == "crate" else list(me[:-1])
        for item in m.group(2).split(","):
            head = item.strip().split("::")[0].split(" ")[0]
            if head:
                targets.append(base + [head])
    if os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs"):
        # A folder's root names its children by plain paths (`errors::ApiError`).
        children = {m[-1] for m in modules if len(m) == len(me) + 1 and m[: len(me)] == me}
        for m in re.finditer(r"(?<![\w:])(\w+)::(\w+)", text):
            if m.group(1) in children:
                targets.append(list(me) + [m.group(1), m.group(2)])
    for t in targets:
        target = module_of(t)
        if target is None:
            continue
        common = 0
        while common < min(len(me), len(target)) and me[common] == target[common]:
            common += 1
        if common == len(me) or common == len(target):
            continue  # a folder's root and its own children
        a, b = me[: common + 1], target[: common + 1]
        edges.setdefault(a, set()).add(b)
        edges.setdefault(b, set())

# Tarjan's strongly connected components.
sys.setrecursionlimit(10000)
index, low, stack, on_stack, circles = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        if len(component) > 1:
            circles.append(component)


for v in list(edges):
    if v not in index:
        visit(v)
for c in circles:
    print("import circle: " + " <-> ".join("/".join(m) or "lib" for m in sorted(c)))
print(f"{len(modules)} modules, {sum(map(len, edges.values()))} sibling imports, {len(circles)} import circles")
sys.exit(1 if circles else 0)
