"""Promoting a sweep's best trial into `best_models/`: champion against challenger on validation
(`promote`); shipping the independent judge beside the models (`judge`)."""
