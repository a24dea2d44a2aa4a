"""Old module paths of the flat layout (0.1), kept working: `import fashion_tune.train` gives
`fashion_tune.training.loop`, with a DeprecationWarning naming the new path. Pickles made before the
move (a sweep's searcher state, Ray's experiment state) load through the same aliases.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {  # old module -> where it lives now
    "errors": "util.errors",
    "files": "util.files",
    "yaml_loader": "util.yaml_loader",
    "provenance": "util.provenance",
    "datafiles": "data.datafiles",
    "sampling": "models.sampling",
    "prior": "models.prior",
    "training_config": "training.settings",
    "config": "training.config",
    "schedules": "training.schedules",
    "kinds": "training.kinds",
    "tasks": "training.tasks",
    "scoring": "training.scoring",
    "checkpoint": "training.checkpoint",
    "train": "training.loop",
    "runs": "training.runs",
    "device": "training.device",
    "space_params": "spaces.params",
    "space_strategies": "spaces.strategies",
    "experiment": "store.experiment",
    "results": "store.results",
    "promoted": "store.promoted",
    "searcher": "search.searcher",
    "study": "search.study",
    "schedulers": "search.schedulers",
    "strategies": "search.strategies",
    "callbacks": "search.callbacks",
    "retention": "search.retention",
    "trainable": "search.trainable",
    "sweep": "search.sweep",
    "sweep_info": "search.sweep_info",
    "cluster": "search.cluster",
    "ray_compat": "search.ray_compat",
    "grading": "evaluation.grading",
    "judging": "evaluation.judging",
    "interpolation": "evaluation.interpolation",
    "rubric": "evaluation.rubric",
    "likelihood": "evaluation.likelihood",
    "predict": "evaluation.predict",
    "promote": "promotion.promote",
    "analysis": "reports.analysis",
    "tradeoffs": "reports.tradeoffs",
    "dashboard": "reports.dashboard",
    "report": "reports.grading_report",
    "report_markdown": "reports.markdown",
    "pictures": "reports.pictures",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and hands back the module at its new one (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.partition(".")[2]
        if fullname.startswith("fashion_tune.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module) -> None:
        new = f"fashion_tune.{MOVED[module.__name__.partition('.')[2]]}"
        warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
