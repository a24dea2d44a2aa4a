"""Fault injection for tests/test_faults.py: on its PYTHONPATH, every process (the sweep driver,
Ray's workers, a promotion) runs this at start-up. Without the variables below it does nothing.

FASHION_TUNE_TEST_RAISE="LR:MARKER": the first trial whose config has lr == LR raises in
`fashion_tune.training.loop.fit` and creates the file MARKER; later attempts (MARKER exists) train normally.

FASHION_TUNE_TEST_PAUSE="POINT:MARKER": a promotion that reaches POINT creates MARKER and stops
there (sleeps) until the test kills it. POINTs: challenger, champion, metrics, history, swap,
renamed (between the two renames of the swap), swapped (after them).
"""

import importlib.abc
import importlib.util
import os
import sys
import time

_RAISE = os.environ.get("FASHION_TUNE_TEST_RAISE")
_PAUSE = os.environ.get("FASHION_TUNE_TEST_PAUSE")


def _stop_here(marker):
    open(marker, "w").close()
    while True:
        time.sleep(1)


def _wrap_train(module):
    lr, marker = _RAISE.split(":", 1)
    real_fit = module.fit

    def fit(kind, config, *args, **kwargs):
        if abs(float(config.get("lr", -1)) - float(lr)) < 1e-12 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("fault injected by tests/fault_hooks")
        return real_fit(kind, config, *args, **kwargs)

    module.fit = fit


def _before(module, name, marker, when=lambda *a, **k: True):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            _stop_here(marker)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def _after(module, name, marker, when=lambda *a, **k: True):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs):
            _stop_here(marker)
        return result

    setattr(module, name, wrapper)


def _wrap_promote(module):
    point, marker = _PAUSE.split(":", 1)
    base = os.path.basename
    if point == "challenger":
        _before(module, "validation_scores", marker)
    elif point == "champion":
        _before(module, "_score_champion", marker)
    elif point == "metrics":
        _before(module, "write_json", marker, lambda path, data: base(str(path)) == "metrics.json")
    elif point == "history":
        _after(module, "_keep_history", marker)
    elif point == "swap":
        _before(module, "swap_in", marker)
    elif point == "renamed":
        _after(module.os, "rename", marker, lambda src, dst: base(str(dst)).startswith(".old-"))
    elif point == "swapped":
        _after(module, "fsync_dir", marker, lambda path: not base(str(path)).startswith(".tmp-")
               and base(str(path)) != "history")


_WRAPPERS = {}
if _RAISE:
    _WRAPPERS["fashion_tune.training.loop"] = _wrap_train
if _PAUSE:
    _WRAPPERS["fashion_tune.promotion.promote"] = _wrap_promote


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _WRAPPERS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _WRAPPERS[name](module)

        spec.loader.exec_module = exec_module
        return spec


if _WRAPPERS:
    sys.meta_path.insert(0, _Finder())
