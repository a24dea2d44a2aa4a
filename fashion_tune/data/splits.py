"""Fashion-MNIST for training: the validation split, stratified subsets, augmentation and batches.

The pipeline follows airbench: each split lives as one tensor on the training device, the
loader shuffles indices, and augmentation runs on whole batches with tensor ops. All
randomness comes from explicit CPU `torch.Generator`s, so a seed gives the same split,
order and augmentation on every machine and device. The files themselves are found and
verified by `fashion_tune.data.datafiles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from fashion_tune.util.errors import ConfigError
from fashion_tune.data.datafiles import CLASSES, NUM_CLASSES, FashionMNIST


# ---------------------------------------------------------------------------------------
# Splits


def _check_count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is invalid; it must be an integer in [{low}, {high}]")
    return value


def stratified_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """n indices into labels, per class in proportion to the class sizes, sorted ascending.

    Counts use the largest-remainder method, so they sum to n and differ from the exact
    proportions by less than one; which members of each class are taken depends on seed.
    """
    labels = labels.detach().cpu().long()
    class_sizes = torch.bincount(labels)
    classes = class_sizes.nonzero().squeeze(1)
    class_sizes = class_sizes[classes]
    _check_count("n", n, len(classes), len(labels))

    quotas = class_sizes.double() * n / len(labels)
    counts = quotas.floor().long()
    shortfall = n - int(counts.sum())
    # Stable sort: ties in the remainder go to the lower class, the same on every machine.
    by_remainder = torch.sort(quotas - counts, descending=True, stable=True).indices
    counts[by_remainder[:shortfall]] += 1

    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, count in zip(classes.tolist(), counts.tolist()):
        members = (labels == cls).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def train_val_split(labels: Tensor, val_size: int = 10_000, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Disjoint (train, val) index tensors covering all of labels; val is stratified."""
    labels = labels.detach().cpu()
    classes = int((torch.bincount(labels) > 0).sum())
    _check_count("val_size", val_size, classes, len(labels) - classes)
    val = stratified_indices(labels, val_size, seed)
    in_val = torch.zeros(len(labels), dtype=torch.bool)
    in_val[val] = True
    return (~in_val).nonzero().squeeze(1), val


@dataclass
class Splits:
    """Train, validation and test tensors: x float32 (N, 1, 28, 28) in [0, 1], y int64."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def to(self, device: torch.device | str) -> Splits:
        """The same splits on device (one copy per tensor, then batches are just indexing)."""
        return Splits(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def _as_inputs(images: Tensor) -> Tensor:
    return images.unsqueeze(1).float().div_(255)


def make_splits(
    data: FashionMNIST,
    val_size: int = 10_000,
    split_seed: int = 0,
    subset: int | None = None,
    val_subset: int | None = None,
    subset_seed: int = 0,
) -> Splits:
    """Hold val_size stratified examples out of the 60k training set; test is always all 10k.

    `subset` and `val_subset` shrink only the training and validation parts (stratified,
    seeded by subset_seed), for quick trials; the split itself depends on split_seed only.
    """
    train_idx, val_idx = train_val_split(data.train_labels, val_size, split_seed)
    if subset is not None:
        _check_count("subset", subset, NUM_CLASSES, len(train_idx))
        train_idx = train_idx[stratified_indices(data.train_labels[train_idx], subset, subset_seed)]
    if val_subset is not None:
        _check_count("val_subset", val_subset, NUM_CLASSES, len(val_idx))
        val_idx = val_idx[stratified_indices(data.train_labels[val_idx], val_subset, subset_seed)]
    return Splits(
        train_x=_as_inputs(data.train_images[train_idx]),
        train_y=data.train_labels[train_idx].clone(),
        val_x=_as_inputs(data.train_images[val_idx]),
        val_y=data.train_labels[val_idx].clone(),
        test_x=_as_inputs(data.test_images),
        test_y=data.test_labels.clone(),
    )


# ---------------------------------------------------------------------------------------
# Batch augmentation: random numbers are drawn on the CPU generator, then moved to the
# batch's device, so the same seed gives the same batches on CPU, CUDA and MPS.


def _check_pad(name: str, pad: object) -> None:
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ConfigError(f"{name}={pad!r} is invalid; it must be an integer >= 0")


def batch_flip_lr(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of the images (N, C, H, W) left to right."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to pad pixels in each direction, filling with zeros.

    Equivalent to a random HxW crop of the image zero-padded by pad on every side.
    """
    _check_pad("pad", pad)
    if pad == 0:
        return x
    n, _, height, width = x.shape
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = top.view(n, 1, 1) + torch.arange(height, device=x.device).view(1, height, 1)
    cols = left.view(n, 1, 1) + torch.arange(width, device=x.device).view(1, 1, width)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indices around a slice put their broadcast dims first: (N, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def batch_random_erase(
    x: Tensor,
    prob: float,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.2),
) -> Tensor:
    """With probability prob per image, set a random rectangle covering scale of it to 0.

    Aspect ratios are log-uniform in [0.3, 3.3] as in torchvision's RandomErasing.
    """
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"erase prob={prob!r} is invalid; it must be in [0, 1]")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"erase scale={scale!r} is invalid; it needs 0 < low <= high <= 1")
    if prob == 0.0:
        return x
    n, _, height, width = x.shape
    chosen = torch.rand(n, generator=generator) < prob
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator) * height * width
    log_ratio = torch.empty(n).uniform_(math.log(0.3), math.log(3.3), generator=generator)
    h = (area * log_ratio.exp()).sqrt().round().long().clamp(1, height)
    w = (area / log_ratio.exp()).sqrt().round().long().clamp(1, width)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).long()

    def as_column(t: Tensor) -> Tensor:
        return t.to(x.device).view(n, 1, 1)

    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    erase = (
        as_column(chosen)
        & (rows >= as_column(top))
        & (rows < as_column(top + h))
        & (cols >= as_column(left))
        & (cols < as_column(left + w))
    )
    return x.masked_fill(erase.unsqueeze(1), 0.0)


@dataclass
class Augment:
    """Training-time augmentation applied to whole batches: crop, then flip, then erase."""

    crop_pad: int = 0
    flip: bool = False
    erase_prob: float = 0.0

    def __post_init__(self) -> None:
        _check_pad("crop_pad", self.crop_pad)
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ConfigError(f"erase_prob={self.erase_prob!r} is invalid; it must be in [0, 1]")

    @property
    def enabled(self) -> bool:
        """Whether calling this changes anything."""
        return self.crop_pad > 0 or self.flip or self.erase_prob > 0

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.crop_pad > 0:
            x = batch_crop(x, self.crop_pad, generator)
        if self.flip:
            x = batch_flip_lr(x, generator)
        if self.erase_prob > 0:
            x = batch_random_erase(x, self.erase_prob, generator)
        return x


# ---------------------------------------------------------------------------------------
# Loading batches


def batch_count(images: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches per epoch of a `BatchLoader` over `images` images (what a per-step lr schedule spans)."""
    full, rest = divmod(images, batch_size)
    if drop_last or (rest == 1 and full > 0):
        # A last batch of one image would break BatchNorm in training mode (a statistic of
        # one value); that image joins the batch before it instead.
        return full
    return full + (rest > 0)


class BatchLoader:
    """Batches of a split that already sits on its device, reshuffled every epoch."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ConfigError(f"BatchLoader got {len(x)} inputs but {len(y)} labels; give one each")
        _check_count("batch_size", batch_size, 1, max(1, len(x)))
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        if generator is None:
            # Seeded from the global RNG, so torch.manual_seed still makes runs repeatable.
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        self.generator = generator

    def __len__(self) -> int:
        return batch_count(len(self.x), self.batch_size, self.drop_last)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        else:
            order = torch.arange(len(self.x), device=self.x.device)
        batches = len(self)
        for i in range(batches):
            end = len(self.x) if i == batches - 1 and not self.drop_last else (i + 1) * self.batch_size
            idx = order[i * self.batch_size : end]
            xb, yb = self.x[idx], self.y[idx]
            if self.augment is not None and self.augment.enabled:
                xb = self.augment(xb, self.generator)
            yield xb, yb


# ---------------------------------------------------------------------------------------
# Summary for `fashion-tune data`


def _class_counts(labels: Tensor) -> dict[str, int]:
    counts = torch.bincount(labels.detach().cpu(), minlength=NUM_CLASSES).tolist()
    return dict(zip(CLASSES, counts))


def describe(data: FashionMNIST, splits: Splits | None = None) -> dict:
    """Source, verified hashes and per-class counts of train/val/test (default split if none)."""
    if splits is None:
        # Only the labels are needed; avoid building the float image tensors.
        train_idx, val_idx = train_val_split(data.train_labels)
        labels = {
            "train": data.train_labels[train_idx],
            "val": data.train_labels[val_idx],
            "test": data.test_labels,
        }
    else:
        labels = {"train": splits.train_y, "val": splits.val_y, "test": splits.test_y}
    return {
        "source": str(data.source),
        "sha256": dict(data.sha256),
        "sizes": {name: len(y) for name, y in labels.items()},
        "counts": {name: _class_counts(y) for name, y in labels.items()},
    }
