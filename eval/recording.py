"""What scoring a recording needs before and after a model: its samples, its windows, the result.

`eval.predict` (the window model), `eval.notes_perception` (the notes model) and
`eval.transcribe` all read recordings the way the preprocessing job does and
return the same `Prediction`; they share this module so that none of them has to
import another's command line (the notes model is what `eval.predict` runs by
default, so `eval.predict` imports it, not the other way round).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable

import numpy as np

from pipelines.audio import decode, features, frontend, render, windowing
from pipelines.datasets import percepiano, taxonomy

# Labels are mean ratings / 7 (see model/targets.py): x 7 gives the questionnaire's 1-7 scale.
RATING_SCALE = percepiano.RATING_SCALE
MIDI_EXTENSIONS = (".mid", ".midi")
SAMPLE_RATE = decode.TARGET_SAMPLE_RATE
FRAMES_PER_SECOND = 1000.0 / features.AST.frame_shift_ms

# Called after every batch: (windows done, windows total, seconds of audio they cover).
Progress = Callable[[int, int, float], None]


class SilentInputError(decode.AudioError):
  """Every window of the recording is near-silent: there is no playing to rate."""


class NonFinitePredictionError(ValueError):
  """The model returned NaN or infinity for a recording (a broken checkpoint)."""


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
  """How the training windows were made; inference must repeat it exactly."""

  window: windowing.WindowConfig
  mean: float  # the shards' normalisation statistics of the log-mel values
  std: float
  soundfont: str | None = None  # None: the default SoundFont (as the job)
  soundfont_sha256: str | None = None  # the training renders' SoundFont, if known

  @classmethod
  def from_metadata(cls, data_metadata: dict, *, hop_s: float | None = None,
                    soundfont: str | None = None) -> FeatureSettings:
    """From a run's `data_metadata.json`; `hop_s` overrides the training hop."""
    config = data_metadata["config"]
    window = windowing.WindowConfig.from_seconds(
        config["window_s"], config["hop_s"] if hop_s is None else hop_s,
        config.get("silence_db", windowing.WindowConfig.silence_db))
    norm = data_metadata["normalization"]
    # Trained on several SoundFonts (--soundfonts): MIDI inputs render with the first, and
    # no single checksum stands for the training timbre.
    several = [None if f == "default" else f for f in config.get("soundfonts") or []]
    return cls(window=window, mean=float(norm["mean"]), std=float(norm["std"]),
               soundfont=soundfont if soundfont is not None else
               (several[0] if several else config.get("soundfont")),
               soundfont_sha256=data_metadata.get("soundfont_sha256"))

  @property
  def window_s(self) -> float:
    return self.window.frames / FRAMES_PER_SECOND

  @property
  def hop_s(self) -> float:
    return self.window.hop_frames / FRAMES_PER_SECOND


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One recording's scores. Label space = mean rating / 7; `ratings` are on 1-7."""

  path: str
  duration_s: float  # of the audio analysed (a MIDI render after trimming)
  window_scores: np.ndarray  # [windows, 19] label space
  window_starts_s: np.ndarray  # [windows]
  near_silent_windows: int  # counted, not dropped: the PercePiano training data kept them
  feature_seconds: float  # decode/render + log-mel + windows
  model_seconds: float

  @property
  def windows(self) -> int:
    return int(self.window_scores.shape[0])

  @property
  def scores(self) -> np.ndarray:
    """[19] label space: the mean over windows, as the trainer averages a performance."""
    return self.window_scores.astype(np.float64).mean(axis=0)

  @property
  def ratings(self) -> np.ndarray:
    return self.scores * RATING_SCALE

  @property
  def group_ratings(self) -> dict[str, float]:
    return {g: float(self.ratings[list(dims)].mean()) for g, dims in taxonomy.GROUPS.items()}

  @property
  def seconds(self) -> float:
    return self.feature_seconds + self.model_seconds

  @property
  def realtime_factor(self) -> float:
    return self.duration_s / self.seconds if self.seconds > 0 else math.inf

  def to_dict(self) -> dict:
    names = taxonomy.DIMENSION_NAMES
    return {
        "path": self.path, "duration_s": self.duration_s, "windows": self.windows,
        "near_silent_windows": self.near_silent_windows,
        "seconds": self.seconds, "feature_seconds": self.feature_seconds,
        "model_seconds": self.model_seconds, "realtime_factor": self.realtime_factor,
        "ratings": {n: float(v) for n, v in zip(names, self.ratings)},
        "label_space": {n: float(v) for n, v in zip(names, self.scores)},
        "group_ratings": self.group_ratings,
        "window_starts_s": [float(s) for s in self.window_starts_s],
        "window_ratings": (self.window_scores.astype(np.float64) * RATING_SCALE).tolist(),
    }


def load_samples(path: str | pathlib.Path, settings: FeatureSettings) -> np.ndarray:
  """16 kHz mono samples of an audio file, or of a MIDI file rendered and trimmed as the job does.

  Raises an `decode.AudioError` (unsupported extension, missing, corrupt, empty)
  or a `render.RenderError` naming the file.
  """
  path = pathlib.Path(path)
  ext = path.suffix.lower()
  if ext in MIDI_EXTENSIONS:
    return render.render_midi(path, soundfont=settings.soundfont).samples
  if ext not in decode.supported_extensions():
    raise decode.UnsupportedFormatError(
        path, f"unsupported extension {ext or '(none)'!r}; supported: "
        f"{', '.join(decode.supported_extensions() + MIDI_EXTENSIONS)}")
  return decode.load_audio(path)


def windows_of(samples: np.ndarray, settings: FeatureSettings, *, name: str
               ) -> list[windowing.Window]:
  """The job's windows of `samples` (`[frames, mel]` each, unnormalised).

  Raises `decode.EmptyAudioError` for audio shorter than one frame and
  `SilentInputError` when every window is near-silent (a silent input would
  otherwise get confident-looking scores of nothing).
  """
  windows = frontend.windows(samples, settings.window)
  if not windows:
    raise decode.EmptyAudioError(name, f"{samples.shape[0] / SAMPLE_RATE * 1000:.1f} ms of "
                                "audio is shorter than one 25 ms frame")
  if all(windowing.is_near_silent(w, settings.window) for w in windows):
    raise SilentInputError(name, f"silent: every window's loudest frame is below "
                           f"{settings.window.silence_db:g} dB")
  return windows


def parse_step(text: str) -> int | str:
  if text in ("best", "latest"):
    return text
  try:
    return int(text)
  except ValueError:
    from absl import app
    raise app.UsageError(f'--step must be "best", "latest" or a number, got {text!r}') from None
