"""Clip statistics of a performance's notes: what a perfect transcription would tell a ridge.

From `pipelines.audio.notes.Notes` (the performance MIDI's, or a transcription's), per
performance:

  onsets (10)        chord onsets (notes within 30 ms merged): inter-onset interval mean,
                     std, median, p10, p90, CV, std of log IOI, mean |log ratio| of
                     successive IOIs (local tempo change); note and chord-onset rates
  velocity (9)       mean, std, p10, p50, p90, p90 - p10; mean and std of the change in
                     chord-mean velocity from one onset to the next; correlation with key
  articulation (7)   log of each note's duration over the interval to the next chord
                     onset (legato ~0, staccato < 0): mean, std, median, p10, p90; mean
                     and std of log duration
  pedal (3)          fraction of the clip with the sustain pedal down, presses per second,
                     mean press length
  polyphony (3)      keys held down, sampled every 50 ms over the clip: mean, std, p90
  pitch (5)          lowest, highest, range, mean, std of the keys
  size (2)           trimmed duration, note count

39 values, all finite for any performance with at least two chord onsets (a statistic
with nothing to measure is 0).
"""

from __future__ import annotations

import numpy as np

from pipelines.audio import notes as notes_lib

CHORD_S = 0.03
POLYPHONY_STEP_S = 0.05

_NAMES = (
    [f"ioi_{s}" for s in ("mean", "std", "median", "p10", "p90", "cv", "log_std",
                          "log_ratio_abs_mean")] + ["note_rate", "onset_rate"]
    + [f"velocity_{s}" for s in ("mean", "std", "p10", "p50", "p90", "spread", "delta_abs_mean",
                                 "delta_std", "key_corr")]
    + [f"articulation_{s}" for s in ("mean", "std", "median", "p10", "p90")]
    + ["log_duration_mean", "log_duration_std"]
    + ["pedal_fraction", "pedal_press_rate", "pedal_press_mean_s"]
    + [f"polyphony_{s}" for s in ("mean", "std", "p90")]
    + [f"key_{s}" for s in ("min", "max", "range", "mean", "std")]
    + ["duration_s", "note_count"])


def names() -> tuple[str, ...]:
  return tuple(_NAMES)


def _spread(x: np.ndarray) -> list[float]:
  """mean, std, median, p10, p90 (zeros for an empty array)."""
  if x.size == 0:
    return [0.0] * 5
  p10, p50, p90 = np.percentile(x, [10, 50, 90])
  return [float(x.mean()), float(x.std()), float(p50), float(p10), float(p90)]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
  if a.size < 2 or a.std() == 0 or b.std() == 0:
    return 0.0
  return float(np.corrcoef(a, b)[0, 1])


def compute(performance: notes_lib.Notes, duration_s: float | None = None) -> np.ndarray:
  """The 39 statistics (float64, in `names()` order). `duration_s`: the clip's length
  (default: from the first onset to the last offset)."""
  n = performance.notes.astype(np.float64)
  if n.shape[0] == 0:
    raise ValueError("no notes: note statistics need a performance")
  onset, offset, key, velocity = n.T
  duration = float(duration_s) if duration_s else float(offset.max() - onset.min())
  duration = max(duration, 1e-3)
  # Chord onsets: a new chord starts more than CHORD_S after the previous one's start.
  starts = [0]
  for i in range(1, onset.size):
    if onset[i] - onset[starts[-1]] > CHORD_S:
      starts.append(i)
  chord_of = np.cumsum(np.isin(np.arange(onset.size), starts)) - 1
  chord_onset = onset[starts]
  ioi = np.diff(chord_onset)
  ioi_stats = _spread(ioi)
  ioi_stats.append(ioi_stats[1] / ioi_stats[0] if ioi_stats[0] > 0 else 0.0)
  log_ioi = np.log(np.maximum(ioi, 1e-3))
  ioi_stats.append(float(log_ioi.std()) if ioi.size else 0.0)
  ioi_stats.append(float(np.abs(np.diff(log_ioi)).mean()) if ioi.size > 1 else 0.0)
  rates = [onset.size / duration, chord_onset.size / duration]

  v_mean, v_std, v50, v10, v90 = _spread(velocity)
  chord_velocity = np.array([velocity[chord_of == c].mean() for c in range(len(starts))])
  delta = np.diff(chord_velocity)
  velocity_stats = [v_mean, v_std, v10, v50, v90, v90 - v10,
                    float(np.abs(delta).mean()) if delta.size else 0.0,
                    float(delta.std()) if delta.size else 0.0, _corr(velocity, key)]

  # Articulation: held length over the time to the next chord onset, in log (a note held
  # through a short interval under the pedal gives ratios in the tens).
  next_onset = np.append(chord_onset[1:], np.inf)[chord_of]
  gap = next_onset - onset
  held = offset - onset
  finite = np.isfinite(gap) & (gap > 0)
  articulation = _spread(np.log(np.maximum(held[finite], 1e-3) / gap[finite]))
  log_held = np.log(np.maximum(held, 1e-3))
  articulation += [float(log_held.mean()), float(log_held.std())]

  pedal = performance.pedal.astype(np.float64)
  lengths = pedal[:, 1] - pedal[:, 0] if pedal.size else np.zeros(0)
  pedal_stats = [float(min(lengths.sum() / duration, 1.0)), pedal.shape[0] / duration,
                 float(lengths.mean()) if lengths.size else 0.0]

  grid = np.arange(onset.min(), onset.min() + duration, POLYPHONY_STEP_S)
  held_at = ((onset[None, :] <= grid[:, None]) & (offset[None, :] > grid[:, None])).sum(axis=1)
  polyphony = [float(held_at.mean()), float(held_at.std()), float(np.percentile(held_at, 90))]

  pitch = [float(key.min()), float(key.max()), float(key.max() - key.min()), float(key.mean()),
           float(key.std())]
  out = np.array(ioi_stats + rates + velocity_stats + articulation + pedal_stats + polyphony
                 + pitch + [duration, float(onset.size)], np.float64)
  assert out.shape == (len(_NAMES),), (out.shape, len(_NAMES))
  return out
