"""Cutting log-mel features into fixed AST windows (10.24 s = 1024 frames).

Windows start every `hop_frames`; the last one may be partial, in which case it
is zero-padded (AST pads in the log domain) and its valid length recorded, so
nothing at the end of a recording is dropped. A window is *near-silent* when
even its loudest valid frame is below `silence_db` (frame energy in dB of the
summed mel power; digital zero is -48.2 dB, a full-scale sine +27.6 dB, quiet
rendered piano around -16 dB).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  frames: int = 1024
  hop_frames: int = 1024
  silence_db: float = -35.0

  def __post_init__(self):
    # A hop longer than the window would leave audio between windows unseen: the
    # jobs and inference refuse it up front rather than dropping audio.
    if self.frames < 1 or not 1 <= self.hop_frames <= self.frames:
      raise ValueError(f"the window ({self.frames / 100:g} s) must be positive and the hop "
                       f"({self.hop_frames / 100:g} s) positive and at most the window")

  @classmethod
  def from_seconds(cls, window_s: float, hop_s: float,
                   silence_db: float = -35.0) -> WindowConfig:
    """The config of the jobs' `--window_s/--hop_s` (10 ms frames); eval.predict reads
    the same numbers from a run's data metadata, so both must round alike."""
    return cls(frames=round(window_s * 100), hop_frames=round(hop_s * 100),
               silence_db=silence_db)


@dataclasses.dataclass(frozen=True)
class Window:
  index: int
  start_frame: int
  valid_frames: int
  features: np.ndarray  # [frames, mel], zero-padded after valid_frames


def cut(logmel: np.ndarray, config: WindowConfig = WindowConfig()) -> list[Window]:
  """Windows of `logmel` `[frames, mel]`; none for an empty input."""
  total = logmel.shape[0]
  if total == 0:
    return []
  count = 1 + max(0, math.ceil((total - config.frames) / config.hop_frames))
  windows = []
  for i in range(count):
    start = i * config.hop_frames
    valid = min(config.frames, total - start)
    window = np.zeros((config.frames, logmel.shape[1]), dtype=logmel.dtype)
    window[:valid] = logmel[start:start + valid]
    windows.append(Window(index=i, start_frame=start, valid_frames=valid, features=window))
  return windows


def frame_energy_db(logmel: np.ndarray) -> np.ndarray:
  """Per-frame energy in dB of the summed mel power, `[frames]`."""
  peak = logmel.max(axis=1, keepdims=True).astype(np.float64)
  return 10.0 / np.log(10.0) * (peak[:, 0] + np.log(np.exp(logmel - peak).sum(axis=1)))


def is_near_silent(window: Window, config: WindowConfig = WindowConfig()) -> bool:
  return bool(frame_energy_db(window.features[:window.valid_frames]).max() < config.silence_db)
