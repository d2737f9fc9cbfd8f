"""A released model: safetensors parameters and a JSON description, committed to the repository.

  DIR/model.safetensors   flat parameters ("encoder/blocks/0/attention/query/kernel", ...),
                          float16 by default (halves the size; the model computes in float32)
  DIR/release.json        what it is and how to use it: `kind`, the training `config`, the
                          shards' `data_metadata` (window, normalisation, SoundFont), the
                          `step`, the `command` that made it, the parameters' SHA-256, and
                          whatever the exporter adds (decoding thresholds, measured scores)

Users score recordings with it without training (`eval.loading`), and later runs
warm-start from it (`train.warm_start`) instead of re-training on a fresh machine.
Reading checks the SHA-256, so a damaged or hand-edited file is an error, not a model.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from model import params as params_lib

WEIGHTS = "model.safetensors"
ABOUT = "release.json"


class ReleaseError(ValueError):
  """The directory is not a complete, intact release."""


def is_release(path: str | pathlib.Path) -> bool:
  path = pathlib.Path(path)
  return (path / ABOUT).is_file() and (path / WEIGHTS).is_file()


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def write(directory: str | pathlib.Path, params: Mapping[str, Any], about: Mapping[str, Any],
          dtype=np.float16) -> pathlib.Path:
  """Writes `params` (a nested tree) and `about` (must hold `kind`); returns the directory."""
  if "kind" not in about:
    raise ReleaseError("a release says what kind of model it is (about['kind'])")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = {k: np.ascontiguousarray(np.asarray(v, dtype))
          for k, v in sorted(params_lib.flatten(params).items())}
  weights = directory / WEIGHTS
  safetensors.numpy.save_file(flat, str(weights))
  weights.chmod(0o644)  # safetensors writes owner-only; a release is for everyone
  full = {**about, "weights": {"file": WEIGHTS, "sha256": _sha256(weights),
                               "dtype": np.dtype(dtype).name,
                               "parameters": int(sum(v.size for v in flat.values()))}}
  (directory / ABOUT).write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
  return directory


def read(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """(nested float32 parameters, about) of a release, its checksum verified."""
  directory = pathlib.Path(directory)
  if not is_release(directory):
    raise ReleaseError(f"{directory} is not a release (needs {ABOUT} and {WEIGHTS})")
  try:
    about = json.loads((directory / ABOUT).read_text())
    expected = about["weights"]["sha256"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ReleaseError(f"{directory / ABOUT}: unreadable ({type(e).__name__}: {e})") from None
  if _sha256(directory / WEIGHTS) != expected:
    raise ReleaseError(f"{directory / WEIGHTS} does not match the SHA-256 in {ABOUT} (damaged "
                       "or replaced)")
  flat = safetensors.numpy.load_file(str(directory / WEIGHTS))
  return params_lib.unflatten({k: v.astype(np.float32) for k, v in flat.items()}), about
