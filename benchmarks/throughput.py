"""Training throughput: parameters, FLOPs per image, and images/s in fp32 and bf16 for each model.

    python benchmarks/throughput.py                       # both default models, fp32 and bf16
    python benchmarks/throughput.py --kind vae --set width=16 --set depth=1 --subset 5000

Runs the real training loop (`fashion_tune.train.fit`) for one epoch on a stratified training
subset, once per precision, and prints one line per model and precision, then the bf16/fp32
ratio and the GFLOP/s reached (training FLOPs per image, forward + backward, times images/s).
On a GPU pass --device cuda.
"""

import argparse

from fashion_tune.cli import parse_assignment
from fashion_tune.config import resolve_config
from fashion_tune.train import fit, load_splits


def measure(kind: str, overrides: dict, precision: str, splits) -> dict:
    config = resolve_config(kind, {**overrides, "precision": precision})
    rows = []
    fit(kind, config, splits=splits, reporter=lambda metrics, state: rows.append(metrics))
    return max(rows, key=lambda r: r["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["vae", "cnn", "all"], default="all")
    parser.add_argument("--subset", type=int, default=5_000, help="training images per epoch (default 5000; 50000 = full split)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    parser.add_argument("--set", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
                        help="config override, e.g. --set width=16 (repeatable)")
    args = parser.parse_args()

    for kind in ["cnn", "vae"] if args.kind == "all" else [args.kind]:
        overrides = {"epochs": args.epochs, "subset": None if args.subset >= 50_000 else args.subset,
                     "val_subset": 1000, "device": args.device, **dict(args.set)}
        splits = load_splits(resolve_config(kind, overrides))
        speeds = {}
        for precision in args.precisions.split(","):
            row = measure(kind, overrides, precision, splits)
            speeds[row["precision"]] = row["images_per_s"]
            print(f"{kind} {row['precision']}: {row['params']:,} parameters, {row['flops'] / 1e9:.3f} GFLOP per training "
                  f"image, {len(splits.train_y):,} images, {row['images_per_s']:,.0f} images/s, "
                  f"{row['images_per_s'] * row['flops'] / 1e9:,.0f} GFLOP/s", flush=True)
        if "fp32" in speeds and "bf16" in speeds:
            print(f"{kind} bf16 / fp32: {speeds['bf16'] / speeds['fp32']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
