"""User-facing errors: each carries one line that names the problem and the fix."""


class FashionTuneError(Exception):
    """An error the CLI prints as a single line (no traceback) before exiting non-zero."""


class DataError(FashionTuneError):
    """The Fashion-MNIST files are missing, truncated or corrupt."""


class ConfigError(FashionTuneError):
    """A config or search space is malformed (unknown key, bad value)."""


class CheckpointError(FashionTuneError):
    """A checkpoint is missing, unreadable or does not match the model."""
