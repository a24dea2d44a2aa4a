"""The package's shape in figures: folders, modules, lines, the longest function and parameter list,
and the import cycles between modules.

    python benchmarks/code_shape.py                 # this checkout's fashion_tune/
    python benchmarks/code_shape.py --root DIR      # another checkout's (e.g. a `git worktree` of an old commit)

Imports are read from the source with `ast` (nothing is imported), function-local ones included;
imports under `if TYPE_CHECKING:` are left out (they never run). The same graph is what
tests/test_layers.py checks.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from import_graph import cycles, import_graph  # noqa: E402


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parameter_count(node: ast.FunctionDef) -> int:
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs] + [p.arg for p in (a.vararg, a.kwarg) if p]
    return len([n for n in names if n not in ("self", "cls")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(HERE.parent), help="a checkout holding fashion_tune/")
    args = parser.parse_args()
    package = Path(args.root) / "fashion_tune"
    files = sorted(package.rglob("*.py"))
    folders = sorted({f.parent.relative_to(package.parent) for f in files})
    longest_fn = longest_params = (0, "")
    total = 0
    for f in files:
        text = f.read_text()
        total += len(text.splitlines())
        tree = ast.parse(text)
        name = f.relative_to(package.parent).as_posix()
        for fn in functions(tree):
            length = fn.end_lineno - fn.lineno + 1
            longest_fn = max(longest_fn, (length, f"{name}:{fn.name}"))
            longest_params = max(longest_params, (parameter_count(fn), f"{name}:{fn.name}"))
    graph = import_graph(package)
    found = cycles(graph)
    print(f"folders: {len(folders)} ({', '.join(str(d) for d in folders)})")
    print(f"modules: {len(files)} ({total:,} lines)")
    print(f"longest function: {longest_fn[0]} lines ({longest_fn[1]})")
    print(f"longest parameter list: {longest_params[0]} ({longest_params[1]})")
    print(f"import cycles: {len(found)}" + "".join(f"\n  {len(c)} modules importing each other: {', '.join(c)}" for c in found))


if __name__ == "__main__":
    main()
