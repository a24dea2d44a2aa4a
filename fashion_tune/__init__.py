"""fashion-tune: hyperparameter search for Fashion-MNIST VAEs and CNNs with Ray Tune and Optuna.

Where things live, in the order data flows through them:

- data: `datafiles` (find and verify the official files, class names), `data` (splits, batches,
  augmentation)
- models: `models/vae.py`, `models/cnn.py` (the networks only); `kinds` (one `Kind` record per
  model: its configs, task, metrics and scoring); `training_config` (typed training settings) and
  `config` (flat config dicts as users write them); `schedules` (the VAE's beta schedule)
- training: `train` (the loop), `tasks` (what differs per model), `scoring` (validation and test
  numbers, shared with promotion and grading), `checkpoint`, `runs` (`fashion-tune train`'s files),
  `device`
- sweeps: `spaces`, `space_params`, `space_strategies` (search space files), `strategies`,
  `searcher`, `sweep`, `retention`, `cluster`, `analysis`, `tradeoffs`
- promotion: `promote` (champion vs challenger), `promoted` (the `best_models/` directory)
- grading: `grading` (runs it all), `judging`, `interpolation`, `rubric`, `likelihood`,
  `sampling`; `report`, `report_markdown`, `pictures`; `predict`
- shared: `files` (atomic writes, JSON, JSON lines, numbers as text), `provenance`, `errors`
"""

__version__ = "0.1.0"
