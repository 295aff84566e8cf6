"""Figures about the package's shape: sans-I/O share, largest module, import cycles.

Run: python tools/layout.py [--check] [PACKAGE_DIR]

A module counts as sans-I/O when neither it nor any package module it imports
(transitively, including imports under TYPE_CHECKING-free function bodies)
imports asyncio, socket or zmq.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

IO_MODULES = {"asyncio", "socket", "zmq"}
ROOT = Path(__file__).resolve().parent.parent / "conec_actors"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes inside `if TYPE_CHECKING:` blocks (they are not runtime imports)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    skip.add(id(sub))
    return skip


def imports(
    path: Path, name: str, is_pkg: bool, typing_too: bool = False
) -> tuple[set[str], set[str]]:
    """(external top-level modules, package modules) imported by `path`: at runtime,
    or also under `if TYPE_CHECKING:` when `typing_too`."""
    tree = ast.parse(path.read_text())
    skip = set() if typing_too else _type_checking_nodes(tree)
    external: set[str] = set()
    internal: set[str] = set()
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("conec_actors"):
                    internal.add(alias.name)
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if mod.startswith("conec_actors"):
                    internal.add(mod)
                else:
                    external.add(mod.split(".")[0])
                continue
            base = package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                internal.add(mod)
            for alias in node.names:  # `from . import wire` names a module
                internal.add(f"{mod}.{alias.name}")
    return external, internal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless the targets hold (>= 45%% sans-I/O "
                        "transitively, every module under 600 lines, no cycle)")
    parser.add_argument("root", nargs="?", type=Path, default=ROOT,
                        help="the package directory (default: this checkout's)")
    args = parser.parse_args()
    root = args.root.resolve()
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    lines = {m: len(p.read_text().splitlines()) for m, p in files.items()}
    ext: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = {}
    typed_deps: dict[str, set[str]] = {}

    def resolve(found: set[str], m: str) -> set[str]:
        # `from .errors import X` names a module's member: the module is the dependency.
        found = {d if d in files else d.rpartition(".")[0] for d in found}
        return {d for d in found if d in files and d != m}

    for m, p in files.items():
        e, i = imports(p, m, p.name == "__init__.py")
        ext[m] = e
        deps[m] = resolve(i, m)
        typed_deps[m] = resolve(imports(p, m, p.name == "__init__.py", True)[1], m)

    def closure(m: str, graph: dict[str, set[str]] = deps) -> set[str]:
        seen, todo = set(), [m]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(graph[x])
        return seen

    direct = {m for m in files if not ext[m] & IO_MODULES}
    transitive = {m for m in files if all(not ext[d] & IO_MODULES for d in closure(m))}
    total = sum(lines.values())
    share_direct = sum(lines[m] for m in direct) / total
    share_trans = sum(lines[m] for m in transitive) / total
    largest = max(lines, key=lambda m: lines[m])

    # Cycles in the import graph, type-only imports included (a cycle hidden behind
    # TYPE_CHECKING is still two modules that know each other). A package's `__init__`
    # re-exporting its own submodules is not a cycle.
    cycles: list[set[str]] = []
    for m in files:
        for d in typed_deps[m]:
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue
            back = closure(d, typed_deps) - {d}
            if m in back and not any(m in c and d in c for c in cycles):
                cycles.append({m, d})
    print(f"lines: {total} in {len(files)} modules")
    print(f"sans-I/O (no asyncio/socket/zmq, directly): {share_direct:.1%}")
    print(f"sans-I/O (no asyncio/socket/zmq, transitively): {share_trans:.1%}")
    print(f"largest module: {largest} ({lines[largest]} lines)")
    named = "; ".join(" <-> ".join(sorted(c)) for c in cycles)
    print("import cycles:", named or "none")
    if args.check:
        ok = share_trans >= 0.45 and lines[largest] < 600 and not cycles
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
