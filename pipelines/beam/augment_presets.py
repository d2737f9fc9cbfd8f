"""Augmentation config: which operations, their ranges, and which labels each invalidates.

  --augment_config=pipelines/beam/augment_presets.py:percepiano   (default for PercePiano)
  --augment_config=pipelines/beam/augment_presets.py:maestro      (default for MAESTRO)
  --augment_config.variants=3 --augment_config.pitch_shift.enabled=True ...

Label-awareness lives here, not in code: time-stretching changes the perceived
pace (dim 11) and pitch-shifting may change perceived brightness (dim 7), so
they are off by default for PercePiano; when switched on, each augmented
window's label mask marks the invalidated dimensions. Additive noise at 20-40 dB
SNR leaves the labels valid. MAESTRO is unlabelled and takes all three.
"""

import ml_collections


def get_config(arg: str = "percepiano") -> ml_collections.ConfigDict:
  if arg not in ("percepiano", "maestro"):
    raise ValueError(f"unknown augmentation preset {arg!r}: percepiano or maestro")
  labelled = arg == "percepiano"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.variants = 0  # augmented copies per recording, besides the clean one
  # "audio": signal processing on the waveform (any source); "midi": tempo and
  # transposition applied to the MIDI before rendering (cleaner: no phase-vocoder
  # smearing, real piano timbre at the new pitch), for MIDI sources only.
  c.domain = "audio"
  c.time_stretch = ml_collections.ConfigDict(dict(
      enabled=not labelled, low=0.8, high=1.2, invalidates=("pace",)))
  c.pitch_shift = ml_collections.ConfigDict(dict(
      enabled=not labelled, low=-2.0, high=2.0, invalidates=("timbre_brightness",)))
  c.noise = ml_collections.ConfigDict(dict(
      enabled=True, snr_db_low=20.0, snr_db_high=40.0, invalidates=()))
  return c
