"""The package's walkability, measured: import cycles, the longest functions, module sizes, top level.

``python scripts/check_layout.py`` prints each and exits 1 when a limit is broken (no import
cycle between dpopt modules, counting imports inside functions; no function over 80 lines;
no module over 450; at most 14 modules at the package's top level).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "dpopt"
MAX_FUNCTION, MAX_MODULE, MAX_TOP = 80, 450, 14


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every dpopt module ``path`` imports, at any depth (a lazy import still makes a cycle)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import api` names a module
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    # a package's __init__ importing its own submodules is how it re-exports them, not a cycle
    graph = {module_name(p): {m for m in imports(p, modules)
                              if not (p.name == "__init__.py" and m.startswith(module_name(p) + "."))} for p in files}
    bad = 0
    found = cycles(graph)
    print(f"import cycles: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    bad += bool(found)
    funcs = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{p.relative_to(ROOT.parent)}:{node.lineno} {node.name}"))
    funcs.sort(reverse=True)
    print(f"longest function: {funcs[0][1]} ({funcs[0][0]} lines)")
    over = [f for f in funcs if f[0] > MAX_FUNCTION]
    for n, where in over:
        print(f"  over {MAX_FUNCTION}: {where} ({n} lines)")
    bad += bool(over)
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(ROOT.parent))) for p in files), reverse=True)
    print(f"largest module: {sizes[0][1]} ({sizes[0][0]} lines)")
    big = [s for s in sizes if s[0] > MAX_MODULE]
    for n, where in big:
        print(f"  over {MAX_MODULE}: {where} ({n} lines)")
    bad += bool(big)
    top = sorted(p.name for p in ROOT.glob("*.py"))
    print(f"top-level modules: {len(top)} ({', '.join(top)})")
    print(f"packages: {', '.join(sorted(d.name for d in ROOT.iterdir() if (d / '__init__.py').exists()))}")
    bad += len(top) > MAX_TOP
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
