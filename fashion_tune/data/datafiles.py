"""The official Fashion-MNIST files: class names, where to find the files, and their verification.

Sources are tried in order: --data-dir / $FASHION_TUNE_DATA, ./data (plain or torchvision's
layout), Debian's dataset-fashion-mnist, and last torchvision's download. Each file's IDX header,
size and SHA-256 are checked, so a missing, truncated or corrupt file is one line naming it and
the fix. `fashion_tune.data.splits` splits what this module loads and feeds it to training.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from fashion_tune.util.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where a file is read, so class names and paths answer at once
    from torch import Tensor

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
    if re.fullmatch(r"\s*[-+]?[0-9]+\s*", name_or_index):  # an index, its sign kept: -1 is out of range
        return class_index(int(name_or_index))
    key = _normalise(name_or_index)
    if key in _NAMES:
        return _NAMES[key]
    matches = sorted({i for name, i in _NAMES.items() if key and name.startswith(key)})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        candidates = ", ".join(CLASSES[i] for i in matches)
        raise ConfigError(f"class {name_or_index!r} is ambiguous (could be {candidates}); {valid}")
    close = difflib.get_close_matches(key, _NAMES, n=3, cutoff=0.6)
    suggestion = dict.fromkeys(CLASSES[_NAMES[name]] for name in close)  # names in order, each once
    hint = f"did you mean {' or '.join(map(repr, suggestion))}? " if suggestion else ""
    raise ConfigError(f"unknown class {name_or_index!r}; {hint}{valid}")


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
    import torch

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
