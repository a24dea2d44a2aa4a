"""Training throughput: parameters, FLOPs per image, and images/s per precision setting for each model.

    python benchmarks/throughput.py                       # both default models: fp32, auto, bf16
    python benchmarks/throughput.py --kind vae --set width=16 --set depth=2 --precisions fp32,auto

Runs the real training loop (`fashion_tune.training.loop.fit`) for one epoch on a stratified training
subset, once per `precision` setting, and prints one line per model and setting with what it ran
as (fp32 or bf16; default or channels-last layout), its images/s and the GFLOP/s reached (training
FLOPs per image, forward + backward, times images/s), then each setting's ratio to fp32. `auto` is
what training uses by default: bf16 + channels-last on a CPU with native bf16, fp32 elsewhere.
A setting given twice is measured twice (the ratio uses the last), to see the noise. On a GPU pass
--device cuda.
"""

import argparse

import torch

from fashion_tune.training.config import resolve_config
from fashion_tune.training.device import pick_device, pick_memory_format
from fashion_tune.training.loop import fit, load_splits
from fashion_tune.cli import parse_assignment


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
    parser.add_argument("--precisions", default="fp32,auto,bf16", help="comma-separated settings (default fp32,auto,bf16)")
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
            layout = pick_memory_format(row["precision"], pick_device(args.device))
            speeds[precision] = row["images_per_s"]
            ran = f"{row['precision']}, {'channels-last' if layout == torch.channels_last else 'default layout'}"
            print(f"{kind} {precision} ({ran}): {row['params']:,} parameters, {row['flops'] / 1e9:.3f} GFLOP per training "
                  f"image, {len(splits.train_y):,} images, {row['images_per_s']:,.0f} images/s, "
                  f"{row['images_per_s'] * row['flops'] / 1e9:,.0f} GFLOP/s", flush=True)
        for precision, speed in speeds.items():
            if precision != "fp32" and "fp32" in speeds:
                print(f"{kind} {precision} / fp32: {speed / speeds['fp32']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
