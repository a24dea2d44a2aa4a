"""Pictures as PNG files: image grids, the CNN's confusion matrix, the VAE's report pictures and
the `sample` command's picture. Matplotlib (the Agg backend) is imported only when drawing."""

from __future__ import annotations

import math
import re
import secrets
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import atomic_write
from fashion_tune.data.datafiles import CLASSES, class_index
from fashion_tune.models.sampling import CANDIDATES, guided_sample, raw_sample
from fashion_tune.training.device import pick_device
from fashion_tune.store.promoted import DEFAULT_MODELS_DIR, is_promoted, load_promoted, promote_hint
from fashion_tune.evaluation.grading import VAEPictures

PICTURES = {
    "cnn_confusion": "cnn_confusion_matrix.png",
    "vae_showcase": "vae_showcase.png",
    "vae_reconstruction": "vae_reconstruction.png",
    "vae_interpolations": "vae_interpolations.png",
    "vae_guided_demo": "vae_3_samples_per_item.png",
}


def _plt():
    import matplotlib  # heavy, and only needed to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    plt = _plt()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


# --- pictures ----------------------------------------------------------------------------


def image_grid(
    images: Tensor,
    path: str | Path,
    title: str,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Draw images (R, C, 1, 28, 28) in [0, 1] as one R x C grid PNG, with optional labels and per-image captions."""
    plt = _plt()
    rows, cols = images.shape[:2]
    pad, cell = 2, 28
    gap = 12 if captions is not None else 0  # room under each image for its caption
    height, width = rows * (cell + pad + gap) + pad, cols * (cell + pad) + pad
    canvas = torch.ones(height, width)  # white frame; items keep Fashion-MNIST's white-on-black
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (cell + pad + gap), pad + c * (cell + pad)
            canvas[top : top + cell, left : left + cell] = images[r, c, 0].clamp(0, 1)
    fig, ax = plt.subplots(figsize=(width / 32 + (1.6 if row_labels else 0.3), height / 32 + 0.8))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    centres_y = [pad + r * (cell + pad + gap) + cell / 2 for r in range(rows)]
    centres_x = [pad + c * (cell + pad) + cell / 2 for c in range(cols)]
    ax.set_yticks(centres_y if row_labels else [])
    ax.set_yticklabels(list(row_labels) if row_labels else [])
    ax.set_xticks(centres_x if col_labels else [])
    ax.set_xticklabels(list(col_labels) if col_labels else [], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if captions is not None:
        for r in range(rows):
            for c in range(cols):
                ax.text(centres_x[c], pad + r * (cell + pad + gap) + cell + gap / 2, captions[r][c],
                        ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, Path(path))


def confusion_figure(confusion: list[list[int]], path: str | Path, title: str) -> Path:
    """Confusion matrix (rows = true class, columns = predicted) with counts in the cells."""
    plt = _plt()
    matrix = torch.tensor(confusion, dtype=torch.float64)
    share = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(confusion)
    ax.set_xticks(range(n))
    ax.set_xticklabels(CLASSES[:n], rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(CLASSES[:n])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title)
    return save_figure(fig, Path(path))


def vae_pictures(pictures: VAEPictures, directory: Path, candidates: int) -> dict[str, str]:
    """The four VAE pictures of the report; returns {name: file name}."""
    names = [CLASSES[i] for i in range(len(pictures.showcase))]
    image_grid(pictures.showcase, directory / PICTURES["vae_showcase"],
               "Class-conditional samples (raw, no guidance): a row per class", row_labels=names)
    comparison = torch.stack([pictures.originals, pictures.reconstructions, pictures.generated])
    image_grid(comparison, directory / PICTURES["vae_reconstruction"],
               "Original (test) -> reconstruction -> generated (raw)",
               row_labels=["original", "reconstruction", "generated"], col_labels=names)
    steps = pictures.interpolations.shape[1]
    image_grid(pictures.interpolations, directory / PICTURES["vae_interpolations"],
               "Class-to-class interpolation (z and class embedding move together)",
               row_labels=[f"{CLASSES[a]} -> {CLASSES[b]}" for a, b in pictures.interpolation_pairs],
               col_labels=[f"{t:.2f}" for t in torch.linspace(0, 1, steps).tolist()])
    captions = [[f"p={p:.3f}" for p in row] for row in pictures.guided_confidence.tolist()]
    image_grid(pictures.guided, directory / PICTURES["vae_guided_demo"],
               f"3 samples per item, each the best of {candidates} candidates (p = judge confidence)",
               row_labels=names, captions=captions)
    return {key: PICTURES[key] for key in ("vae_showcase", "vae_reconstruction", "vae_interpolations", "vae_guided_demo")}


def sample_picture(
    item_class: str | int,
    n: int,
    candidates: int = CANDIDATES,
    out: str | Path | None = None,
    seed: int | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    device: str = "auto",
    images_dir: str | Path | None = None,
) -> tuple[Path, list[float] | None, int]:
    """Draw n items of one class from the promoted VAE (best of `candidates` by the promoted CNN) into a PNG,
    and, with `images_dir`, each item as a 28x28 grey PNG there too (`<class>-<i>.png`, what `predict` reads).

    Returns the PNG's path, the judge's confidence in each image (None without a promoted CNN,
    allowed only for candidates=1) and the seed, which reproduces the picture.
    """
    index = class_index(item_class)
    slug = re.sub(r"[^a-z0-9]+", "-", CLASSES[index].lower()).strip("-")
    out = Path(out) if out is not None else Path(f"sample-{slug}.png")
    if out.suffix.lower() != ".png":
        raise FashionTuneError(f"--out {out}: the picture is a PNG; give a file name ending in .png")
    if images_dir is not None and Path(images_dir).exists() and not Path(images_dir).is_dir():
        raise FashionTuneError(f"--images {images_dir}: not a directory; give a directory (it is created if missing)")
    models_dir, device = Path(models_dir), pick_device(device)
    vae, _, _ = load_promoted("vae", models_dir, device)
    judge = None
    if is_promoted(models_dir, "cnn"):
        judge, _, _ = load_promoted("cnn", models_dir, device)
    elif candidates > 1:
        raise FashionTuneError(f"guided sampling needs the promoted CNN as its judge, and {models_dir / 'cnn'} holds none; "
                               f"{promote_hint('cnn')}, or pass --candidates 1 for plain samples")
    seed = secrets.randbelow(2**31) if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    labels = torch.full((n,), index)
    if judge is not None:
        images, confidence = guided_sample(vae, judge, labels, candidates, generator)
        confidences = confidence.tolist()
    else:
        images, confidences = raw_sample(vae, labels, generator), None
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    grid = torch.ones(rows * cols, 1, 28, 28)  # cells past n stay white, i.e. invisible
    grid[:n] = images
    captions = None
    if confidences is not None:
        cells = [f"p={c:.3f}" for c in confidences] + [""] * (rows * cols - n)
        captions = [cells[r * cols : (r + 1) * cols] for r in range(rows)]
    how = f"each the best of {candidates} candidates" if candidates > 1 else "plain samples"
    image_grid(grid.view(rows, cols, 1, 28, 28), out, f"{CLASSES[index]}: {how} (seed {seed})", captions=captions)
    if images_dir is not None:
        write_image_files(images, Path(images_dir), slug)
    return out, confidences, seed


def write_image_files(images: Tensor, directory: Path, stem: str) -> list[Path]:
    """Each image (1x28x28, values in [0, 1]) as an 8-bit grey PNG `<stem>-<i>.png` in `directory`,
    written atomically; Fashion-MNIST's dark background, so `predict` reads them without inverting."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        pixels = (image.reshape(28, 28).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        paths.append(atomic_write(directory / f"{stem}-{i}.png", lambda f: Image.fromarray(pixels, mode="L").save(f, format="PNG")))
    return paths
