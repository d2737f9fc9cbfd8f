"""The trainer's ml_collections configs: each file's `get_config(arg)` picks a variant by `arg`.

`--config` is a file path, as `config_flags` reads it. A path under `train/configs/` that does
not exist where the command runs (the project installed from a wheel, run from another
directory) is read from this package instead, so the README's commands work from anywhere.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

_PREFIX = "train/configs/"


def resolve_argv(argv: Sequence[str]) -> list[str]:
  """`argv` with a `--config=train/configs/X.py[:variant]` that is missing here pointed at
  this package's copy; every other argument unchanged."""
  out = []
  for arg in argv:
    name, sep, value = arg.partition("=")
    if name == "--config" and sep and value.startswith(_PREFIX):
      path, colon, variant = value.partition(":")
      bundled = pathlib.Path(__file__).parent / path.removeprefix(_PREFIX)
      if not pathlib.Path(path).exists() and bundled.is_file():
        arg = f"--config={bundled}{colon}{variant}"
    out.append(arg)
  return out
