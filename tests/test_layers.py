"""The package's folders are its layers: a module imports only from its own folder or the layers
below it, and no import cycle exists (imports read with `ast`, function-local ones included)."""

from pathlib import Path

import pytest

from import_graph import cycles, import_graph

PACKAGE = Path(__file__).resolve().parent.parent / "fashion_tune"
# Bottom to top. Folders on one line are side by side: neither imports the other.
LAYERS = [
    ("util", "_moved"),
    ("data",),
    ("models",),
    ("training",),
    ("spaces",),
    ("store",),
    ("search", "evaluation"),
    ("promotion",),
    ("reports",),
    ("cli",),
    ("__main__",),
]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}


def folder(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in sorted(graph.items()):
        if module == "fashion_tune":
            continue  # the package's __init__ installs the old paths' aliases (_moved), nothing else
        for dep in sorted(deps):
            here, there = folder(module), folder(dep)
            if here != there and RANK[there] >= RANK[here]:
                found.append(f"{module} imports {dep} ({there} is not below {here})")
    return found


def test_every_folder_has_a_layer():
    folders = {folder(m) for m in import_graph(PACKAGE) if m != "fashion_tune"}
    assert folders == set(RANK), f"place these in LAYERS: {sorted(folders - set(RANK))}"


def test_imports_only_go_down_the_layers():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_cycles():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_check_sees_an_upward_import_a_local_one_and_a_cycle(tmp_path):
    """The checks above fail when they should: an import from a layer above, one inside a function,
    a cycle between two modules; an import under TYPE_CHECKING is not one."""
    package = tmp_path / "fashion_tune"
    for name in ("util", "search", "reports"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "util" / "files.py").write_text("def f():\n    from fashion_tune.reports import page\n")
    (package / "reports" / "page.py").write_text("from fashion_tune.util.files import f\n")
    (package / "search" / "a.py").write_text("from fashion_tune.search import b\n")
    (package / "search" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fashion_tune.reports.page import f\n"
        "import fashion_tune.search.a\n")
    graph = import_graph(package)
    assert upward_imports(graph) == ["fashion_tune.util.files imports fashion_tune.reports.page "
                                     "(reports is not below util)"]
    assert cycles(graph) == [["fashion_tune.reports.page", "fashion_tune.util.files"],
                             ["fashion_tune.search.a", "fashion_tune.search.b"]]


@pytest.mark.parametrize("old, new", [("train", "training.loop"), ("analysis", "reports.analysis"),
                                      ("study", "search.study"), ("sampling", "models.sampling")])
def test_old_module_paths_import_the_moved_module_with_a_warning(old, new):
    import importlib
    import sys

    sys.modules.pop(f"fashion_tune.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"fashion_tune.{old} moved to fashion_tune.{new}"):
        module = importlib.import_module(f"fashion_tune.{old}")
    assert module is importlib.import_module(f"fashion_tune.{new}")


def test_the_public_names_of_the_old_data_and_spaces_modules_still_import():
    from fashion_tune.data import load_fashion_mnist, make_splits
    from fashion_tune.data.datafiles import load_fashion_mnist as loader
    from fashion_tune.data.splits import make_splits as splitter
    from fashion_tune.spaces import SearchSpace, load_space
    from fashion_tune.spaces.space import SearchSpace as space_class, load_space as loader_of_spaces

    assert (load_fashion_mnist, make_splits, SearchSpace, load_space) == (loader, splitter, space_class,
                                                                         loader_of_spaces)
    with pytest.raises(ImportError, match="cannot import name .nothing."):
        from fashion_tune.data import nothing  # noqa: F401


def test_the_readme_python_api_imports():
    """Every import line of the README's Python API section works as written."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    imports = [line.split("#")[0].rstrip() for line in block.splitlines() if line.startswith("from ")]
    assert len(imports) >= 10, block
    for line in imports:
        exec(line, {})
