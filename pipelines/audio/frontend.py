"""Recording -> normalised model windows: the one front end the Beam job and inference share.

  samples --log_mel--> [frames, mel] --windows--> Window([frames, mel]) each
          --stored--> float16 [mel, frames] (the shards) --normalize--> the model's input

The Beam job (pipelines.beam.preprocess) runs `windows` and stores each window;
the Grain input (pipelines.input_pipeline) `normalize`s what it reads; inference
(eval.predict) runs all of it through `model_input`. One copy of each step is
what keeps training and inference bitwise alike (tests/test_predict.py checks
predict's windows against the shards').
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import threadpoolctl

from pipelines.audio import features, windowing
from pipelines.shards import records


def log_mel(samples: np.ndarray) -> np.ndarray:
  """`features.log_mel` with one BLAS thread, as the job's workers run it.

  The mel matmul's summation order depends on the thread count, and a last-bit
  difference can round a value to another float16 in storage. Single-threaded
  it is bitwise the shards' windows, and faster too (0.18 s vs 0.48 s for 120 s,
  measured on 2 cores).
  """
  with threadpoolctl.threadpool_limits(1):
    return features.log_mel(samples)


def windows(samples: np.ndarray, window: windowing.WindowConfig) -> list[windowing.Window]:
  """The windows of a recording (`[frames, mel]` each, unnormalised); [] when it is
  shorter than one 25 ms frame."""
  return windowing.cut(log_mel(samples), window)


def stored(window: windowing.Window) -> np.ndarray:
  """`[mel, frames]` in the shards' storage type: what a record holds."""
  return window.features.T.astype(records.FEATURE_DTYPE)


def normalize(values: np.ndarray, mean: float, std: float) -> np.ndarray:
  """AST's normalisation `(x - mean) / (2 std)` with the training windows' statistics."""
  if not std > 0:
    raise ValueError(f"std must be positive, got {std}")
  values = np.asarray(values)
  if values.dtype in (np.float16, np.float32):
    # One float32 buffer, written twice: the same values as `(x.astype(f32) - mean) / (2 std)`
    # (the scalars round to float32 either way), without that formula's three temporaries of
    # a window each, which cost the input pipeline ~10 % of its throughput.
    out = np.subtract(values, mean, dtype=np.float32)
    out /= 2.0 * std
    return out
  return ((values - mean) / (2.0 * std)).astype(np.float32)


def model_input(windows_: Sequence[windowing.Window], mean: float, std: float) -> np.ndarray:
  """`[n, mel, frames]` float32, exactly as the input pipeline reads the shards: rounded
  through the storage type, then normalised."""
  return normalize(np.stack([stored(w) for w in windows_]).astype(np.float32), mean, std)
