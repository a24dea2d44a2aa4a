"""Epoch time and parameters of CNN shapes on this CPU, to size a full-data sweep (`cnn_resnet_cpu.yaml`).

    python benchmarks/resnet_shapes.py                                  # the default shapes, 1 thread each
    python benchmarks/resnet_shapes.py --shapes resnet:16:3,resnet:24:4 --threads 2 --set optimizer=sgd

For each shape (arch:width:depth) it runs the real training loop (`fit`) for two epochs on a stratified
subset, in the precision training would use (`--precision`, default auto: bf16 + channels-last on a
CPU with native bf16), and times the second epoch (the first builds oneDNN's kernels); then it times one
fp32 validation pass over the 10,000 validation images. It prints, per shape: parameters, training
FLOPs per image, training images/s (wall clock) and CPU milliseconds per image, the validation pass,
and the projected full-data epoch (50,000 training images and the validation passes a trial makes:
1 plain, 2 with flip TTA, 3 with TTA and EMA, whose training weights are scored too, without TTA).

CPU time is what a sweep needs on quiet cores: a trial with `resources_per_trial.cpu: 1` trains on one
thread (`--threads 1`, the default), and on a loaded machine the wall clock also counts the waiting;
both are printed, and the projection uses the CPU time.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fashion_tune.cli import parse_assignment
from fashion_tune.training.config import resolve_config
from fashion_tune.training.device import cpu_description, cpu_has_native_bf16
from fashion_tune.training.loop import build_model, fit, load_splits
from fashion_tune.training.scoring import cnn_scores

DEFAULT_SHAPES = "plain:40:2,resnet:16:3,resnet:16:5,resnet:24:3,resnet:32:2,resnet:48:1,resnet:24:4,resnet:16:9"
FULL_TRAIN, FULL_VAL = 50_000, 10_000
VAL_PASSES = {"plain": 1, "TTA": 2, "TTA+EMA": 3}


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def time_training(config: dict, splits) -> tuple[float, float, dict]:
    """Wall and CPU seconds of the second training epoch (its tiny validation included), and its metrics."""
    marks, rows = [], []

    def reporter(metrics, state):
        marks.append(clocks())
        rows.append(metrics)

    fit("cnn", config, splits=splits, reporter=reporter)
    (wall0, cpu0), (wall1, cpu1) = marks[-2], marks[-1]
    return wall1 - wall0, cpu1 - cpu0, rows[-1]


def time_validation(config: dict, val_x, val_y) -> tuple[float, float]:
    """Wall and CPU seconds of one fp32 validation pass (no TTA) of an untrained model of this shape."""
    model = build_model("cnn", config).eval()
    cnn_scores(model, val_x[:1000], val_y[:1000])  # kernels built
    wall0, cpu0 = clocks()
    cnn_scores(model, val_x, val_y)
    wall1, cpu1 = clocks()
    return wall1 - wall0, cpu1 - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"arch:width:depth,... (default {DEFAULT_SHAPES})")
    parser.add_argument("--subset", type=int, default=3_000, help="training images per timed epoch (default 3000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a sweep trial's cpu (default 1)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--set", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
                        help="config override for every shape, e.g. --set batch_size=256 (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_description()}; native bf16: {cpu_has_native_bf16()}; {args.threads} thread(s); torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)

    base = {"epochs": 2, "subset": args.subset, "val_subset": 100, "device": "cpu", "precision": args.precision,
            **dict(args.set)}
    splits = load_splits(resolve_config("cnn", base))
    val = load_splits(resolve_config("cnn", {**base, "val_subset": None, "subset": 10}))
    for shape in args.shapes.split(","):
        arch, width, depth = shape.split(":")
        config = resolve_config("cnn", {**base, "arch": arch, "width": int(width), "depth": int(depth)})
        wall, cpu_s, row = time_training(config, splits)
        val_wall, val_cpu = time_validation(config, val.val_x, val.val_y)
        per_image = cpu_s / len(splits.train_y)
        projected = ", ".join(f"{name} {(FULL_TRAIN * per_image + passes * val_cpu) / 60:.1f}"
                              for name, passes in VAL_PASSES.items())
        print(f"{arch} width {width} depth {depth}: {row['params']:,} params, {row['flops'] / 1e9:.3f} GFLOP per training "
              f"image ({row['precision']}); train {len(splits.train_y) / wall:,.0f} images/s wall, {1000 * per_image:.2f} "
              f"CPU ms per image; validation pass {val_wall:.1f} s wall, {val_cpu:.1f} s CPU; full-data epoch (CPU "
              f"minutes): {projected}", flush=True)


if __name__ == "__main__":
    main()
