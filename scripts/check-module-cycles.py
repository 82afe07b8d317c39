#!/usr/bin/env python3
"""Fails when two modules of shared/src depend on each other, directly or through others.

A module's dependencies are the `crate::<module>` paths in its code (comments and its
`#[cfg(test)] mod tests` left out); every module is re-exported at the crate root, so a
path's first segment names the module. Prints each cycle's modules and their edges.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "shared", "src")


def modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs") or name == "lib.rs":
                continue
            path = os.path.join(folder, name)
            leaf = os.path.basename(folder) if name == "mod.rs" else name[:-3]
            with open(path, encoding="utf-8") as f:
                text = f.read()
            text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", " ", text, flags=re.S)
            found[leaf] = re.sub(r"//[^\n]*", "", text)
    return found


def graph(found):
    edges = {name: set() for name in found}
    for name, text in found.items():
        refs = re.findall(r"crate::(\w+)", text)
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            refs += [part.split("::")[0] for part in re.split(r"[,\s]+", group) if part]
        edges[name] |= {r for r in refs if r in found and r != name}
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph(modules())
    found = cycles(edges)
    for component in found:
        print("module cycle: " + ", ".join(component))
        for name in component:
            print(f"  {name} -> {', '.join(sorted(edges[name] & set(component)))}")
    if found:
        return 1
    print(f"check-module-cycles: {len(edges)} modules of shared/src, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
