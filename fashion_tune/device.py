"""Pick the training device: CUDA, then Apple's MPS, then CPU."""

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """Return the device named by `preference`, or the best one present for "auto"."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
