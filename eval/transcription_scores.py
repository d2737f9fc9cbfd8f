"""Note-level transcription scores with mir_eval: what `eval.transcribe` and the
transcription report measure.

  onset           a note matches when its key is right and its onset within 50 ms
  onset_offset    ... and its offset within 50 ms or 20 % of the reference note's length
  onset_velocity  onset matching plus velocity within 10 % after mir_eval's rescaling
  pedal           sustain-pedal intervals scored as notes of one pitch (onset and offset)
  pedal_frames    the 10 ms frames with the pedal down, scored frame by frame

Each gives precision, recall and F1 (`<name>/f1`, ...). An empty side scores 0 (mir_eval
warns about it; the warnings are silenced here because an empty transcription is a
legitimate, if bad, answer).

`velocity/r` is not a match count: the Pearson correlation of the reference and transcribed
MIDI velocities of the notes `onset` matches (None under three matches or with a constant
side). The notes model reads velocities as statistics of their values, not as hits within
mir_eval's 10 %, and the pedal as the fraction of time it is down, not as presses whose
ends fall within 50 ms: these two say how well what it reads is transcribed.
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


METRICS = ("onset", "onset_offset", "onset_velocity", "pedal", "pedal_frames", "velocity")
# The metrics scored as precision / recall / F1 (velocity is a correlation).
F1_METRICS = METRICS[:-1]
PEDAL_FRAME_S = 0.01


def _frames_down(intervals: np.ndarray, frames: int) -> np.ndarray:
  down = np.zeros(frames, bool)
  for start, end in np.round(intervals / PEDAL_FRAME_S).astype(np.int64):
    down[max(start, 0):max(end, 0)] = True
  return down


def _pedal_frames(reference: np.ndarray, estimate: np.ndarray) -> tuple[float, float, float]:
  frames = int(np.ceil(max([0.0, *reference[:, 1], *estimate[:, 1]]) / PEDAL_FRAME_S)) + 1
  ref, est = _frames_down(reference, frames), _frames_down(estimate, frames)
  hits = float((ref & est).sum())
  precision = hits / est.sum() if est.any() else 0.0
  recall = hits / ref.sum() if ref.any() else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return precision, recall, f1


def _velocity_r(ref_i, ref_hz, ref_velocity, est_i, est_hz, est_velocity) -> float | None:
  pairs = np.asarray(mir_eval.transcription.match_notes(
      ref_i, ref_hz, est_i, est_hz, onset_tolerance=ONSET_TOLERANCE_S, offset_ratio=None),
      np.int64).reshape(-1, 2)
  if len(pairs) < 3:
    return None
  a, b = ref_velocity[pairs[:, 0]], est_velocity[pairs[:, 1]]
  if a.std() == 0 or b.std() == 0:
    return None
  return float(np.corrcoef(a, b)[0, 1])


def _check_times(side: str, n: notes_lib.Notes) -> None:
  """mir_eval refuses negative or non-finite times deep inside its validation: say which side
  and why here instead. (A performance MIDI can start before the audio it is aligned to: clip
  it to the audio first, as `eval.notes_curve.from_audio_start` does.)"""
  for what, times in (("notes", np.asarray(n.notes, np.float64).reshape(-1, 4)[:, :2]),
                      ("pedal intervals", np.asarray(n.pedal, np.float64).reshape(-1, 2))):
    if not np.all(np.isfinite(times)):
      raise ValueError(f"the {side}'s {what} have non-finite times")
    early = times[:, 0] < 0
    if early.any():
      raise ValueError(f"{int(early.sum())} of the {side}'s {what} start before 0 s (the first "
                       f"at {times[early, 0].min():.3f} s): clip them to the audio first")


def score(reference: notes_lib.Notes, estimate: notes_lib.Notes,
          metrics: tuple[str, ...] = METRICS) -> dict[str, float | None]:
  """The `metrics` (default all) of `estimate` against `reference`."""
  unknown = set(metrics) - set(METRICS)
  if unknown:
    raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
  _check_times("reference", reference)
  _check_times("estimate", estimate)
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
      "pedal_frames": lambda: _pedal_frames(pedal_ref, pedal_est),
  }
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name in metrics:
      if name == "velocity":
        out["velocity/r"] = _velocity_r(ref_i, ref_hz, reference.notes[:, 3].astype(np.float64),
                                        est_i, est_hz, estimate.notes[:, 3].astype(np.float64))
      else:
        out.update(_prf(name, compute[name]()))
  return out
