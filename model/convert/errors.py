"""What can go wrong turning PyTorch weights into our parameters.

Every error is a `ConversionError`, itself a `ValueError`, so the command line
(and any caller) catches them all with one `except`. `CheckpointNotFoundError`
is also the trainer's (`train.checkpointing` re-exports it): a missing weights
file and a missing training checkpoint are the same failure to a caller, and
both are `FileNotFoundError`s.
"""

from __future__ import annotations


class ConversionError(ValueError):
  """Base class: the weights cannot be turned into our parameters."""


class CheckpointNotFoundError(ConversionError, FileNotFoundError):
  """The checkpoint (a weights file, or a training run's checkpoint) does not exist."""


class UnknownFormatError(ConversionError):
  """The file extension, or the key layout of the state dict, is not one we read."""


class UnsafeCheckpointError(ConversionError):
  """The pickle holds Python objects or code besides tensors; we refuse to unpickle it."""


class CorruptCheckpointError(ConversionError):
  """The file has a supported extension but cannot be decoded."""


class ShapeMismatchError(ConversionError):
  """A tensor's shape does not match what the config implies."""


class ConfigMismatchError(ConversionError):
  """A property of the weights (depth, token count, grid) contradicts the config."""


class MissingWeightsError(ConversionError):
  """Target parameters have no source tensor (raised when `strict=True`)."""


class StructureMismatchError(ConversionError):
  """`merge_into`: the converted tree does not fit the initialised one."""
