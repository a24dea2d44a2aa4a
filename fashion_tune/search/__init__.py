"""The sweep itself, on Ray Tune and Optuna: `sweep` runs one; `strategies` builds the searcher
(`searcher`, `study`: Optuna's side) and the scheduler (`schedulers`) a space names; `sources`
reads `start_from:`/`warm_start:`; `trainable` is what each trial runs; `callbacks` and
`retention` keep the experiment's files; `sweep_info` is what a sweep stores to be resumed;
`cluster` and `ray_compat` talk to Ray."""
