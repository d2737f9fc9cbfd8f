"""Waveform and MIDI augmentation, deterministic from (seed, example key, variant).

Operations (ranges and label effects from `pipelines/beam/augment_presets.py`):
  time_stretch  rate in [low, high]: librosa's phase vocoder on audio; on MIDI,
                every event time divided by the rate (no artefacts)
  pitch_shift   semitones in [low, high]: librosa (stretch + soxr resample) on
                audio, any real value; on MIDI, rounded to whole semitones and
                the notes transposed (the SoundFont's own timbre at that pitch)
  noise         additive white Gaussian noise at an SNR in dB drawn from the
                range, relative to the recording's mean power (on the waveform,
                also after a MIDI-domain render)

Variant 0 is always the clean recording. An operation whose drawn parameter is
the identity is not reported as applied and invalidates no label.
"""

from __future__ import annotations

import librosa
import ml_collections
import numpy as np
import pretty_midi

from pipelines.datasets import keys, taxonomy


def _rng(seed: int, key: str, variant: int) -> np.random.Generator:
  return np.random.default_rng([seed, keys.stable_hash(key), variant])


def draw(config: ml_collections.ConfigDict, key: str, variant: int) -> dict[str, float]:
  """The parameters of augmentation `variant` of `key` ({} for variant 0)."""
  if variant == 0:
    return {}
  rng = _rng(config.seed, key, variant)
  # Draw every parameter whether enabled or not, so switching one operation on
  # or off does not change the others' values.
  drawn = {
      "time_stretch": float(rng.uniform(config.time_stretch.low, config.time_stretch.high)),
      "pitch_shift": float(rng.uniform(config.pitch_shift.low, config.pitch_shift.high)),
      "noise_snr_db": float(rng.uniform(config.noise.snr_db_low, config.noise.snr_db_high)),
      "noise_seed": int(rng.integers(2**31)),
  }
  params = {}
  if config.time_stretch.enabled:
    params["time_stretch"] = drawn["time_stretch"]
  if config.pitch_shift.enabled:
    params["pitch_shift"] = drawn["pitch_shift"]
  if config.noise.enabled:  # noise is added to the waveform in both domains
    params["noise_snr_db"] = drawn["noise_snr_db"]
    params["noise_seed"] = drawn["noise_seed"]
  if config.domain == "midi" and "pitch_shift" in params:
    params["pitch_shift"] = float(round(params["pitch_shift"]))
  return params


def label_mask(config: ml_collections.ConfigDict, params: dict[str, float]) -> np.ndarray:
  """`[19]` bool: False for dimensions the applied operations invalidate."""
  mask = np.ones(taxonomy.NUM_DIMENSIONS, dtype=bool)
  applied = {"time_stretch": params.get("time_stretch", 1.0) != 1.0,
             "pitch_shift": params.get("pitch_shift", 0.0) != 0.0,
             "noise": "noise_snr_db" in params}
  for op, used in applied.items():
    if used:
      for name in config[op].invalidates:
        mask[taxonomy.DIMENSION_NAMES.index(name)] = False
  return mask


def apply_audio(samples: np.ndarray, sample_rate: int, params: dict[str, float]) -> np.ndarray:
  """Applies waveform-domain parameters (stretch, then pitch, then noise)."""
  out = np.asarray(samples, dtype=np.float32)
  if params.get("time_stretch", 1.0) != 1.0:
    out = librosa.effects.time_stretch(out, rate=params["time_stretch"])
  if params.get("pitch_shift", 0.0) != 0.0:
    out = librosa.effects.pitch_shift(out, sr=sample_rate, n_steps=params["pitch_shift"],
                                      res_type="soxr_hq")
  if "noise_snr_db" in params:
    power = float(np.mean(np.square(out, dtype=np.float64)))
    noise_rms = np.sqrt(power / 10.0 ** (params["noise_snr_db"] / 10.0))
    noise = np.random.default_rng(params["noise_seed"]).normal(0.0, noise_rms, out.shape)
    out = out + noise.astype(np.float32)
  return np.ascontiguousarray(out, dtype=np.float32)


def apply_midi(midi: pretty_midi.PrettyMIDI, params: dict[str, float]) -> pretty_midi.PrettyMIDI:
  """Applies tempo and transposition to `midi` in place and returns it."""
  rate = params.get("time_stretch", 1.0)
  semitones = int(round(params.get("pitch_shift", 0.0)))
  for instrument in midi.instruments:
    for note in instrument.notes:
      note.start, note.end = note.start / rate, note.end / rate
      if not instrument.is_drum:
        note.pitch = int(np.clip(note.pitch + semitones, 0, 127))
    for change in instrument.control_changes:
      change.time /= rate
    for bend in instrument.pitch_bends:
      bend.time /= rate
  return midi
