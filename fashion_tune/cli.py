"""The `fashion-tune` command line.

Each sub-command is an `add_<name>(subparsers)` function that declares its arguments and
points `func` at the code that runs it. Expected problems (bad input, missing data, broken
checkpoints) raise `FashionTuneError` and are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from fashion_tune.errors import ConfigError, FashionTuneError

PROG = "fashion-tune"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that points at --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (numbers, true/false, null, strings)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


# --- data ----------------------------------------------------------------------------------


def add_data(sub) -> None:
    p = sub.add_parser("data", help="find, verify and summarise the Fashion-MNIST files",
                       description="Find the Fashion-MNIST files, verify their checksums and print class counts per split.")
    p.add_argument("--data-dir", help="directory with the IDX files (default: $FASHION_TUNE_DATA, ./data, the Debian copy, then download)")
    p.add_argument("--val-size", type=int, default=10_000, help="validation images held out of the 60k training set (default 10000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the stratified validation split (default 0)")
    p.set_defaults(func=run_data)


def run_data(args) -> int:
    from fashion_tune.data import CLASSES, describe, load_fashion_mnist, make_splits

    data = load_fashion_mnist(args.data_dir)
    splits = make_splits(data, val_size=args.val_size, split_seed=args.split_seed)
    info = describe(data, splits)
    print(f"Fashion-MNIST from {info['source']}")
    for name, digest in info["sha256"].items():
        print(f"  {name:<26} sha256 {digest[:16]}...  verified")
    sizes = splits.sizes()
    print(f"images: train {len(data.train_labels):,} (split into train {sizes['train']:,} + validation {sizes['val']:,}, "
          f"seed {args.split_seed}), test {len(data.test_labels):,}")
    counts = info["counts"]
    print(f"  {'class':<12}" + "".join(f"{split:>8}" for split in counts))
    for name in CLASSES:
        print(f"  {name:<12}" + "".join(f"{counts[split][name]:>8,}" for split in counts))
    return 0


# --- train ---------------------------------------------------------------------------------


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train one VAE or CNN (no sweep)",
                       description="Train one model with a progress bar; writes checkpoint.pt, best.pt, metrics.csv and config.yaml.")
    p.add_argument("kind", choices=["vae", "cnn"], help="which model")
    p.add_argument("--config", help="YAML file of config overrides (keys as in `fashion-tune train KIND --show-config`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set lr=0.001")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--subset", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--val-subset", type=int, help="validate on a stratified subset of this many images")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", type=Path, help="output directory (default runs/KIND-TIMESTAMP)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue a run from its checkpoint.pt (--epochs may extend it)")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import yaml

    from fashion_tune.checkpoint import load_checkpoint
    from fashion_tune.config import load_yaml, resolve_config
    from fashion_tune.runs import RunDirReporter, default_run_dir
    from fashion_tune.train import fit

    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume, kind=args.kind)
        overrides = dict(checkpoint["config"])
    else:
        overrides = load_yaml(args.config) if args.config else {}
        overrides.update(dict(args.overrides))
    flags = {"epochs": args.epochs, "subset": args.subset, "val_subset": args.val_subset, "seed": args.seed, "device": args.device}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    config = resolve_config(args.kind, overrides, source=args.config or "")
    if args.show_config:
        print(yaml.safe_dump(config, sort_keys=True), end="")
        return 0
    if checkpoint is not None and checkpoint["epoch"] >= config["epochs"]:
        raise ConfigError(f"{args.resume} already finished {checkpoint['epoch']} epochs; pass --epochs N with N > {checkpoint['epoch']} to train further")

    out = args.out or (args.resume.parent if args.resume else default_run_dir(args.kind))
    from tqdm.auto import tqdm

    reporter = RunDirReporter(args.kind, out, echo=tqdm.write)
    print(f"training {args.kind} for {config['epochs']} epochs -> {out}", flush=True)
    last = fit(args.kind, config, reporter=reporter, checkpoint=checkpoint, data_dir=args.data_dir, progress=sys.stderr.isatty())
    if last.get("diverged"):
        print(f"training stopped: the loss became non-finite at epoch {last['epoch']}", file=sys.stderr)
        return 1
    print(f"done: best epoch {last['best_epoch']}; checkpoints and metrics.csv in {out}")
    return 0


COMMANDS = [add_data, add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Hyperparameter search for Fashion-MNIST VAEs and CNNs with Ray Tune and Optuna.")
    from fashion_tune import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FashionTuneError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
