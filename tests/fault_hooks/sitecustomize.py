"""Fault injection for tests/test_faults.py: on its PYTHONPATH, every process (the sweep driver and
Ray's workers) runs this at start-up.

FASHION_TUNE_TEST_RAISE="LR:MARKER": the first trial whose config has lr == LR raises in
`fashion_tune.train.fit` and creates the file MARKER; later attempts (MARKER exists) train normally.
"""

import importlib.abc
import importlib.util
import os
import sys

_SPEC = os.environ.get("FASHION_TUNE_TEST_RAISE")


def _wrap(module):
    lr, marker = _SPEC.split(":", 1)
    real_fit = module.fit

    def fit(kind, config, *args, **kwargs):
        if abs(float(config.get("lr", -1)) - float(lr)) < 1e-12 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("fault injected by tests/fault_hooks")
        return real_fit(kind, config, *args, **kwargs)

    module.fit = fit


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "fashion_tune.train":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            _wrap(module)

        loader.exec_module = exec_module
        return spec


if _SPEC:
    sys.meta_path.insert(0, _Finder())
