"""What a sweep leaves behind and how it is read: the experiment directory, local or a URI
(`experiment`), the results schema (`results`), reading results and the best trial
(`reading`), and the promoted models' directory, `best_models/` (`promoted`)."""
