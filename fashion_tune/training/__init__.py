"""Training one model: typed settings (`settings`) and the flat config dicts users write
(`config`), one `Kind` record per model (`kinds`, `tasks`), the loop (`loop`), validation and
test numbers (`scoring`), checkpoints (`checkpoint`), `fashion-tune train`'s files (`runs`),
the device (`device`), the VAE's beta schedule (`schedules`) and the independent judge's training (`judge`)."""
