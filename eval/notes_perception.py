"""The notes model as one shippable predictor: recording -> transcription -> its statistics ->
the notes model -> the 19 perceptual dimensions.

The benchmark's `notes` model (`train.ridge --features=notes`, `train.notes_from_midi`):
the ridge fitted on the training performances' MIDI note statistics, read from a
recording's estimate of them, which extra-trees and a linear map make from the 39 note
statistics (`pipelines.audio.note_statistics`) and the 24 probability statistics
(`pipelines.audio.posterior_statistics`) of the notes-aware encoder's own transcription. A
release of kind `notes_perception` (`eval.export_release --kind=notes_perception`) holds
the transcriber (encoder and transcription head, its decoding thresholds; `model.safetensors`)
and the notes model's arrays (`perception.safetensors`, `train.notes_from_midi.to_arrays`,
checksummed in `release.json`), fitted on the training folds of a split exactly as the
benchmark's test run is, with that test run's scores. `eval.predict` uses it like a
fine-tuning run, and by default (`release/perception`) when no `--checkpoint` is given.

The whole recording is transcribed (non-overlapping windows, as the shards were) and
scored once: a label belongs to the whole clip, so there are no per-window scores.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

import numpy as np
import safetensors.numpy

from eval import loading, recording, shard_transcription, transcribe
from model import release
from pipelines.audio import note_statistics, posterior_statistics
from pipelines.shards.tiled_windows import FRAME_S
from train import notes_from_midi, ridge_fit

KIND = "notes_perception"
PERCEPTION = "perception.safetensors"  # the notes model's arrays, beside the transcriber's


def inputs(transcribed, seconds: float, probabilities: dict[str, np.ndarray]) -> np.ndarray:
  """What the notes model reads of one transcription: its note statistics, then the
  statistics of the probabilities they were decoded from (as the benchmark's table)."""
  return np.concatenate([note_statistics.compute(transcribed, seconds),
                         posterior_statistics.compute(probabilities, FRAME_S)])


def write_model(directory: pathlib.Path, arrays: dict[str, np.ndarray]) -> dict:
  """Writes the notes model's arrays (`notes_from_midi.to_arrays`) into a release directory;
  returns what release.json says of them (file, checksum)."""
  path = directory / PERCEPTION
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                              str(path))
  path.chmod(0o644)
  return {"file": PERCEPTION, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def read_model(directory: pathlib.Path, about: dict) -> notes_from_midi.Packed:
  entry = about.get("perception")
  if not isinstance(entry, dict) or "sha256" not in entry:
    raise release.ReleaseError(f"{directory}: release.json names no notes model (a release "
                               "made before 2026-12-05 holds a ridge alone: export it again "
                               "with eval.export_release --kind=notes_perception)")
  path = directory / entry.get("file", PERCEPTION)
  if not path.is_file():
    raise release.ReleaseError(f"{path} is missing")
  if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
    raise release.ReleaseError(f"{path} does not match the SHA-256 in {release.ABOUT} "
                               "(damaged or replaced)")
  try:
    packed = notes_from_midi.Packed.from_arrays(safetensors.numpy.load_file(str(path)))
  except ridge_fit.RidgeError as e:
    raise release.ReleaseError(f"{path}: {e}") from None
  expected = len(note_statistics.names()) + len(posterior_statistics.names())
  if packed.inputs != expected:
    raise release.ReleaseError(f"{path} reads {packed.inputs} statistics; this version "
                               f"computes {expected}")
  return packed


def is_notes_perception(path: str | pathlib.Path) -> bool:
  if not release.is_release(path):
    return False
  return json.loads((pathlib.Path(path) / release.ABOUT).read_text()).get("kind") == KIND


class NotesPerception:
  """Scores recordings like `eval.predict.Predictor` (same `Prediction`s, one clip-level score)."""

  batch_size = 8  # windows per transcription forward pass

  def __init__(self, run: loading.PretrainedRun, model: notes_from_midi.Packed, *,
               soundfont: str | None = None):
    if run.thresholds is None:
      raise loading.RunError(f"{run.workdir}: the transcriber has no decoding thresholds")
    self.run = run
    self.model = model
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
    return cls(run, read_model(pathlib.Path(directory), about), soundfont=soundfont)

  def statistics(self, path: str | pathlib.Path) -> tuple[np.ndarray, float, float]:
    """(the statistics of a recording's transcription, its seconds, seconds taken)."""
    t0 = time.perf_counter()
    transcribed, seconds, probabilities = transcribe.transcribe_file_with_probabilities(
        self.run, pathlib.Path(path), self.thresholds, self.batch_size, soundfont=self.soundfont)
    if len(transcribed.notes) == 0:
      raise recording.SilentInputError(f"{path}: the transcription found no note to score")
    return inputs(transcribed, seconds, probabilities), seconds, time.perf_counter() - t0

  def predict_file(self, path: str | pathlib.Path, progress: recording.Progress | None = None
                   ) -> recording.Prediction:
    x, seconds, taken = self.statistics(path)
    t0 = time.perf_counter()
    scores = self.model.predict(x[None])
    if not np.isfinite(scores).all():
      raise recording.NonFinitePredictionError(f"{path}: the notes model returned NaN/inf")
    if progress is not None:
      progress(1, 1, seconds)
    return recording.Prediction(
        path=str(path), duration_s=seconds, window_scores=scores.astype(np.float32),
        window_starts_s=np.zeros(1), near_silent_windows=0, feature_seconds=taken,
        model_seconds=time.perf_counter() - t0)

