"""Reading PyTorch state dicts from `.safetensors` and pickle files, safely.

Safety: `load_state_dict` reads safetensors, or pickles only through
`torch.load(weights_only=True)`; a pickle that needs anything beyond tensors is
refused, never executed.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from model.convert.errors import (CheckpointNotFoundError, ConversionError, CorruptCheckpointError,
                                  UnknownFormatError, UnsafeCheckpointError)

_SAFETENSORS_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Keys under which training scripts nest the state dict in a checkpoint.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` or PyTorch (`.bin`, `.pt`, `.pth`) file into numpy arrays.

  Pickles go through `torch.load(weights_only=True)` only: PyTorch's restricted
  unpickler rebuilds tensors and plain containers and refuses any other global,
  so a checkpoint cannot run code here. `{"state_dict": ...}` / `{"model": ...}`
  wrappers are unwrapped; a DataParallel `module.` prefix is left for the
  mapping to strip. bfloat16 tensors become float32.

  Raises:
    CheckpointNotFoundError, UnknownFormatError, UnsafeCheckpointError,
    CorruptCheckpointError.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
  if path.is_dir():
    raise UnknownFormatError(f"{path} is a directory; pass the weights file inside it "
                             "(e.g. model.safetensors or pytorch_model.bin)")
  suffix = path.suffix.lower()
  if suffix in _SAFETENSORS_SUFFIXES:
    raw = _load_safetensors(path)
  elif suffix in _PICKLE_SUFFIXES:
    raw = _unwrap(_load_pickle(path), path)
  else:
    raise UnknownFormatError(
        f"{path}: unknown checkpoint extension {path.suffix!r}; expected one of "
        f"{', '.join(_SAFETENSORS_SUFFIXES + _PICKLE_SUFFIXES)}")
  return {key: to_numpy(value, key) for key, value in raw.items()}


def _load_safetensors(path: pathlib.Path) -> Mapping[str, Any]:
  try:
    import safetensors.numpy
  except ImportError as e:
    raise ConversionError(f"{path}: reading .safetensors needs the `safetensors` package") from e
  try:
    return safetensors.numpy.load_file(str(path))
  except TypeError:
    # numpy cannot represent bfloat16; torch can, then `to_numpy` upcasts.
    import safetensors.torch
    return safetensors.torch.load_file(str(path))
  except Exception as e:  # safetensors raises its own SafetensorError (no public base class)
    raise CorruptCheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _load_pickle(path: pathlib.Path) -> Any:
  try:
    import torch
  except ImportError as e:
    raise ConversionError(f"{path}: reading PyTorch pickles needs `torch`; "
                          "or convert the file to .safetensors elsewhere") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # The restricted unpickler cannot tell a hostile pickle from a foreign one
    # (e.g. protocol-4 `pickle.dump` output): both hold more than torch.save writes.
    raise UnsafeCheckpointError(
        f"{path}: the file contains Python objects or code besides tensors (or is not a "
        "torch.save checkpoint), and we refuse to unpickle it: torch.load with "
        f"weights_only=True refused it ({_unpickler_reason(e)}). Re-save the weights as "
        ".safetensors, or as a plain tensor state dict, where you trust the file.") from e
  except Exception as e:  # torch raises KeyError, EOFError, RuntimeError... for damaged files
    raise CorruptCheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                 f"({type(e).__name__}: {e})") from e


def _unpickler_reason(error: Exception) -> str:
  """The part of torch's long refusal message that says what was refused."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  marker = "WeightsUnpickler error:"
  for i, line in enumerate(lines):
    if marker in line:
      reason = line.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
      if reason:
        return reason.split(". ")[0].rstrip(".")
  return lines[0] if lines else type(error).__name__


def _is_tensor(value: Any) -> bool:
  return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _unwrap(obj: Any, path: pathlib.Path) -> Mapping[str, Any]:
  while (isinstance(obj, Mapping) and not all(_is_tensor(v) for v in obj.values())
         and any(isinstance(obj.get(k), Mapping) for k in _CONTAINER_KEYS)):
    obj = next(obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping))
  if not isinstance(obj, Mapping):
    raise UnknownFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  others = [k for k, v in obj.items() if not _is_tensor(v)]
  if others:
    raise UnknownFormatError(f"{path}: not a state dict of tensors; non-tensor entries: "
                             f"{others[:5]}")
  return obj


def to_numpy(value: Any, key: str) -> np.ndarray:
  """A state dict entry (numpy or torch, possibly bfloat16) as a numpy array."""
  if isinstance(value, np.ndarray):
    # safetensors.numpy yields ml_dtypes' bfloat16 when JAX has registered it;
    # numpy's own routines do not treat it as floating point.
    if not np.issubdtype(value.dtype, np.floating) and jnp.issubdtype(value.dtype, jnp.floating):
      return value.astype(np.float32)
    return value
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point() and str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  try:
    return np.asarray(value)
  except Exception as e:
    raise ConversionError(f"{key}: cannot read a {type(value).__name__} as an array") from e
