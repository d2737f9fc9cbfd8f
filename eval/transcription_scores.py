"""Note-level transcription scores with mir_eval: what `eval.transcribe` and the
transcription report measure.

  onset           a note matches when its key is right and its onset within 50 ms
  onset_offset    ... and its offset within 50 ms or 20 % of the reference note's length
  onset_velocity  onset matching plus velocity within 10 % after mir_eval's rescaling
  pedal           sustain-pedal intervals scored as notes of one pitch (onset and offset)

Each gives precision, recall and F1 (`<name>/f1`, ...). An empty side scores 0 (mir_eval
warns about it; the warnings are silenced here because an empty transcription is a
legitimate, if bad, answer).
"""

from __future__ import annotations

import warnings

import mir_eval
import numpy as np
import pretty_midi

from pipelines.audio import notes as notes_lib

ONSET_TOLERANCE_S = 0.05


def _intervals(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  intervals = np.asarray(n[:, :2], np.float64).reshape(-1, 2)
  # mir_eval needs positive lengths: a note clipped to one instant gets a millisecond.
  intervals[:, 1] = np.maximum(intervals[:, 1], intervals[:, 0] + 1e-3)
  hz = np.array([pretty_midi.note_number_to_hz(k) for k in np.round(n[:, 2])], np.float64)
  return intervals, hz


def _prf(name: str, values) -> dict[str, float]:
  p, r, f = values[:3]
  return {f"{name}/precision": float(p), f"{name}/recall": float(r), f"{name}/f1": float(f)}


METRICS = ("onset", "onset_offset", "onset_velocity", "pedal")


def score(reference: notes_lib.Notes, estimate: notes_lib.Notes,
          metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
  """The `metrics` (default all) of `estimate` against `reference`."""
  unknown = set(metrics) - set(METRICS)
  if unknown:
    raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
  ref_i, ref_hz = _intervals(reference.notes)
  est_i, est_hz = _intervals(estimate.notes)
  t = mir_eval.transcription
  pedal_ref = np.asarray(reference.pedal, np.float64).reshape(-1, 2)
  pedal_est = np.asarray(estimate.pedal, np.float64).reshape(-1, 2)
  compute = {
      "onset": lambda: t.precision_recall_f1_overlap(
          ref_i, ref_hz, est_i, est_hz, onset_tolerance=ONSET_TOLERANCE_S, offset_ratio=None),
      "onset_offset": lambda: t.precision_recall_f1_overlap(
          ref_i, ref_hz, est_i, est_hz, onset_tolerance=ONSET_TOLERANCE_S),
      "onset_velocity": lambda: mir_eval.transcription_velocity.precision_recall_f1_overlap(
          ref_i, ref_hz, reference.notes[:, 3].astype(np.float64), est_i, est_hz,
          estimate.notes[:, 3].astype(np.float64), onset_tolerance=ONSET_TOLERANCE_S,
          offset_ratio=None),
      "pedal": lambda: t.precision_recall_f1_overlap(
          pedal_ref, np.full(len(pedal_ref), 440.0), pedal_est, np.full(len(pedal_est), 440.0),
          onset_tolerance=ONSET_TOLERANCE_S),
  }
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name in metrics:
      out.update(_prf(name, compute[name]()))
  return out
