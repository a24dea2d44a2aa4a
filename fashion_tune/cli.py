"""The `fashion-tune` command line.

Each sub-command is an `add_<name>(subparsers)` function that declares its arguments and
points `func` at the code that runs it. Expected problems (bad input, missing data, broken
checkpoints) raise `FashionTuneError` and are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from fashion_tune.util.errors import ConfigError, FashionTuneError

PROG = "fashion-tune"
# The model kinds of `fashion_tune.training.kinds.KINDS` (a test keeps the two equal): that module imports torch,
# seconds that parsing the command line should not wait for.
KIND_NAMES = ("vae", "cnn")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that points at --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (numbers such as 1e-3, true/false, null, strings)."""
    from fashion_tune.util import yaml_loader

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml_loader.load(value)
    except yaml_loader.YAMLError:
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
    from fashion_tune.data.datafiles import CLASSES, load_fashion_mnist
    from fashion_tune.data.splits import describe, make_splits

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
    p.add_argument("kind", choices=KIND_NAMES, help="which model")
    p.add_argument("--config", help="YAML file of config overrides (keys as in `fashion-tune train KIND --show-config`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=parse_assignment, metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set lr=0.001")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--subset", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--val-subset", type=int, help="validate on a stratified subset of this many images")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", type=device_name, help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", type=Path, help="output directory (default runs/KIND-TIMESTAMP)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="continue a run from its checkpoint.pt (--epochs may extend it)")
    p.add_argument("--show-config", action="store_true", help="print the resolved config, each key with its meaning, and exit")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import yaml

    from fashion_tune.training.checkpoint import load_checkpoint
    from fashion_tune.training.config import load_yaml, resolve_config
    from fashion_tune.training.loop import fit, load_splits
    from fashion_tune.training.runs import RunDirReporter, default_run_dir

    checkpoint = None
    flags = {"epochs": args.epochs, "subset": args.subset, "val_subset": args.val_subset, "seed": args.seed, "device": args.device}
    # Each source of values in turn, later ones winning: a bad value is reported with the
    # source it came from (the file, a --set, the checkpoint), not the last one merged.
    if args.resume:
        checkpoint = load_checkpoint(args.resume, kind=args.kind)
        layers = [(str(args.resume), dict(checkpoint["config"]))]
    else:
        layers = [(str(args.config), load_yaml(args.config))] if args.config else []
        layers.append(("--set", dict(args.overrides)))
    layers.append(("", {key: value for key, value in flags.items() if value is not None}))
    overrides: dict[str, Any] = {}
    for source, values in layers:
        overrides.update(values)
        config = resolve_config(args.kind, overrides, source=source)
    if args.show_config:
        from fashion_tune.training.config import config_descriptions

        described = config_descriptions(args.kind)
        for key in sorted(config):  # valid YAML: each key's meaning as a comment beside it
            line = yaml.safe_dump({key: config[key]}, default_flow_style=False).strip()
            print(f"{line}  # {described[key]}" if key in described else line)
        return 0
    if checkpoint is not None and checkpoint["epoch"] >= config["epochs"]:
        raise ConfigError(f"{args.resume} already finished {checkpoint['epoch']} epochs; pass --epochs N with N > {checkpoint['epoch']} to train further")

    # The device and the data (and the subset sizes, checked against it) before anything is
    # written: a refused run leaves no directory behind.
    from fashion_tune.training.device import check_device

    check_device(config.get("device", "auto"))
    splits = load_splits(config, args.data_dir)
    out = args.out or (args.resume.parent if args.resume else default_run_dir(args.kind))
    from tqdm.auto import tqdm

    reporter = RunDirReporter(args.kind, out, echo=tqdm.write)
    print(f"training {args.kind} for {config['epochs']} epochs -> {out}", flush=True)
    last = fit(args.kind, config, splits=splits, reporter=reporter, checkpoint=checkpoint, progress=sys.stderr.isatty())
    if last.get("diverged"):
        print(f"training stopped: the loss became non-finite at epoch {last['epoch']}", file=sys.stderr)
        return 1
    print(f"done: best epoch {last['best_epoch']}; checkpoints and metrics.csv in {out}")
    return 0


# --- sweep, analyze ------------------------------------------------------------------------


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters with Ray Tune (Optuna TPE + ASHA) from a YAML space",
                       description="Run a Ray Tune sweep: Optuna's TPE proposes configs from the search space file, ASHA stops "
                                   "weak trials early, every epoch is checkpointed. Writes sweep.json, results.csv/.parquet and "
                                   "history.csv/.parquet into the experiment directory (STORAGE/NAME). Ctrl-C stops it "
                                   "resumably; --resume continues it.")
    p.add_argument("kind", choices=(*KIND_NAMES, "replay"), help="which model (replay: recorded curves, a space with kind: replay)")
    p.add_argument("--space", type=Path, metavar="FILE", help="search space YAML, e.g. search_spaces/vae_quick.yaml (not needed with --resume)")
    p.add_argument("--num-samples", type=positive_int, metavar="N", help="number of trials (default: the space's num_samples)")
    p.add_argument("--max-concurrent", type=positive_int, metavar="N", help="trials running at once (default: the space's max_concurrent_trials)")
    p.add_argument("--name", help="experiment name (default KIND-TIMESTAMP); the directory is STORAGE/NAME")
    p.add_argument("--storage", help="local/shared directory or URI (s3://, gs://, ...) for experiments "
                                      "(default $FASHION_TUNE_STORAGE, else ray_results); on a multi-host cluster every node must reach it")
    p.add_argument("--address", help="Ray cluster to attach to (auto, HOST:PORT, ray://...; default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep STORAGE/NAME; finished trials are kept, not re-run")
    p.add_argument("--restart-errored", action="store_true", help="with --resume: restart failed trials from scratch (as new trials) instead of from their last checkpoint")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray (default: all of this machine's)")
    p.add_argument("--num-gpus", type=float, help="GPUs of the local Ray (default: all of this machine's)")
    p.add_argument("--max-failures", type=int, metavar="N", help="restarts of a crashed trial from its last checkpoint (default 3; fixed once the sweep started)")
    p.add_argument("--keep-checkpoints", type=positive_int, metavar="N", help="best checkpoints kept per trial by the metric, besides the latest (default 3; fixed once the sweep started)")
    p.add_argument("--allow-local-storage", action="store_true", help="on a multi-host cluster, accept a --storage path that is not on a network filesystem")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local Ray (it binds to --dashboard-host)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="address the local dashboard binds to (default 127.0.0.1: this machine only)")
    p.add_argument("--dry-run", action="store_true", help="validate the space and print what would run; starts nothing")
    p.set_defaults(func=run_sweep_command)


def run_sweep_command(args) -> int:
    if args.dry_run:
        from fashion_tune.spaces.space import describe_space, load_space
        from fashion_tune.search.sources import resolve_sources

        if args.space is None:
            raise ConfigError("--dry-run needs --space FILE")
        space = resolve_sources(load_space(args.space, kind=args.kind)).with_overrides(args.num_samples, args.max_concurrent)
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            from fashion_tune.spaces.space import check_resources, local_capacity

            cpus, gpus = local_capacity()
            check_resources(space, cpus if args.num_cpus is None else args.num_cpus,
                            gpus if args.num_gpus is None else args.num_gpus)
        print(describe_space(space))
        return 0
    from fashion_tune.search.request import SweepRequest

    request = SweepRequest(  # checked here, before Ray, torch and pandas are imported
        args.kind, args.space, num_samples=args.num_samples, max_concurrent=args.max_concurrent, name=args.name,
        storage=args.storage, resume=args.resume, restart_errored=args.restart_errored, data_dir=args.data_dir,
        address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_failures=args.max_failures,
        keep_checkpoints=args.keep_checkpoints, allow_local_storage=args.allow_local_storage,
        dashboard=args.dashboard, dashboard_host=args.dashboard_host,
    )
    from fashion_tune.search.sweep import run_sweep

    outcome = run_sweep(request)
    return {"finished": 0, "stopped": 0, "errored": 1}.get(outcome.status, 130)


def add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="top trials, curves, parameter plots and importances of a sweep",
                       description="Load an experiment directory (finished, running or interrupted), print the top trials and "
                                   "write curves.png, params.png, importance.png and summary.md.")
    p.add_argument("experiment", metavar="EXPERIMENT_DIR",
                   help="a sweep's directory or URI, e.g. ray_results/NAME or s3://BUCKET/sweeps/NAME")
    p.add_argument("--top", type=positive_int, default=10, metavar="K", help="rows of the top-trials table (default 10)")
    p.add_argument("--out", type=Path, help="where to write the files (default EXPERIMENT_DIR/analysis; "
                                            "./NAME-analysis for a URI)")
    p.set_defaults(func=run_analyze)


def run_analyze(args) -> int:
    from fashion_tune.store.names import check_experiment_argument

    check_experiment_argument(args.experiment)  # before pandas, Optuna and torch load
    from fashion_tune.reports.analysis import analyze

    analyze(args.experiment, top=args.top, out=args.out)
    return 0


def add_dashboard(sub) -> None:
    from fashion_tune.reports.dashboard import DEFAULT_HOST, DEFAULT_PORT, REFRESH_S

    p = sub.add_parser("dashboard", help="watch a sweep's Optuna study live in optuna-dashboard",
                       description="Serve optuna-dashboard on the sweep's Optuna journal (trials, intermediate values, "
                                   "importances, Pareto front), live while the sweep runs, and print its URL.")
    p.add_argument("experiment", metavar="EXPERIMENT_DIR",
                   help="a sweep's directory or URI, e.g. ray_results/NAME or s3://BUCKET/sweeps/NAME")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--refresh", type=positive_float, default=REFRESH_S, metavar="SECONDS",
                   help=f"for a URI sweep run elsewhere: how often the bucket's journal is fetched again (default {REFRESH_S:g})")
    p.set_defaults(func=run_dashboard)


def run_dashboard(args) -> int:
    from fashion_tune.util.files import is_uri
    from fashion_tune.reports.dashboard import serve

    experiment = args.experiment
    if not is_uri(experiment) and not Path(experiment).exists():
        from fashion_tune.store.experiment import Experiment

        named = Experiment.by_name(experiment)  # a bare NAME in the default storage
        experiment = named.location if named else experiment
    serve(experiment, host=args.host, port=args.port, refresh_s=args.refresh)
    return 0


# --- promote, evaluate, sample -------------------------------------------------------------


def device_name(text: str) -> str:
    """--device: checked as the arguments are read, so a device this machine lacks stops before any work."""
    if text in ("auto", "cpu"):
        return text  # without importing torch
    from fashion_tune.training.device import check_device

    try:
        return check_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


MODELS_DIR_HELP = ("where promoted models live (default $FASHION_TUNE_MODELS, else ./best_models, else the "
                   "best_models/ of the fashion-tune checkout)")
PROMOTE_MODELS_DIR_HELP = "where promoted models live (default $FASHION_TUNE_MODELS, else ./best_models)"


def add_promote(sub) -> None:
    p = sub.add_parser("promote", help="make a sweep's best trial the champion in best_models/KIND/",
                       description="Pick the experiment's best trial by its validation metric, score it on the full validation "
                                   "split and the test set, and make it the champion in MODELS_DIR/KIND/ if it beats the current "
                                   "one on the same validation images (or with --force). The replaced champion is kept in "
                                   "MODELS_DIR/KIND/history/. Writes are atomic.")
    p.add_argument("experiment", metavar="EXPERIMENT_DIR",
                   help="a sweep's directory or URI, e.g. ray_results/NAME or s3://BUCKET/sweeps/NAME")
    p.add_argument("--kind", choices=KIND_NAMES, help="the model kind the experiment must hold (default: whatever it holds)")
    p.add_argument("--force", action="store_true", help="replace the champion even if the challenger is not better")
    p.add_argument("--models-dir", type=Path, help=PROMOTE_MODELS_DIR_HELP)
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.add_argument("--max-params", type=float, metavar="N", help="only trials with at most N trainable parameters")
    p.add_argument("--max-flops", type=float, metavar="N", help="only trials with at most N FLOPs per training image")
    p.set_defaults(func=run_promote)


def run_promote(args) -> int:
    from fashion_tune.store.names import check_experiment_argument

    check_experiment_argument(args.experiment)  # before torch loads
    from fashion_tune.store.names import models_dir_to_write
    from fashion_tune.promotion.promote import promote_best_trial

    limits = {key: value for key, value in (("params", args.max_params), ("flops", args.max_flops)) if value is not None}
    if any(value <= 0 for value in limits.values()):
        raise ConfigError("--max-params and --max-flops must be > 0")
    promote_best_trial(args.experiment, kind=args.kind, models_dir=models_dir_to_write(args.models_dir), force=args.force,
                       data_dir=args.data_dir, limits=limits or None)
    return 0


def add_train_judge(sub) -> None:
    p = sub.add_parser("train-judge", help="train the independent judge that scores the VAE's samples; writes MODELS_DIR/judge/",
                       description="Train a second classifier, unlike the promoted CNN (another architecture and seed), on the "
                                   "training split only (no validation or test image), and ship it to MODELS_DIR/judge/ "
                                   "(model.pt, config.yaml, manifest.json with its test accuracy). `evaluate` scores the "
                                   "VAE's raw and guided samples with it: the promoted CNN picks the guided samples, so its "
                                   "own scores of them are high by construction. A few minutes on a CPU.")
    p.add_argument("--models-dir", type=Path, help=PROMOTE_MODELS_DIR_HELP)
    p.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs (default 10)")
    p.add_argument("--seed", type=int, help="seed of the weights, batch order, flips and dropout (default 1; the promoted CNN's is 0)")
    p.add_argument("--subset", type=positive_int, metavar="N",
                   help="train on a stratified subset of N training images, for a quick try (default: all 50,000)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu (default), cuda, mps")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="CPU threads (default 1: faster than 2 for this small network on a busy machine)")
    p.set_defaults(func=run_train_judge)


def run_train_judge(args) -> int:
    from fashion_tune.store.names import models_dir_to_write
    from fashion_tune.training.judge import JudgeTraining
    from fashion_tune.promotion.judge import ship_judge

    defaults = JudgeTraining()
    training = JudgeTraining(epochs=args.epochs or defaults.epochs, seed=defaults.seed if args.seed is None else args.seed,
                             subset=args.subset)
    command = " ".join([PROG, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None
    ship_judge(models_dir_to_write(args.models_dir), training, data_dir=args.data_dir, device=args.device,
               threads=args.threads, command=command, progress=sys.stderr.isatty())
    return 0


def add_upgrade_manifests(sub) -> None:
    p = sub.add_parser("upgrade-manifests", help="rewrite old manifests' absolute paths as the experiment's name and the path inside it",
                       description="Manifests from before relative paths recorded the absolute paths of the machine that "
                                   "trained the model. Rewrite them (each kind's, the judge's, history/'s) as the experiment's "
                                   "name and the checkpoint's path inside it, atomically; nothing else changes. Re-promoting "
                                   "does the same but needs the sweep's directory.")
    p.add_argument("--models-dir", type=Path, help=PROMOTE_MODELS_DIR_HELP)
    p.set_defaults(func=run_upgrade_manifests)


def run_upgrade_manifests(args) -> int:
    from fashion_tune.store.names import models_dir_to_write

    models_dir = models_dir_to_write(args.models_dir)
    if not models_dir.is_dir():  # before torch loads
        raise FashionTuneError(f"{models_dir} is not a directory; pass --models-dir DIR where the promoted models are")
    from fashion_tune.promotion.upgrade import upgrade_manifests

    count = upgrade_manifests(models_dir)
    print(f"rewrote {count} manifest{'s' if count != 1 else ''}")
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="grade the promoted models on the test set; writes report.md and pictures",
                       description="Grade the promoted CNN (test accuracy, per-class accuracy, confusion matrix) and the promoted "
                                   "VAE (test ELBO, raw and guided samples judged by the CNN, diversity, Frechet distance, "
                                   "interpolation, letter grade); writes report.md, report.json and PNGs into MODELS_DIR.")
    p.add_argument("--kind", choices=[*KIND_NAMES, "all"], default="all", help="which promoted models to grade (default all)")
    p.add_argument("--models-dir", type=Path, help=MODELS_DIR_HELP)
    p.add_argument("--per-class", type=positive_int, metavar="N", help="raw VAE samples per class (default 1000)")
    p.add_argument("--guided-per-class", type=positive_int, metavar="N", help="guided VAE samples per class (default 20)")
    p.add_argument("--candidates", type=positive_int, metavar="N", help="candidates per guided sample (default 100)")
    p.add_argument("--seed", type=int, help="seed of all sampling (default 0)")
    p.add_argument("--iwae-images", type=positive_int, metavar="N",
                   help="binarized test images for the VAE's likelihood bound (default 1000; 10000 = all)")
    p.add_argument("--iwae-k", type=positive_int, metavar="K", help="importance samples per image in that bound (default 1000)")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST files")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from fashion_tune.models.sampling import CANDIDATES
    from fashion_tune.store.promoted import find_models_dir
    from fashion_tune.evaluation import grading
    from fashion_tune.evaluation.likelihood import IWAE_SAMPLES
    from fashion_tune.reports.grading_report import IWAE_IMAGES, REPORT_JSON, REPORT_MD, EvaluationSizes, evaluate

    command = " ".join([PROG, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None
    sizes = EvaluationSizes(  # checked here, before any model is looked for
        per_class=args.per_class or grading.PER_CLASS,
        guided_per_class=args.guided_per_class or grading.GUIDED_PER_CLASS,
        candidates=args.candidates or CANDIDATES,
        seed=grading.SEED if args.seed is None else args.seed,
        iwae_images=args.iwae_images or IWAE_IMAGES,
        iwae_k=args.iwae_k or IWAE_SAMPLES,
    )
    models_dir = find_models_dir(args.models_dir, KIND_NAMES if args.kind == "all" else (args.kind,))
    report = evaluate(args.kind, models_dir, sizes, data_dir=args.data_dir, device=args.device, command=command)
    if "cnn" in report:
        print(f"CNN: test accuracy {report['cnn']['test']['accuracy']:.4f}, grade {report['cnn']['rubric']['grade']}")
    if "vae" in report:
        from fashion_tune.reports.markdown import headline_judge_name

        vae = report["vae"]
        s = vae["samples"]
        print(f"VAE, scored by {headline_judge_name(vae)}: class accuracy raw {s['raw']['accuracy']:.4f} -> guided "
              f"{s['guided']['accuracy']:.4f}, FD {s['raw']['fd']:.3f} vs real floor {s['raw']['fd_floor']:.3f} "
              f"(relative {s['raw']['fd_relative']:.3f})")
        print(f"VAE grade {vae['rubric']['grade']} (raw samples, scored by the promoted CNN; the rubric was set with it)")
        if "promoted_cnn" in vae:
            g = vae["promoted_cnn"]["samples"]
            print(f"VAE, scored by the promoted CNN that picked the guided samples: class accuracy raw "
                  f"{g['raw']['accuracy']:.4f} -> guided {g['guided']['accuracy']:.4f}; the independent judge's grade, "
                  f"for contrast: {vae['independent_rubric']['grade']}")
        bound = report["vae"]["likelihood"]
        print(f"VAE: test -log p(x|y) <= {bound['nll_bound']:.2f} +- {bound['nll_bound_stderr']:.2f} nats "
              f"(IWAE, k={bound['k']:,}, {bound['images']:,} binarized test images)")
    pictures = sorted({name for kind in ("cnn", "vae") for name in report.get(kind, {}).get("pictures", {}).values()})
    print(f"report: {models_dir / REPORT_MD} (numbers in {models_dir / REPORT_JSON}); "
          f"pictures in {models_dir}/: {', '.join(pictures)}")
    return 0


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw items of one class from the promoted VAE into a PNG",
                       description="Generate N images of one class with the promoted VAE; each is the best of CANDIDATES "
                                   "latents as judged by the promoted CNN (quality-guided sampling; --candidates 1 for plain samples).")
    p.add_argument("--class", dest="item_class", required=True, metavar="CLASS",
                   help="class name, alias or index, e.g. dress, 'ankle boot', sneaker, 3")
    p.add_argument("-n", type=positive_int, default=3, help="how many images (default 3)")
    p.add_argument("--candidates", type=positive_int, default=100, help="candidates per image, best kept (default 100; 1 = no guidance)")
    p.add_argument("--out", type=Path, help="PNG to write: the images in a captioned grid (default sample-CLASS.png)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="also write each image as a 28x28 grey PNG in DIR (CLASS-0.png, ...): files `predict` reads as they are")
    p.add_argument("--seed", type=int, help="sampling seed (default: random, printed so the picture can be reproduced)")
    p.add_argument("--models-dir", type=Path, help=MODELS_DIR_HELP)
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu, cuda, mps")
    p.set_defaults(func=run_sample)


def run_sample(args) -> int:
    from fashion_tune.data.datafiles import class_index

    class_index(args.item_class)  # a wrong class is the first thing to hear about, before torch is imported
    from fashion_tune.reports.pictures import sample_picture
    from fashion_tune.store.promoted import find_models_dir

    out, confidences, seed = sample_picture(args.item_class, args.n, candidates=args.candidates, out=args.out, seed=args.seed,
                                            models_dir=find_models_dir(args.models_dir, ("vae",)), device=args.device,
                                            images_dir=args.images)
    print(f"wrote {out} ({args.n} image{'s' if args.n > 1 else ''}, seed {seed}; judge confidence {confidence_text(confidences)})"
          + (f"; each image as a 28x28 PNG in {args.images}" if args.images else ""))
    return 0


def confidence_text(confidences: list[float] | None, listed: int = 10) -> str:
    """The judge's confidences: each one for a few images, else their min, median and max (the PNG captions each)."""
    if confidences is None:
        return "no judge"
    if len(confidences) <= listed:
        return ", ".join(f"{c:.3f}" for c in confidences)
    import statistics

    return (f"min {min(confidences):.3f}, median {statistics.median(confidences):.3f}, max {max(confidences):.3f} "
            f"over {len(confidences)} images; each is captioned in the picture")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with the promoted CNN",
                       description="Classify PNG/JPEG files of any size or mode with the promoted CNN: each is made grey, "
                                   "padded to a square, resized to 28x28 and, when its border is light, inverted to "
                                   "Fashion-MNIST's dark background. Prints the top 3 classes with probabilities.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files, or directories of them")
    p.add_argument("--no-invert", dest="invert", action="store_const", const=False, default=None,
                   help="never invert (the images already have a dark background)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--models-dir", type=Path, help=MODELS_DIR_HELP)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu (default), cuda, mps")
    p.set_defaults(func=run_predict)


def run_predict(args) -> int:
    import json

    from fashion_tune.store.promoted import find_models_dir
    from fashion_tune.evaluation.predict import Unreadable, predict_each

    results = predict_each(args.images, models_dir=find_models_dir(args.models_dir, ("cnn",)), invert=args.invert,
                           device=args.device)
    failed = [r for r in results if isinstance(r, Unreadable)]
    for problem in failed:  # each bad file on its own line; the good ones are classified all the same
        print(f"{PROG}: error: {problem.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for p in results:
            if not isinstance(p, Unreadable):
                top = ", ".join(f"{name} {prob:.3f}" for name, prob in p.top)
                print(f"{p.path}: {top}{' (inverted)' if p.inverted else ''}")
    return 2 if failed else 0


COMMANDS = [add_data, add_train, add_sweep, add_analyze, add_dashboard, add_promote, add_upgrade_manifests, add_train_judge,
            add_evaluate, add_sample, add_predict]  # pipeline order


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
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
