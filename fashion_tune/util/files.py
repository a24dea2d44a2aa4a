"""Small files written and read safely: atomic writes, JSON, JSON lines and numbers as text.

- `atomic_write` / `write_text` / `write_json`: a temporary file beside the target, fsynced, then
  renamed over it, so a reader or a crash never sees half a file.
- `make_temp_dir`: a new, uniquely named directory to fill and then publish by a rename.
  Both get the permissions of a plain `open` or `mkdir` under the process's umask (0644 and 0755
  under umask 022), not `tempfile`'s private 0600 and 0700: teammates can read what is published.
- JSON has one policy for what plain JSON cannot hold (`jsonable`): non-finite floats become the
  strings "inf", "-inf" and "nan", paths become strings and tensors lists.
- JSON lines (`read_jsonl`, `append_jsonl`): one record per line; a line that does not parse (the
  one a live process is writing) is skipped.
- `format_number`: how a metric looks in tables and messages.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask can only set it,
    and setting it for a moment would race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode `open` (0666) or `mkdir` (0777) would give a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_temp_dir(prefix: str, suffix: str = "", dir: str | Path | None = None) -> Path:
    """`tempfile.mkdtemp` (a new, uniquely named directory) with the umask's mode instead of 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    os.chmod(path, umask_mode(directory=True))
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call write(f) on a binary temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the umask's mode, as `open` would give it (mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish a file whose data is not on disk yet
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Replace the file at `path` with `text`, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_synced(path: str | Path, text: str) -> None:
    """Write a file in place and fsync it: for files inside a directory that is published by a rename."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory: the names created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- JSON ------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """`value` with Paths, tensors and non-finite floats (as "inf", "-inf", "nan") made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist"):  # tensors and numpy values
        return jsonable(value.tolist())
    return value


def json_text(data: Any) -> str:
    """`data` as indented JSON (with `jsonable`'s policy) and a final newline."""
    return json.dumps(jsonable(data), indent=2, allow_nan=False, default=str) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """Replace the file at `path` with `data` as JSON, atomically."""
    return write_text(path, json_text(data))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in a file; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- JSON lines ------------------------------------------------------------------------------


def parse_jsonl(text: str) -> list[Any]:
    """The records of JSON-lines text; a line that does not parse (being written right now) is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file; [] when there is no file yet."""
    try:
        return parse_jsonl(Path(path).read_text())
    except OSError:
        return []


def append_jsonl(path: str | Path, record: Any) -> None:
    """Add one record to a JSON-lines file (one write, so a concurrent reader sees whole lines or none)."""
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(record), default=str) + "\n")


# --- numbers as text ---------------------------------------------------------------------------


def format_number(value: Any, digits: int = 4) -> str:
    """A float with `digits` decimals, None as "-", anything else as str()."""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def format_short(value: Any) -> str:
    """A float in 4 significant digits (for config values such as lr), anything else as str()."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def is_uri(storage: str) -> bool:
    """True for `scheme://...` storage (s3://, gs://, abfs://, ...), which every node reaches itself."""
    scheme, sep, _ = str(storage).partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"
