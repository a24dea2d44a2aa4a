"""Pick the training device (CUDA, then Apple's MPS, then CPU), the precision to train in, and the
memory layout of the training steps."""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags of native bf16 arithmetic: AVX512-BF16 and Intel AMX. Without them bf16 is emulated
# and slower than fp32, so "auto" stays in fp32.
_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def pick_device(preference: str = "auto") -> torch.device:
    """Return the device named by `preference`, or the best one present for "auto"."""
    if preference != "auto":
        return torch.device(check_device(preference))
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str) -> str:
    """`name` if this machine has that device (auto always); else a ConfigError that says what it has."""
    from fashion_tune.util.errors import ConfigError

    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    present = available_devices()
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(f"device {name!r}: this machine has {count or 'no'} CUDA device{'s' if count != 1 else ''}; "
                              f"use one of {', '.join(present)} (auto picks the best)")
    elif device.type == "mps" and "mps" not in present:
        raise ConfigError(f"device {name!r}: this machine has no Apple MPS device; use one of {', '.join(present)}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return name


def available_devices() -> list[str]:
    """The devices this machine can train on, best first, as --device takes them."""
    found = ["auto"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo flags; False where unknown)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in _BF16_CPU_FLAGS)


def cpu_description() -> str:
    """The CPU's model name and which of its vector units decide speed and rounding (avx2, avx512f and
    the bf16 ones), for the records of measurements; platform.processor() where /proc/cpuinfo is missing."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [flag for flag in ("avx2", "avx512f", *sorted(_BF16_CPU_FLAGS)) if flag in flags]
    return f"{name} ({', '.join(units) or 'no avx2'})"


_warned: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"fashion-tune: {message}", file=sys.stderr, flush=True)


def pick_precision(preference: str, device: torch.device) -> str:
    """The precision training steps run in: "bf16" (autocast) or "fp32".

    "auto" means bf16 on a CPU with native bf16 (about 2x the fp32 speed there) and fp32 on every
    other device, so CUDA and MPS runs stay in fp32 unless bf16 is asked for. Validation and
    promotion always run in fp32, whatever training used.
    """
    if preference == "fp32":
        return "fp32"
    if device.type == "cpu" and not cpu_has_native_bf16():
        if preference == "auto":
            _say_once("this CPU has no native bf16 (AVX512-BF16 or AMX): training in fp32")
            return "fp32"
        _say_once("this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated and slower than fp32")
    if device.type == "cpu" or preference == "bf16":
        return "bf16"
    return "fp32"


def pick_memory_format(precision: str, device: torch.device) -> torch.memory_format:
    """The layout of the training steps: channels-last for bf16 on the CPU (oneDNN's native layout for
    bf16 convolutions, where they run fastest), the default layout otherwise.

    In fp32 channels-last was no steady gain on a 2-core AVX2 CPU without bf16 (faster for the small
    VAE shapes, not for the default CNN, slower for the default VAE), so fp32 keeps the default layout.
    """
    return torch.channels_last if device.type == "cpu" and precision == "bf16" else torch.contiguous_format
