"""What the VAE's FLOPs buy: the default shape against a cheaper one, trained the same way.

    python benchmarks/vae_shapes.py --experiment ray_results/vae-cpu --epochs 3
    python benchmarks/vae_shapes.py --set width=16 --set depth=2 --epochs 3 --subset 10000

Trains the default VAE (width 32, depth 3: 1.72 GFLOP per training image) and a challenger
(the best trial of --experiment, or the default with --set overrides) for the same epochs on
the same data and seed, in the default precision, and prints per epoch the validation negative
ELBO (grey levels, the sweep's metric) and on binarized images, then the FLOPs ratio and the
wall time of each. The challenger keeps its own training settings (lr, beta schedule, ...);
the default keeps the project's (the original's).
"""

import argparse
import time

from fashion_tune.training.config import resolve_config
from fashion_tune.training.loop import fit, load_splits, training_cost
from fashion_tune.reports.analysis import best_trial
from fashion_tune.cli import parse_assignment

SHAPE_KEYS = ("width", "depth", "latent_dim", "embed_dim")


def train(config: dict, splits) -> tuple[list[dict], float]:
    rows, started = [], time.perf_counter()
    fit("vae", config, splits=splits, reporter=lambda metrics, state: rows.append(metrics))
    return rows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="a VAE sweep whose best trial is the challenger")
    parser.add_argument("--set", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
                        help="challenger override on top of the default or the experiment's config (repeatable)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, help="training images (default: the full 50,000)")
    args = parser.parse_args()

    common = {"epochs": args.epochs, "subset": args.subset, "val_subset": None, "scheduler": "cosine"}
    challenger = best_trial(args.experiment).config if args.experiment else {}
    challenger = resolve_config("vae", {**challenger, **common, **dict(args.set)})
    default = resolve_config("vae", common)
    splits = load_splits(default)
    results = {}
    for name, config in (("default", default), ("challenger", challenger)):
        cost = training_cost("vae", config)
        rows, seconds = train(config, splits)
        results[name] = (cost, rows, seconds)
        shape = ", ".join(f"{k} {config[k]}" for k in SHAPE_KEYS)
        print(f"{name}: {shape}; {cost['params']:,} parameters, {cost['flops'] / 1e9:.3f} GFLOP per training image, "
              f"{seconds:.0f} s", flush=True)
        for r in rows:
            print(f"  epoch {r['epoch']}: val_neg_elbo {r['val_neg_elbo']:.2f}, val_neg_elbo_bin {r['val_neg_elbo_bin']:.2f} "
                  f"nats ({r['images_per_s']:.0f} images/s)", flush=True)
    (dc, drows, ds), (cc, crows, cs) = results["default"], results["challenger"]
    print(f"challenger / default: {dc['flops'] / cc['flops']:.1f}x fewer FLOPs, {ds / cs:.1f}x less time; "
          f"val_neg_elbo {crows[-1]['val_neg_elbo']:.2f} vs {drows[-1]['val_neg_elbo']:.2f} "
          f"({crows[-1]['val_neg_elbo'] - drows[-1]['val_neg_elbo']:+.2f} nats) after {args.epochs} epochs")


if __name__ == "__main__":
    main()
