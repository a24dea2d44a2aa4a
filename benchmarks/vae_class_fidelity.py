"""Where a VAE loses the class its samples were asked for: the decoder or the prior.

    python benchmarks/vae_class_fidelity.py                       # the promoted VAE
    python benchmarks/vae_class_fidelity.py path/to/checkpoint.pt ...

For each VAE checkpoint, the promoted CNN judges, per class, on validation images only:
- recon: the posterior mean of each validation image decoded with its own label (what the decoder
  can draw when z is the right one);
- raw: one z from the VAE's own prior per requested label (what `evaluate` grades as raw samples);
- prior K=k: the same noise through a class prior as promotion fits it (`fashion_tune.models.prior`: the
  mixture of k Gaussians per class fitted to the training images' posteriors by EM; k = 1 is the
  moment-matched Gaussian), fitted here on training images, for each k of --components.
Raw well below recon with the fitted priors close to raw: the prior is not the problem, the
decoder's detail for that class is. Recon itself low: the decoder cannot draw the class. (For a VAE
promoted with a fitted prior, raw is that prior.)
"""

import argparse
import copy

import torch

from fashion_tune.data.datafiles import CLASSES
from fashion_tune.models.prior import fit_class_prior, posterior_moments
from fashion_tune.models.sampling import class_labels, raw_sample
from fashion_tune.training.loop import load_model, load_splits
from fashion_tune.store.promoted import load_promoted
from fashion_tune.evaluation.judging import judge_outputs, judge_scores

SEED = 0


def fitted_prior_sample(vae, train_x, train_y, labels, seed: int, components: int, posteriors) -> torch.Tensor:
    """Raw samples (same noise as `raw`) of a copy of the VAE with its class prior fitted on these images."""
    fitted = copy.deepcopy(vae)
    fit_class_prior(fitted, train_x, train_y, components, posteriors)
    return raw_sample(fitted, labels, torch.Generator().manual_seed(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=["best_models/vae/model.pt"])
    parser.add_argument("--judge", default="best_models", help="models folder holding the promoted CNN")
    parser.add_argument("--val-images", type=int, default=3000, help="validation images to reconstruct")
    parser.add_argument("--train-images", type=int, default=50000, help="training images to fit the class prior on")
    parser.add_argument("--per-class", type=int, default=200, help="samples per class")
    parser.add_argument("--components", default="1,32", help="Gaussians per class of the fitted priors, comma-separated")
    args = parser.parse_args()

    judge = load_promoted("cnn", args.judge)[0]
    short = " ".join(f"{name[:7]:>7s}" for name in CLASSES)
    print(f"{'checkpoint':42s} {'what':12s} {'all':>5s} {short}")
    for path in args.checkpoints:
        vae, state = load_model(path, kind="vae")
        splits = load_splits({**state["config"], "subset": None, "val_subset": None})
        val_x, val_y = splits.val_x[: args.val_images], splits.val_y[: args.val_images]
        labels = class_labels(args.per_class, vae.config.num_classes)
        with torch.no_grad():
            recon = torch.sigmoid(vae.decode(vae.encode(val_x, val_y)[0], val_y))
        train_x, train_y = splits.train_x[: args.train_images], splits.train_y[: args.train_images]
        posteriors = posterior_moments(vae, train_x, train_y)
        sets = {
            "recon": (recon, val_y),
            "raw": (raw_sample(vae, labels, torch.Generator().manual_seed(SEED)), labels),
            **{f"prior K={k}": (fitted_prior_sample(vae, train_x, train_y, labels, SEED, k, posteriors), labels)
               for k in map(int, args.components.split(","))},
        }
        for what, (images, asked) in sets.items():
            scores = judge_scores(judge_outputs(judge, images)[0], asked)
            per_class = " ".join(f"{scores['per_class'][name]['accuracy']:7.3f}" for name in CLASSES)
            print(f"{str(path)[-42:]:42s} {what:12s} {scores['accuracy']:5.3f} {per_class}")


if __name__ == "__main__":
    main()
