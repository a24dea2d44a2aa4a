"""Training throughput of the default models: parameter count and images/s of one epoch.

    python benchmarks/throughput.py --kind all --subset 10000

Runs the real training loop (`fashion_tune.train.fit`) on a stratified training subset and
prints one line per model. On a GPU pass --device cuda (and --amp for bf16 autocast).
"""

import argparse

from fashion_tune.config import resolve_config
from fashion_tune.models import count_parameters
from fashion_tune.train import build_model, fit, load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["vae", "cnn", "all"], default="all")
    parser.add_argument("--subset", type=int, default=10_000, help="training images in the epoch (default 10000; 50000 = full split)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()

    for kind in ["cnn", "vae"] if args.kind == "all" else [args.kind]:
        subset = None if args.subset >= 50_000 else args.subset
        config = resolve_config(kind, {"epochs": args.epochs, "subset": subset, "val_subset": 2000,
                                       "device": args.device, "amp": args.amp})
        splits = load_splits(config)
        rows = []
        fit(kind, config, splits=splits, reporter=lambda metrics, state: rows.append(metrics))
        last = rows[-1]
        quality = f"val_acc {last['val_acc']:.4f}" if kind == "cnn" else f"val_neg_elbo {last['val_neg_elbo']:.1f} nats"
        print(f"{kind}: {count_parameters(build_model(kind, config)):,} parameters, "
              f"{len(splits.train_y):,} training images, {args.epochs} epoch(s), "
              f"{max(r['images_per_s'] for r in rows):,.0f} images/s (best epoch), "
              f"{sum(r['epoch_time_s'] for r in rows):.1f}s, {quality}", flush=True)


if __name__ == "__main__":
    main()
