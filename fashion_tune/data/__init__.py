"""Fashion-MNIST: find and verify the official files (`datafiles`), then split, batch and augment
them (`splits`).

`from fashion_tune.data import load_fashion_mnist, make_splits` works (names resolved lazily, so
importing `fashion_tune.data.datafiles` alone does not import torch's data pipeline).
"""

from __future__ import annotations

from importlib import import_module

_MODULES = ("fashion_tune.data.datafiles", "fashion_tune.data.splits")


def __getattr__(name: str):
    for module in _MODULES if not name.startswith("_") else ():
        if hasattr(import_module(module), name):
            return getattr(import_module(module), name)
    raise AttributeError(f"module 'fashion_tune.data' has no attribute {name!r}")
