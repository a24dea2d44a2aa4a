"""Classify image files with the promoted CNN: any size or mode, made to look like Fashion-MNIST.

Fashion-MNIST items are light on a black background, centred in 28x28 grey. A photo or a
product shot is usually dark on white, so an image whose border is light is inverted (turn it
off with `invert=False`); it is padded to a square with its background colour and resized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from fashion_tune.datafiles import CLASSES, IMAGE_SIZE
from fashion_tune.errors import DataError
from fashion_tune.promoted import DEFAULT_MODELS_DIR, load_promoted

TOP_K = 3


@dataclass
class Prediction:
    """The top classes of one image file, with the judge's probabilities."""

    path: str
    top: list[tuple[str, float]]
    inverted: bool

    def as_dict(self) -> dict:
        return {"path": self.path, "inverted": self.inverted,
                "top": [{"class": name, "probability": round(p, 6)} for name, p in self.top]}


def load_image(path: str | Path, invert: bool | None = None) -> tuple[torch.Tensor, bool]:
    """A (1, 28, 28) tensor in [0, 1] from an image file, and whether it was inverted.

    invert=None inverts when the image's border is mostly light (a light background).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
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
def predict_files(paths: Sequence[str | Path], models_dir: str | Path = DEFAULT_MODELS_DIR, invert: bool | None = None,
                  top_k: int = TOP_K, device: str = "cpu") -> list[Prediction]:
    """Top-k classes of each image file by the promoted CNN; every file is read before the model runs."""
    images, flags = zip(*(load_image(path, invert) for path in paths))
    cnn, _, _ = load_promoted("cnn", models_dir, device)
    probs = torch.softmax(cnn(torch.stack(images).to(device)).float(), dim=1).cpu()
    values, indices = probs.topk(min(top_k, len(CLASSES)), dim=1)
    return [Prediction(str(path), [(CLASSES[i], p) for i, p in zip(idx.tolist(), val.tolist())], flag)
            for path, val, idx, flag in zip(paths, values, indices, flags)]
