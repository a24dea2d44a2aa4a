"""Tests for fashion_tune.data.datafiles (finding and verifying the files) and fashion_tune.data.splits (splits, batches), on the real Fashion-MNIST files."""

import dataclasses
import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import pytest
import torch

from fashion_tune.util.errors import ConfigError, DataError
from fashion_tune.data import splits as fd
from fashion_tune.data import datafiles as files

pytestmark = pytest.mark.skipif(
    not files.SYSTEM_DATA_DIR.is_dir(),
    reason=f"{files.SYSTEM_DATA_DIR} is absent (`apt-get install dataset-fashion-mnist` provides it)",
)

NAMES = list(files.OFFICIAL_FILES)
REAL_DIR = files.SYSTEM_DATA_DIR  # kept: some tests point SYSTEM_DATA_DIR elsewhere


@pytest.fixture(scope="module")
def real() -> files.FashionMNIST:
    return files.load_fashion_mnist(files.SYSTEM_DATA_DIR, download=False)


@pytest.fixture(scope="module")
def small_splits(real) -> fd.Splits:
    return fd.make_splits(real, subset=2000, val_subset=1000)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $FASHION_TUNE_DATA, an empty cwd, and no system copy: nothing to find implicitly."""
    monkeypatch.delenv(files.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", tmp_path / "no-system-copy")
    return tmp_path


def copy_of_real(directory: Path, skip: str | None = None) -> Path:
    """A data dir holding copies of the real .gz files; skip leaves one out.

    Real copies, not symlinks: a test that overwrites a file must never write through a
    link into the shared system copy.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if name != skip:
            shutil.copyfile(REAL_DIR / f"{name}.gz", directory / f"{name}.gz")
    return directory


def real_bytes(name: str) -> bytes:
    return gzip.decompress((REAL_DIR / f"{name}.gz").read_bytes())


def load_error(directory: Path) -> str:
    with pytest.raises(DataError) as info:
        files.load_fashion_mnist(directory, download=False)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading and verification ---------------------------------------------------------


def test_loads_official_files_with_verified_hashes(real):
    assert real.train_images.shape == (60_000, 28, 28) and real.train_images.dtype == torch.uint8
    assert real.test_images.shape == (10_000, 28, 28) and real.test_images.dtype == torch.uint8
    assert real.train_labels.shape == (60_000,) and real.train_labels.dtype == torch.int64
    assert real.test_labels.shape == (10_000,) and real.test_labels.dtype == torch.int64
    assert real.sha256 == {name: spec.sha256 for name, spec in files.OFFICIAL_FILES.items()}
    assert real.source == files.SYSTEM_DATA_DIR.resolve()
    # Fashion-MNIST is balanced and its first training label is an ankle boot.
    assert torch.bincount(real.train_labels).tolist() == [6000] * 10
    assert torch.bincount(real.test_labels).tolist() == [1000] * 10
    assert int(real.train_labels[0]) == 9
    assert int(real.train_images.max()) == 255


def test_loading_is_cached_per_directory(real):
    assert files.load_fashion_mnist(files.SYSTEM_DATA_DIR, download=False) is real


def test_missing_file_names_dir_and_file(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="t10k-labels-idx1-ubyte")
    message = load_error(directory)
    assert str(directory) in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message


def test_explicit_empty_dir_errors_instead_of_falling_through(tmp_path):
    message = load_error(tmp_path)
    assert str(tmp_path) in message and all(name in message for name in NAMES)


def test_explicit_dir_that_does_not_exist(tmp_path):
    assert "is not a directory" in load_error(tmp_path / "nope")


def test_truncated_gzip(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="train-labels-idx1-ubyte")
    path = directory / "train-labels-idx1-ubyte.gz"
    full = (REAL_DIR / path.name).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    message = load_error(directory)
    assert str(path) in message and "truncated" in message


def test_garbage_gzip(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="train-labels-idx1-ubyte")
    path = directory / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip at all")
    message = load_error(directory)
    assert str(path) in message and "not a valid gzip file" in message


def test_wrong_magic(tmp_path):
    # A labels file saved under an images name: the classic mix-up.
    directory = copy_of_real(tmp_path / "d", skip="t10k-images-idx3-ubyte")
    path = directory / "t10k-images-idx3-ubyte"
    path.write_bytes(real_bytes("t10k-labels-idx1-ubyte"))
    message = load_error(directory)
    assert str(path) in message and "magic number 2049" in message and "labels file" in message


def test_wrong_shape_in_header(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="t10k-labels-idx1-ubyte")
    path = directory / "t10k-labels-idx1-ubyte"
    raw = real_bytes(path.name)
    path.write_bytes(raw[:4] + struct.pack(">I", 9_999) + raw[8:-1])
    message = load_error(directory)
    assert str(path) in message and "shape (9999,)" in message


def test_wrong_length(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="t10k-labels-idx1-ubyte")
    path = directory / "t10k-labels-idx1-ubyte"
    path.write_bytes(real_bytes(path.name) + b"\x00")
    message = load_error(directory)
    assert str(path) in message and "10009 bytes" in message and "expected 10008" in message


def test_wrong_checksum(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="train-labels-idx1-ubyte")
    path = directory / "train-labels-idx1-ubyte.gz"
    raw = bytearray(real_bytes("train-labels-idx1-ubyte"))
    raw[8] = (raw[8] + 1) % 10  # still a valid label, so only the hash can tell
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    message = load_error(directory)
    assert str(path) in message and "SHA-256 mismatch" in message


def test_label_out_of_range(tmp_path, monkeypatch):
    # Only reachable with a matching hash, so pretend the bad file is the official one.
    name = "t10k-labels-idx1-ubyte"
    raw = bytearray(real_bytes(name))
    raw[-1] = 10
    monkeypatch.setitem(
        files.OFFICIAL_FILES,
        name,
        dataclasses.replace(files.OFFICIAL_FILES[name], sha256=hashlib.sha256(raw).hexdigest()),
    )
    directory = copy_of_real(tmp_path / "d", skip=name)
    (directory / name).write_bytes(bytes(raw))
    message = load_error(directory)
    assert str(directory / name) in message and "label 10 is outside 0-9" in message


def test_plain_decompressed_copy_loads(tmp_path, real):
    directory = tmp_path / "plain"
    directory.mkdir()
    for name in NAMES:
        (directory / name).write_bytes(real_bytes(name))
    loaded = files.load_fashion_mnist(directory, download=False)
    assert loaded.source == directory.resolve() and loaded.sha256 == real.sha256
    assert torch.equal(loaded.train_images, real.train_images)
    assert torch.equal(loaded.test_labels, real.test_labels)


def test_plain_file_is_preferred_over_gz(tmp_path):
    directory = copy_of_real(tmp_path / "d", skip="train-labels-idx1-ubyte")
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(b"broken")
    (directory / "train-labels-idx1-ubyte").write_bytes(real_bytes("train-labels-idx1-ubyte"))
    assert files.load_fashion_mnist(directory, download=False).train_labels.shape == (60_000,)


# --- locating ---------------------------------------------------------------------------


def test_env_var_is_used_and_must_hold_the_data(isolated, monkeypatch):
    good = copy_of_real(isolated / "good")
    monkeypatch.setenv(files.ENV_VAR, str(good))
    assert files.locate_data(download=False) == good.resolve()
    # Usable data in ./data must not hide a wrong $FASHION_TUNE_DATA.
    copy_of_real(isolated / "data")
    (isolated / "empty").mkdir()
    monkeypatch.setenv(files.ENV_VAR, str(isolated / "empty"))
    with pytest.raises(DataError, match=r"empty \(from \$FASHION_TUNE_DATA\) lacks"):
        files.locate_data(download=False)


def test_finds_torchvision_layout_and_flat_local_data(isolated):
    flat = copy_of_real(isolated / "data")
    assert files.locate_data(download=False) == flat.resolve()
    nested = copy_of_real(isolated / "data" / "FashionMNIST" / "raw")
    assert files.locate_data(download=False) == nested.resolve()


def test_explicit_dir_accepts_torchvision_layout(tmp_path):
    nested = copy_of_real(tmp_path / "FashionMNIST" / "raw")
    assert files.locate_data(tmp_path, download=False) == nested.resolve()


def test_nothing_found_gives_one_line_with_fixes(isolated):
    with pytest.raises(DataError) as info:
        files.locate_data(download=False)
    message = str(info.value)
    assert "\n" not in message and "download disabled" in message
    assert "apt-get install dataset-fashion-mnist" in message and files.ENV_VAR in message
    assert "--data-dir" in message and "no-system-copy" in message


def test_failed_download_is_reported_not_raised(isolated, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz\nmore detail")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as info:
        files.locate_data(download=True)
    message = str(info.value)
    assert "\n" not in message
    assert "failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz)" in message


# --- splits -----------------------------------------------------------------------------


def test_split_is_stratified_disjoint_complete(real):
    train, val = fd.train_val_split(real.train_labels, val_size=10_000, seed=0)
    assert torch.bincount(real.train_labels[val]).tolist() == [1000] * 10
    assert len(train) == 50_000 and len(val) == 10_000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60_000))
    assert torch.equal(val, val.sort().values)


def test_split_is_stable_and_depends_on_seed(real):
    train_a, val_a = fd.train_val_split(real.train_labels, seed=0)
    train_b, val_b = fd.train_val_split(real.train_labels, seed=0)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    # Pinned values: the split must be the same on every machine and torch version.
    assert val_a[:8].tolist() == [32, 52, 55, 59, 77, 80, 81, 83]
    assert int(val_a.sum()) == 298_547_374
    _, val_c = fd.train_val_split(real.train_labels, seed=1)
    assert not torch.equal(val_a, val_c)


def test_stratified_indices_uses_largest_remainder():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    # Exact shares of 7 are 3.5, 2.1, 1.4: floors 3, 2, 1, and the spare one goes to class 0.
    chosen = fd.stratified_indices(labels, 7, seed=3)
    assert torch.bincount(labels[chosen]).tolist() == [4, 2, 1]
    assert len(set(chosen.tolist())) == 7 and torch.equal(chosen, chosen.sort().values)
    with pytest.raises(ConfigError, match="n=101"):
        fd.stratified_indices(labels, 101, seed=0)
    with pytest.raises(ConfigError, match="n=2"):
        fd.stratified_indices(labels, 2, seed=0)


def test_make_splits_subsets_are_stratified(real, small_splits):
    s = small_splits
    assert s.sizes() == {"train": 2000, "val": 1000, "test": 10_000}
    assert torch.bincount(s.train_y).tolist() == [200] * 10
    assert torch.bincount(s.val_y).tolist() == [100] * 10
    for x in (s.train_x, s.val_x, s.test_x):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(s.test_y, real.test_labels)
    assert torch.equal(s.test_x[:, 0], real.test_images.float() / 255)


def test_make_splits_takes_val_from_held_out_part(real):
    # Stamp each training image with its own index so the chosen rows can be read back.
    index = torch.arange(60_000)
    stamped = torch.zeros(60_000, 28, 28, dtype=torch.uint8)
    stamped[:, 0, 0] = (index % 256).to(torch.uint8)
    stamped[:, 0, 1] = (index // 256).to(torch.uint8)
    fake = files.FashionMNIST(
        stamped, real.train_labels, real.test_images, real.test_labels, Path("."), {}
    )
    s = fd.make_splits(fake, val_size=1000, subset=500, val_subset=100, split_seed=4)

    def rows(x: torch.Tensor) -> set[int]:
        pixels = (x[:, 0, 0, :2] * 255).round().long()
        return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())

    train_idx, val_idx = fd.train_val_split(real.train_labels, 1000, seed=4)
    assert len(rows(s.val_x)) == 100 and rows(s.val_x) <= set(val_idx.tolist())
    assert len(rows(s.train_x)) == 500 and rows(s.train_x) <= set(train_idx.tolist())
    assert torch.equal(s.train_y, real.train_labels[sorted(rows(s.train_x))])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"val_size": 5}, "val_size"),
        ({"val_size": 60_000}, "val_size"),
        ({"subset": 50_001}, "subset"),
        ({"subset": 3}, "subset"),
        ({"val_subset": 10_001}, "val_subset"),
        ({"subset": 1.5}, "subset"),
    ],
)
def test_make_splits_rejects_bad_arguments(real, kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{name}=.*must be an integer in \["):
        fd.make_splits(real, **kwargs)


def test_splits_to_device(small_splits):
    moved = small_splits.to("cpu")
    assert moved.sizes() == small_splits.sizes() and moved.train_x.device.type == "cpu"


def test_describe_counts_default_split(real):
    info = fd.describe(real)
    assert info["source"] == str(real.source) and info["sha256"] == real.sha256
    assert info["counts"]["train"] == dict.fromkeys(files.CLASSES, 5000)
    assert info["counts"]["val"] == dict.fromkeys(files.CLASSES, 1000)
    assert info["counts"]["test"] == dict.fromkeys(files.CLASSES, 1000)


def test_describe_uses_given_splits(real, small_splits):
    info = fd.describe(real, small_splits)
    assert info["sizes"] == {"train": 2000, "val": 1000, "test": 10_000}
    assert info["counts"]["val"]["Bag"] == 100


# --- augmentation -----------------------------------------------------------------------


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(small_splits) -> torch.Tensor:
    return small_splits.train_x[:64]


def test_flip_really_flips_about_half(batch):
    out = fd.batch_flip_lr(batch, gen())
    flipped = (out == batch.flip(-1)).all((1, 2, 3))
    kept = (out == batch).all((1, 2, 3))
    assert bool((flipped | kept).all())
    assert 10 < int((flipped & ~kept).sum()) < 54 and int((kept & ~flipped).sum()) > 10


def test_crop_pad_zero_is_identity(batch):
    assert torch.equal(fd.batch_crop(batch, 0, gen()), batch)


def shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: move img by (dy, dx) pixels, filling with zeros."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_crop_is_a_random_shift_within_pad(batch):
    out = fd.batch_crop(batch, 2, gen())
    assert out.shape == batch.shape
    shifts = set()
    for img, res in zip(batch[:16], out[:16]):
        offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
        matches = [d for d in offsets if torch.equal(shift(img, *d), res)]
        assert matches, "output is not a shift of its input by at most 2 pixels"
        shifts.add(matches[0])
    assert len(shifts) > 3  # shifts really vary between images


def test_random_erase_zeroes_one_rectangle():
    x = torch.rand(32, 1, 28, 28, generator=gen(1)) + 0.1  # no zeros before erasing
    out = fd.batch_random_erase(x, 1.0, gen(), scale=(0.02, 0.2))
    assert torch.equal(fd.batch_random_erase(x, 0.0, gen()), x)
    for before, after in zip(x[:, 0], out[:, 0]):
        zero = after == 0
        assert torch.equal(after[~zero], before[~zero])
        rows, cols = zero.nonzero(as_tuple=True)
        area = int(zero.sum())
        assert 0.01 * 784 <= area <= 0.25 * 784
        box = (int(rows.max() - rows.min()) + 1) * (int(cols.max() - cols.min()) + 1)
        assert box == area  # the erased pixels form a filled rectangle


def test_augment_keeps_shape_range_and_is_deterministic(batch):
    augment = fd.Augment(crop_pad=2, flip=True, erase_prob=0.5)
    assert augment.enabled and not fd.Augment().enabled
    a, b = augment(batch, gen(7)), augment(batch, gen(7))
    assert torch.equal(a, b) and not torch.equal(a, augment(batch, gen(8)))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert not torch.equal(a, batch)


def test_augment_rejects_bad_values():
    with pytest.raises(ConfigError, match="crop_pad"):
        fd.Augment(crop_pad=-1)
    with pytest.raises(ConfigError, match="erase_prob"):
        fd.Augment(erase_prob=1.5)


# --- batches ----------------------------------------------------------------------------


def test_batch_loader_covers_every_index_once_per_epoch():
    x = torch.arange(103).float().view(-1, 1, 1, 1)
    y = torch.arange(103)
    loader = fd.BatchLoader(x, y, batch_size=10, generator=gen())
    assert len(loader) == 11
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 11 and [len(yb) for _, yb in batches][-1] == 3
        seen = torch.cat([yb for _, yb in batches])
        assert torch.equal(seen.sort().values, torch.arange(103))
        assert torch.equal(torch.cat([xb.view(-1) for xb, _ in batches]).long(), seen)
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    same = torch.cat([yb for _, yb in fd.BatchLoader(x, y, 10, generator=gen())])
    assert torch.equal(same, epochs[0])  # same seed, same order


def test_batch_loader_never_yields_a_batch_of_one():
    # 1025 images in batches of 128: the last image joins the batch before it (BatchNorm needs two).
    x, y = torch.arange(1025).float(), torch.zeros(1025, dtype=torch.long)
    loader = fd.BatchLoader(x, y, batch_size=128, generator=torch.Generator().manual_seed(0))
    sizes = [len(xb) for xb, _ in loader]
    assert len(loader) == len(sizes) == 8 and sizes[-1] == 129 and min(sizes) == 128
    assert sorted(torch.cat([xb for xb, _ in loader]).tolist()) == list(range(1025))
    assert [len(xb) for xb, _ in fd.BatchLoader(x[:1], y[:1], batch_size=1)] == [1]  # one image is all there is
    assert [len(xb) for xb, _ in fd.BatchLoader(x[:130], y[:130], batch_size=128)] == [128, 2]


def test_batch_loader_drop_last_and_no_shuffle():
    y = torch.arange(103)
    loader = fd.BatchLoader(y.float(), y, batch_size=10, shuffle=False, drop_last=True)
    assert len(loader) == 10
    assert torch.equal(torch.cat([yb for _, yb in loader]), torch.arange(100))


def test_batch_loader_applies_augment(small_splits):
    x, y = small_splits.train_x[:100], small_splits.train_y[:100]
    loader = fd.BatchLoader(x, y, 50, shuffle=False, augment=fd.Augment(flip=True), generator=gen())
    xb, yb = next(iter(loader))
    assert xb.shape == (50, 1, 28, 28) and torch.equal(yb, y[:50])
    assert not torch.equal(xb, x[:50])
    assert bool(((xb == x[:50]) | (xb == x[:50].flip(-1))).all())


# --- class names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, index",
    [
        ("T-shirt/top", 0),
        ("tshirt", 0),
        ("t-shirt", 0),
        ("TROUSER", 1),
        ("pull", 2),
        ("sneak", 7),
        ("Shirt", 6),
        ("boot", 9),
        ("ankle-boot", 9),
        ("Ankle boot", 9),
        (3, 3),
        ("3", 3),
    ],
)
def test_class_index_accepts_names_aliases_and_indices(given, index):
    assert files.class_index(given) == index


@pytest.mark.parametrize("given", ["banana", "s", "", 10, -1, "11", True, 2.0])
def test_class_index_rejects_garbage(given):
    with pytest.raises(ConfigError, match="Ankle boot"):
        files.class_index(given)
