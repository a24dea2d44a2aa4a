"""Classify image files with the promoted CNN: any size or mode, made to look like Fashion-MNIST.

Fashion-MNIST items are light on a black background, centred in 28x28 grey. A photo or a
product shot is usually dark on white, so an image whose border is light is inverted (turn it
off with `invert=False`); it is padded to a square with its background colour and resized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from fashion_tune.util.errors import DataError
from fashion_tune.data.datafiles import CLASSES, IMAGE_SIZE
from fashion_tune.store.promoted import DEFAULT_MODELS_DIR, load_promoted

TOP_K = 3
BATCH_SIZE = 1_000  # images per forward pass
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what a directory's images end with


@dataclass
class Prediction:
    """The top classes of one image file, with the judge's probabilities."""

    path: str
    top: list[tuple[str, float]]
    inverted: bool

    def as_dict(self) -> dict:
        return {"path": self.path, "inverted": self.inverted,
                "top": [{"class": name, "probability": round(p, 6)} for name, p in self.top]}


@dataclass
class Unreadable:
    """An input that could not be classified, and the one-line message that says why."""

    path: str
    error: str

    def as_dict(self) -> dict:
        return {"path": self.path, "error": self.error}


def image_files(paths: Sequence[str | Path]) -> list[Path | Unreadable]:
    """The files to classify, in order: each path given, and for a directory its image files (by
    suffix, sorted, not recursive); a directory without any is Unreadable in its place."""
    found: list[Path | Unreadable] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)
            continue
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        found.extend(images or [Unreadable(str(path), f"{path}: a directory with no image files "
                                                      f"({', '.join(IMAGE_SUFFIXES)}); give image files or a directory of them")])
    return found


def load_image(path: str | Path, invert: bool | None = None) -> tuple[torch.Tensor, bool]:
    """A (1, 28, 28) tensor in [0, 1] from an image file, and whether it was inverted.

    invert=None inverts when the image's border is mostly light (a light background).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a directory, not an image file; give the image files in it")
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; give a PNG or JPEG image")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read it (permission denied); check its permissions")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; give a PNG or JPEG image")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = image.convert("RGBA")
                flat = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparency reads as a white background
                image = Image.alpha_composite(flat, image)
            grey = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not an image this tool can read ({type(exc).__name__}); give a PNG or JPEG") from None
    pixels = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(grey.height, grey.width).float() / 255
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    light_background = border.mean().item() > 0.5
    inverted = light_background if invert is None else invert
    if inverted:
        pixels = 1 - pixels
    return _square_resize(pixels, background=torch.cat([pixels[0], pixels[-1]]).median().item()), inverted


def _square_resize(pixels: torch.Tensor, background: float) -> torch.Tensor:
    """Pad to a square with the background value, then area-resize to 28x28."""
    h, w = pixels.shape
    side = max(h, w)
    square = torch.full((side, side), background)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = pixels
    resized = torch.nn.functional.interpolate(square[None, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="area"
                                              if side >= IMAGE_SIZE else "bilinear")
    return resized[0].clamp(0, 1)


@torch.no_grad()
def predict_each(paths: Sequence[str | Path], models_dir: str | Path = DEFAULT_MODELS_DIR, invert: bool | None = None,
                 top_k: int = TOP_K, device: str = "cpu") -> list[Prediction | Unreadable]:
    """For each image file (a directory: its image files), its top-k classes by the promoted CNN, or
    why it could not be read: one bad file does not stop the others."""
    results: list[Prediction | Unreadable] = []
    loaded: list[tuple[int, Path, torch.Tensor, bool]] = []
    for item in image_files(paths):
        if isinstance(item, Unreadable):
            results.append(item)
            continue
        try:
            image, flag = load_image(item, invert)
        except DataError as exc:
            results.append(Unreadable(str(item), str(exc)))
            continue
        loaded.append((len(results), item, image, flag))
        results.append(None)  # the prediction's place, filled below
    if not loaded:
        return results
    cnn, _, _ = load_promoted("cnn", models_dir, device)
    for start in range(0, len(loaded), BATCH_SIZE):
        batch = loaded[start : start + BATCH_SIZE]
        probs = torch.softmax(cnn(torch.stack([image for _, _, image, _ in batch]).to(device)).float(), dim=1).cpu()
        values, indices = probs.topk(min(top_k, len(CLASSES)), dim=1)
        for (slot, path, _, flag), val, idx in zip(batch, values, indices):
            results[slot] = Prediction(str(path), [(CLASSES[i], p) for i, p in zip(idx.tolist(), val.tolist())], flag)
    return results


def predict_files(paths: Sequence[str | Path], models_dir: str | Path = DEFAULT_MODELS_DIR, invert: bool | None = None,
                  top_k: int = TOP_K, device: str = "cpu") -> list[Prediction]:
    """Top-k classes of each image file by the promoted CNN; raises the DataError of the first bad file."""
    results = predict_each(paths, models_dir, invert, top_k, device)
    for result in results:
        if isinstance(result, Unreadable):
            raise DataError(result.error)
    return results
