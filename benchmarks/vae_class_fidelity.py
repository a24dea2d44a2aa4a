"""Where a VAE loses the class its samples were asked for: the decoder or the prior.

    python benchmarks/vae_class_fidelity.py                       # the promoted VAE
    python benchmarks/vae_class_fidelity.py path/to/checkpoint.pt ...

For each VAE checkpoint, the promoted CNN judges, per class, on validation images only:
- recon: the posterior mean of each validation image decoded with its own label (what the decoder
  can draw when z is the right one);
- raw: one z ~ N(0, I) per requested label (what `evaluate` grades as raw samples);
- class prior: z drawn from a full-covariance Gaussian fitted, per class, to posterior samples of
  training images (what a learned class-conditional prior could give at best, as a Gaussian).
Raw well below recon with class prior close to raw: the prior is not the problem, the decoder's
detail for that class is only part of it. Recon itself low: the decoder cannot draw the class.
"""

import argparse

import torch

from fashion_tune.datafiles import CLASSES
from fashion_tune.judging import judge_outputs, judge_scores
from fashion_tune.promoted import load_promoted
from fashion_tune.sampling import class_labels, raw_sample
from fashion_tune.train import load_model, load_splits

SEED = 0


def class_prior_sample(vae, train_x, train_y, labels, generator) -> torch.Tensor:
    """Decoded z from per-class Gaussians fitted to posterior samples of the training images."""
    with torch.no_grad():
        mu, logvar = vae.encode(train_x, train_y)
        z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
        drawn = torch.empty(len(labels), z.shape[1])
        for c in labels.unique().tolist():
            fitted = z[train_y == c]
            prior = torch.distributions.MultivariateNormal(fitted.mean(0), torch.cov(fitted.T))
            torch.manual_seed(SEED + c)  # MultivariateNormal.sample takes no generator
            drawn[labels == c] = prior.sample((int((labels == c).sum()),))
        return torch.sigmoid(vae.decode(drawn, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=["best_models/vae/model.pt"])
    parser.add_argument("--judge", default="best_models", help="models folder holding the promoted CNN")
    parser.add_argument("--val-images", type=int, default=3000, help="validation images to reconstruct")
    parser.add_argument("--train-images", type=int, default=20000, help="training images to fit the class prior")
    parser.add_argument("--per-class", type=int, default=200, help="samples per class")
    args = parser.parse_args()

    judge = load_promoted("cnn", args.judge)[0]
    short = " ".join(f"{name[:7]:>7s}" for name in CLASSES)
    print(f"{'checkpoint':42s} {'what':11s} {'all':>5s} {short}")
    for path in args.checkpoints:
        vae, state = load_model(path, kind="vae")
        splits = load_splits({**state["config"], "subset": None, "val_subset": None})
        val_x, val_y = splits.val_x[: args.val_images], splits.val_y[: args.val_images]
        labels = class_labels(args.per_class, vae.config.num_classes)
        with torch.no_grad():
            recon = torch.sigmoid(vae.decode(vae.encode(val_x, val_y)[0], val_y))
        sets = {
            "recon": (recon, val_y),
            "raw": (raw_sample(vae, labels, torch.Generator().manual_seed(SEED)), labels),
            "class prior": (class_prior_sample(vae, splits.train_x[: args.train_images], splits.train_y[: args.train_images],
                                               labels, torch.Generator().manual_seed(SEED + 1)), labels),
        }
        for what, (images, asked) in sets.items():
            scores = judge_scores(judge_outputs(judge, images)[0], asked)
            per_class = " ".join(f"{scores['per_class'][name]['accuracy']:7.3f}" for name in CLASSES)
            print(f"{str(path)[-42:]:42s} {what:11s} {scores['accuracy']:5.3f} {per_class}")


if __name__ == "__main__":
    main()
