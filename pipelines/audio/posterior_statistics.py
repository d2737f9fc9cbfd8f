"""Clip statistics of a transcription's frame probabilities, before any decoding.

Decoding (`notes.from_rolls`) keeps what crosses a threshold and throws the rest away,
and what it throws away is what the notes path loses most: measured over the 1202
PercePiano performances, the decoded notes' polyphony, articulation and pedal statistics
correlate only 0.03-0.55 with the performance MIDI's (transcribed notes end early, the
pedal flickers), while those statistics carry most of the timing signal. A probability
that hovers near a threshold still says how much is sounding and how the pedal moves,
so these statistics are read from the probabilities themselves (`[frames, 88]` onset,
frame and velocity, `[frames]` pedal, at `frame_s` seconds a frame), per performance:

  polyphony (7)     expected keys sounding per frame (the sum of the frame
                    probabilities): mean, std, p10, p50, p90; fraction of frames with
                    more than half a key sounding; mean over those frames
  pedal (7)         probability mean and std; mean |change| and mean fall per second
                    (soft presses and lifts); fraction above 0.5; mean over sounding
                    frames; correlation with the polyphony
  onsets (3)        expected onsets per second; std of the per-frame onset mass; the
                    spread (coefficient of variation) of the onset mass in 100 ms bins
  velocity (2)      onset-weighted mean and std of the velocity output
  sustain (3)       expected sounding frames per expected onset (a soft note length)
                    and its log; mean |change| of the polyphony per second
  register (2)      expected keys sounding below and from the 41st key (E4) up

24 values, finite for any performance of at least one frame (a statistic with nothing to
measure is 0).
"""

from __future__ import annotations

import numpy as np

_NAMES = (
    [f"polyphony_{s}" for s in ("mean", "std", "p10", "p50", "p90")]
    + ["sounding_fraction", "sounding_polyphony_mean"]
    + [f"pedal_{s}" for s in ("mean", "std", "change_rate", "fall_rate", "down_fraction",
                              "sounding_mean", "polyphony_corr")]
    + ["onset_rate", "onset_mass_std", "onset_bins_cv"]
    + ["velocity_mean", "velocity_std"]
    + ["frames_per_onset", "log_frames_per_onset", "polyphony_change_rate"]
    + ["low_register_polyphony", "high_register_polyphony"]
)
LOW_KEYS = 40  # keys 0-39 (A0-C4#) form the low register
BIN_FRAMES = 10  # onset mass is pooled over 10-frame (100 ms) bins for its spread


def names() -> tuple[str, ...]:
  return tuple(_NAMES)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
  if a.size < 2 or a.std() == 0 or b.std() == 0:
    return 0.0
  return float(np.corrcoef(a, b)[0, 1])


def compute(probabilities: dict[str, np.ndarray], frame_s: float) -> np.ndarray:
  """The statistics (float64 `[24]`) of one performance's frame probabilities."""
  frame = np.asarray(probabilities["frame"], np.float64)
  onset = np.asarray(probabilities["onset"], np.float64)
  velocity = np.asarray(probabilities["velocity"], np.float64)
  pedal = np.asarray(probabilities["pedal"], np.float64)
  frames = frame.shape[0]
  if frames == 0:
    raise ValueError("no frames: a transcription of nothing has no statistics")
  if not (onset.shape == velocity.shape == frame.shape and pedal.shape == (frames,)):
    raise ValueError(f"rolls of different shapes: onset {onset.shape}, frame {frame.shape}, "
                     f"velocity {velocity.shape}, pedal {pedal.shape}")
  per_second = 1.0 / frame_s
  polyphony, onset_mass = frame.sum(1), onset.sum(1)
  sounding = polyphony > 0.5
  onsets = onset.sum()
  velocity_mean = float((onset * velocity).sum() / onsets) if onsets > 0 else 0.0
  velocity_std = (float(np.sqrt((onset * (velocity - velocity_mean) ** 2).sum() / onsets))
                  if onsets > 0 else 0.0)
  pedal_change = np.diff(pedal) if frames > 1 else np.zeros(1)
  polyphony_change = np.diff(polyphony) if frames > 1 else np.zeros(1)
  whole_bins = frames // BIN_FRAMES * BIN_FRAMES
  bins = onset_mass[:whole_bins].reshape(-1, BIN_FRAMES).sum(1)
  frames_per_onset = frame.sum() / onsets if onsets > 0 else 0.0
  values = [
      polyphony.mean(), polyphony.std(), *np.percentile(polyphony, [10, 50, 90]),
      sounding.mean(), polyphony[sounding].mean() if sounding.any() else 0.0,
      pedal.mean(), pedal.std(), np.abs(pedal_change).mean() * per_second,
      np.maximum(-pedal_change, 0).mean() * per_second, (pedal > 0.5).mean(),
      pedal[sounding].mean() if sounding.any() else 0.0, _correlation(pedal, polyphony),
      onsets / frames * per_second, onset_mass.std(),
      bins.std() / bins.mean() if bins.size and bins.mean() > 0 else 0.0,
      velocity_mean, velocity_std,
      frames_per_onset, np.log(frames_per_onset + 1.0),
      np.abs(polyphony_change).mean() * per_second,
      frame[:, :LOW_KEYS].sum(1).mean(), frame[:, LOW_KEYS:].sum(1).mean(),
  ]
  return np.asarray(values, np.float64)
