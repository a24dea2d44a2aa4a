"""Search space files, parsed and validated into an immutable `SearchSpace`: the file and its
parameters (`space`, `params`) and the strategy sections (`strategies`: objectives, searcher,
scheduler, where a sweep starts from). Parsing reads no other experiment's files; a sweep
resolves `start_from:`/`warm_start:` once as it starts (`fashion_tune.search.sources`).

`from fashion_tune.spaces import load_space, parse_space, SearchSpace` works (resolved lazily).
"""

from __future__ import annotations

from importlib import import_module


def __getattr__(name: str):
    if not name.startswith("_") and hasattr(import_module("fashion_tune.spaces.space"), name):
        return getattr(import_module("fashion_tune.spaces.space"), name)
    raise AttributeError(f"module 'fashion_tune.spaces' has no attribute {name!r}")
