"""fashion-tune: hyperparameter search for Fashion-MNIST VAEs and CNNs with Ray Tune and Optuna.

The folders are the layers data flows through; each imports only from the ones above it in this
list (tests/test_layers.py holds the code to it):

- `util`: errors, atomic file writes, YAML, provenance (imports nothing of ours)
- `data`: find and verify the official Fashion-MNIST files; splits, batches, augmentation
- `models`: the networks (`vae`, `cnn`), the VAE's class prior and sampling
- `training`: settings and configs, one `Kind` per model, the loop, scoring, checkpoints, device
- `spaces`: search space files parsed into an immutable `SearchSpace` (reads no other experiment)
- `store`: the experiment directory (local or a URI), its results, `best_models/`
- `search`: the sweep on Ray Tune + Optuna: searchers, schedulers, the trainable, resume, clusters
- `evaluation`: grading promoted models: the judge, the rubric, the IWAE bound; `predict`
- `promotion`: champion against challenger into `best_models/`
- `reports`: a sweep's analysis and pictures, the dashboard, the graded models' report
- `cli`: `fashion-tune` and its subcommands

Modules moved here from the flat layout of 0.1 (`fashion_tune.train`, `fashion_tune.analysis`, ...)
still import from their old paths, with a DeprecationWarning naming the new one (`_moved`).
"""

from fashion_tune import _moved

__version__ = "0.1.0"

_moved.install()
