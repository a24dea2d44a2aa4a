"""Fashion-MNIST: find the official files, verify them, split them, and feed batches.

The pipeline follows airbench: each split lives as one tensor on the training device, the
loader shuffles indices, and augmentation runs on whole batches with tensor ops. All
randomness comes from explicit CPU `torch.Generator`s, so a seed gives the same split,
order and augmentation on every machine and device.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from fashion_tune.errors import ConfigError, DataError

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASSES)
IMAGE_SIZE = 28

SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
ENV_VAR = "FASHION_TUNE_DATA"
LOCAL_DATA_DIR = Path("data")  # where torchvision's download puts things, relative to the cwd
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"

INSTALL_HINT = "`apt-get install dataset-fashion-mnist`"
REPLACE_HINT = f"delete it and re-run, or reinstall with {INSTALL_HINT}"


# ---------------------------------------------------------------------------------------
# Class names


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Names people actually type that are not prefixes of the official ones.
_ALIASES: dict[str, int] = {"tee": 0, "top": 0, "trousers": 1, "pants": 1, "boot": 9}
_NAMES: dict[str, int] = {_normalise(name): i for i, name in enumerate(CLASSES)} | _ALIASES


def class_index(name_or_index: str | int) -> int:
    """Index of a class given its index, name, alias ("tshirt", "boot") or unique prefix."""
    valid = f"use an index 0-{NUM_CLASSES - 1} or one of: " + ", ".join(CLASSES)
    if isinstance(name_or_index, int) and not isinstance(name_or_index, bool):
        if 0 <= name_or_index < NUM_CLASSES:
            return name_or_index
        raise ConfigError(f"class index {name_or_index} is out of range; {valid}")
    if not isinstance(name_or_index, str):
        raise ConfigError(f"class {name_or_index!r} is not a name or an index; {valid}")
    key = _normalise(name_or_index)
    if key.isdigit():
        return class_index(int(key))
    if key in _NAMES:
        return _NAMES[key]
    matches = sorted({i for name, i in _NAMES.items() if key and name.startswith(key)})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        candidates = ", ".join(CLASSES[i] for i in matches)
        raise ConfigError(f"class {name_or_index!r} is ambiguous (could be {candidates}); {valid}")
    raise ConfigError(f"unknown class {name_or_index!r}; {valid}")


# ---------------------------------------------------------------------------------------
# The official files


@dataclass(frozen=True)
class IdxFile:
    """One official IDX file: its magic number, shape and SHA-256 of the decompressed bytes."""

    name: str
    magic: int
    shape: tuple[int, ...]
    sha256: str

    @property
    def header_size(self) -> int:
        return 4 + 4 * len(self.shape)  # magic, then one big-endian uint32 per dimension

    @property
    def size(self) -> int:
        return self.header_size + math.prod(self.shape)


IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# Hashes of the decompressed files from Debian's dataset-fashion-mnist, which are
# byte-identical to zalandoresearch/fashion-mnist's official release.
OFFICIAL_FILES: dict[str, IdxFile] = {
    f.name: f
    for f in (
        IdxFile(
            "train-images-idx3-ubyte",
            IMAGES_MAGIC,
            (60_000, IMAGE_SIZE, IMAGE_SIZE),
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        IdxFile(
            "train-labels-idx1-ubyte",
            LABELS_MAGIC,
            (60_000,),
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        IdxFile(
            "t10k-images-idx3-ubyte",
            IMAGES_MAGIC,
            (10_000, IMAGE_SIZE, IMAGE_SIZE),
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte",
            LABELS_MAGIC,
            (10_000,),
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    )
}


# ---------------------------------------------------------------------------------------
# Finding the files


def _data_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The file to read for each official name (plain before .gz), and the names missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in OFFICIAL_FILES:
        # The decompressed copy is preferred: it reads without paying for gunzip.
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def _has_data(directory: Path) -> bool:
    return directory.is_dir() and not _data_files(directory)[1]


def _explicit_dir(directory: Path, given_as: str) -> Path:
    """An explicitly named directory must hold the data; it is never silently skipped."""
    for candidate in (directory, directory / TORCHVISION_SUBDIR):
        if _has_data(candidate):
            return candidate.resolve()
    if not directory.is_dir():
        raise DataError(
            f"{directory} (from {given_as}) is not a directory; point it at a folder with the "
            f"4 Fashion-MNIST IDX files, or install them with {INSTALL_HINT}"
        )
    missing = ", ".join(f"{name}[.gz]" for name in _data_files(directory)[1])
    raise DataError(
        f"{directory} (from {given_as}) lacks {missing}; copy the official Fashion-MNIST files "
        f"there, or point it at {SYSTEM_DATA_DIR} after {INSTALL_HINT}"
    )


def _download(root: Path) -> str | None:
    """Let torchvision fetch the files into root; returns why it failed, or None."""
    try:
        from torchvision import datasets

        datasets.FashionMNIST(root=str(root), download=True)
    except Exception as exc:  # offline, DNS, HTTP, disk: all mean "no download", not a crash
        detail = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {detail[0] if detail else 'no detail'}"
    return None


def locate_data(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Directory holding the 4 Fashion-MNIST files (as NAME or NAME.gz).

    Looks at `data_dir`, then $FASHION_TUNE_DATA, ./data (also torchvision's
    ./data/FashionMNIST/raw), the Debian copy in SYSTEM_DATA_DIR, and finally lets
    torchvision download into ./data when `download` is true.
    """
    if data_dir is not None:
        return _explicit_dir(Path(data_dir), "--data-dir")
    env_dir = os.environ.get(ENV_VAR, "").strip()
    if env_dir:
        return _explicit_dir(Path(env_dir), f"${ENV_VAR}")

    implicit = (LOCAL_DATA_DIR / TORCHVISION_SUBDIR, LOCAL_DATA_DIR, SYSTEM_DATA_DIR)
    for candidate in implicit:
        if _has_data(candidate):
            return candidate.resolve()

    if download:
        failure = _download(LOCAL_DATA_DIR)
        if failure is None and _has_data(LOCAL_DATA_DIR / TORCHVISION_SUBDIR):
            return (LOCAL_DATA_DIR / TORCHVISION_SUBDIR).resolve()
        failure = failure or "files still missing afterwards"
        download_note = f"download into ./{LOCAL_DATA_DIR} failed ({failure})"
    else:
        download_note = "download disabled"
    looked = ", ".join(str(p.absolute()) for p in implicit)
    raise DataError(
        f"Fashion-MNIST not found (looked in ${ENV_VAR} (unset), {looked}; {download_note}); "
        f"fix: {INSTALL_HINT}, or pass --data-dir DIR / set {ENV_VAR}=DIR to a folder with the "
        f"4 IDX files, or connect to the internet so torchvision can download them"
    )


# ---------------------------------------------------------------------------------------
# Reading and verifying


@dataclass(frozen=True, eq=False)  # eq=False: compare by identity, tensors have no bool ==
class FashionMNIST:
    """The verified official dataset, as uint8 images and int64 labels on the CPU."""

    train_images: Tensor  # uint8 (60000, 28, 28)
    train_labels: Tensor  # int64 (60000,)
    test_images: Tensor  # uint8 (10000, 28, 28)
    test_labels: Tensor  # int64 (10000,)
    source: Path
    sha256: dict[str, str]  # official file name -> verified SHA-256 of its decompressed bytes


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {REPLACE_HINT}")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except EOFError:
        raise _corrupt(path, "gzip stream ends early, the file is truncated") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise _corrupt(path, f"not a valid gzip file ({exc})") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise DataError(f"{path}: cannot read ({reason}); check its permissions") from None


def _read_idx(path: Path, spec: IdxFile) -> tuple[Tensor, str]:
    """Read one IDX file and check it is exactly the official one; returns (tensor, sha256)."""
    raw = _read_bytes(path)

    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic != spec.magic:
        kind = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(magic, "not IDX")
        raise _corrupt(
            path,
            f"wrong IDX magic number {magic} (expected {spec.magic}; this is {kind}), "
            f"the file is not {spec.name}",
        )
    ndim = len(spec.shape)
    header_ok = len(raw) >= spec.header_size
    dims = struct.unpack(f">{ndim}I", raw[4 : spec.header_size]) if header_ok else ()
    if tuple(dims) != spec.shape:
        raise _corrupt(path, f"header says shape {tuple(dims)}, expected {spec.shape}")
    if len(raw) != spec.size:
        raise _corrupt(
            path,
            f"{len(raw)} bytes after decompression, expected {spec.size} "
            f"(the file is truncated or padded)",
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise _corrupt(
            path,
            f"SHA-256 mismatch ({digest[:12]}..., expected {spec.sha256[:12]}...), "
            f"the file is corrupt or not the official Fashion-MNIST",
        )
    # bytearray makes the buffer writable, so torch shares it instead of warning.
    values = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=spec.header_size)
    values = values.reshape(spec.shape)
    if spec.magic == LABELS_MAGIC:
        top = int(values.max())
        if top >= NUM_CLASSES:
            raise _corrupt(path, f"label {top} is outside 0-{NUM_CLASSES - 1}")
        values = values.long()
    return values, digest


_CACHE: dict[Path, FashionMNIST] = {}


def load_fashion_mnist(data_dir: str | Path | None = None, download: bool = True) -> FashionMNIST:
    """Locate, read and verify Fashion-MNIST; loaded once per directory and process."""
    source = locate_data(data_dir, download)
    if source in _CACHE:
        return _CACHE[source]
    paths, _ = _data_files(source)
    tensors: dict[str, Tensor] = {}
    hashes: dict[str, str] = {}
    for name, spec in OFFICIAL_FILES.items():
        tensors[name], hashes[name] = _read_idx(paths[name], spec)
    data = FashionMNIST(
        train_images=tensors["train-images-idx3-ubyte"],
        train_labels=tensors["train-labels-idx1-ubyte"],
        test_images=tensors["t10k-images-idx3-ubyte"],
        test_labels=tensors["t10k-labels-idx1-ubyte"],
        source=source,
        sha256=hashes,
    )
    _CACHE[source] = data
    return data


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
        full, rest = divmod(len(self.x), self.batch_size)
        if self.drop_last or (rest == 1 and full > 0):
            # A last batch of one image would break BatchNorm in training mode (a statistic of
            # one value); that image joins the batch before it instead.
            return full
        return full + (rest > 0)

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
