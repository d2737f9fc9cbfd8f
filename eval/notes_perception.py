"""The notes model as one shippable predictor: recording -> transcription -> note statistics ->
ridge -> the 19 perceptual dimensions.

The benchmark's best model on the piece split is the `notes` model: the closed-form ridge
(`train.ridge`) on 39 note statistics (`pipelines.audio.note_statistics`) of the
notes-aware encoder's own transcription. A release of kind `notes_perception`
(`eval.export_release --kind=notes_perception`) holds the transcriber (encoder and
transcription head, its decoding thresholds) and, in `release.json`, the ridge:
standardisation, weights and bias, fitted on the training folds of a split exactly as
the benchmark's test run is, with that test run's scores. `eval.predict` uses it like a
fine-tuning run, and by default (`release/perception`) when no `--checkpoint` is given.

The whole recording is transcribed (non-overlapping windows, as the shards were) and
scored once: a label belongs to the whole clip, so there are no per-window scores.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

from eval import loading, recording, shard_transcription, transcribe
from model import release
from pipelines.audio import note_statistics
from pipelines.datasets import taxonomy

KIND = "notes_perception"


@dataclasses.dataclass(frozen=True)
class Ridge:
  """`predict(x) = ((x - mean) / scale) @ weights + bias`, in label space (rating / 7)."""

  mean: np.ndarray  # [F]
  scale: np.ndarray  # [F]
  weights: np.ndarray  # [F, 19]
  bias: np.ndarray  # [19]

  def predict(self, x: np.ndarray) -> np.ndarray:
    return ((x - self.mean) / self.scale) @ self.weights + self.bias

  def to_dict(self) -> dict:
    return {k: np.asarray(getattr(self, k), np.float64).tolist()
            for k in ("mean", "scale", "weights", "bias")}

  @classmethod
  def from_dict(cls, d: dict) -> Ridge:
    out = cls(**{k: np.asarray(d[k], np.float64) for k in ("mean", "scale", "weights", "bias")})
    features = len(note_statistics.names())
    if out.weights.shape != (features, taxonomy.NUM_DIMENSIONS) or out.mean.shape != (features,):
      raise release.ReleaseError(f"the ridge has weights {out.weights.shape}; the note "
                                 f"statistics are {features} and the dimensions "
                                 f"{taxonomy.NUM_DIMENSIONS}")
    return out


def is_notes_perception(path: str | pathlib.Path) -> bool:
  if not release.is_release(path):
    return False
  return json.loads((pathlib.Path(path) / release.ABOUT).read_text()).get("kind") == KIND


class NotesPerception:
  """Scores recordings like `eval.predict.Predictor` (same `Prediction`s, one clip-level score)."""

  batch_size = 8  # windows per transcription forward pass

  def __init__(self, run: loading.PretrainedRun, ridge: Ridge, *, soundfont: str | None = None):
    if run.thresholds is None:
      raise loading.RunError(f"{run.workdir}: the transcriber has no decoding thresholds")
    self.run = run
    self.ridge = ridge
    self.thresholds = shard_transcription.Thresholds(**run.thresholds)
    self.settings = recording.FeatureSettings.from_metadata(run.data_metadata, soundfont=soundfont)
    self.soundfont = soundfont

  @classmethod
  def from_release(cls, directory: str | pathlib.Path, *,
                   soundfont: str | None = None) -> NotesPerception:
    run = loading.load_transcriber(directory)
    about = json.loads((pathlib.Path(directory) / release.ABOUT).read_text())
    if about.get("kind") != KIND:
      raise loading.RunError(f"{directory} is a {about.get('kind')!r} release, not {KIND!r}")
    return cls(run, Ridge.from_dict(about["ridge"]), soundfont=soundfont)

  def statistics(self, path: str | pathlib.Path) -> tuple[np.ndarray, float, float]:
    """(the note statistics of a recording's transcription, its seconds, seconds taken)."""
    t0 = time.perf_counter()
    transcribed, seconds = transcribe.transcribe_file(self.run, pathlib.Path(path),
                                                      self.thresholds, self.batch_size,
                                                      soundfont=self.soundfont)
    if len(transcribed.notes) == 0:
      raise recording.SilentInputError(f"{path}: the transcription found no note to score")
    return note_statistics.compute(transcribed, seconds), seconds, time.perf_counter() - t0

  def predict_file(self, path: str | pathlib.Path, progress: recording.Progress | None = None
                   ) -> recording.Prediction:
    x, seconds, taken = self.statistics(path)
    t0 = time.perf_counter()
    scores = self.ridge.predict(x[None])
    if not np.isfinite(scores).all():
      raise recording.NonFinitePredictionError(f"{path}: the ridge returned NaN/inf")
    if progress is not None:
      progress(1, 1, seconds)
    return recording.Prediction(
        path=str(path), duration_s=seconds, window_scores=scores.astype(np.float32),
        window_starts_s=np.zeros(1), near_silent_windows=0, feature_seconds=taken,
        model_seconds=time.perf_counter() - t0)

