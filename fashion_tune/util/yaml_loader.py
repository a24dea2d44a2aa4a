"""The one YAML reader of the project: PyYAML's safe loader, with numbers spelled as Python spells them.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `1e-3`, `1E3` and `+1e-3`
come back as strings, and a config then fails with "lr='1e-3' must be a number". `Loader` adds
one implicit resolver, so every float literal Python's `float()` accepts (`1e-3`, `1E3`, `.5`,
`5.`, `+1e-3`, `1_000.5`) is a float in config files, space files and `--set` values alike.
Words stay strings (`inf`, `nan`: YAML spells them `.inf` and `.nan`), and so do integers and
everything YAML 1.1 already reads. Every place that reads YAML uses `load`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_DIGITS = r"[0-9](?:_?[0-9])*"  # underscores only between digits, as in Python
PYTHON_FLOAT = re.compile(
    rf"^[-+]?(?:(?:{_DIGITS}\.(?:{_DIGITS})?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?|{_DIGITS}[eE][-+]?{_DIGITS})$"
)


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads Python's float spellings as floats."""


# Added after PyYAML's own resolvers, so it only decides what they leave a string.
Loader.add_implicit_resolver("tag:yaml.org,2002:float", PYTHON_FLOAT, list("-+0123456789."))

YAMLError = yaml.YAMLError


def load(text: str) -> Any:
    """The data of a YAML document, read with `Loader` (safe: plain data only)."""
    return yaml.load(text, Loader=Loader)
