"""pipelines.audio.augmentation: deterministic draws, label masks from config, audible effects."""

import numpy as np
import pretty_midi
import pytest

from pipelines.audio import augmentation
from pipelines.beam import augment_presets as augment_config
from pipelines.datasets import taxonomy


def _config(preset, **enabled):
  c = augment_config.get_config(preset)
  for op, on in enabled.items():
    c[op].enabled = on
  return c


def test_variant_zero_is_clean_and_draws_are_deterministic():
  c = _config("maestro")
  assert augmentation.draw(c, "k", 0) == {}
  a = augmentation.draw(c, "k", 1)
  assert a == augmentation.draw(c, "k", 1)
  assert a != augmentation.draw(c, "k", 2) and a != augmentation.draw(c, "other", 1)
  assert 0.8 <= a["time_stretch"] <= 1.2 and -2 <= a["pitch_shift"] <= 2
  assert 20 <= a["noise_snr_db"] <= 40


def test_switching_one_op_off_keeps_the_others_values():
  full = augmentation.draw(_config("maestro"), "k", 3)
  no_pitch = augmentation.draw(_config("maestro", pitch_shift=False), "k", 3)
  assert "pitch_shift" not in no_pitch
  assert no_pitch["time_stretch"] == full["time_stretch"]
  assert no_pitch["noise_snr_db"] == full["noise_snr_db"]


def test_percepiano_default_keeps_every_label_valid():
  c = _config("percepiano")
  for variant in range(1, 6):
    params = augmentation.draw(c, "Schubert_D960_mv2_8bars_3_07", variant)
    assert set(params) == {"noise_snr_db", "noise_seed"}
    assert augmentation.label_mask(c, params).all()


def test_label_mask_follows_the_config_declaration():
  c = _config("maestro")
  mask = augmentation.label_mask(c, augmentation.draw(c, "k", 1))
  invalid = {taxonomy.DIMENSION_NAMES[i] for i in np.flatnonzero(~mask)}
  assert invalid == {"pace", "timbre_brightness"}
  c.time_stretch.invalidates = ("pace", "energy")
  mask = augmentation.label_mask(c, {"time_stretch": 1.1})
  assert {taxonomy.DIMENSION_NAMES[i] for i in np.flatnonzero(~mask)} == {"pace", "energy"}


def _tone(seconds=2.0, freq=440.0):
  t = np.arange(int(16_000 * seconds)) / 16_000
  return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant(x):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spectrum) * 16_000 / len(x)


def test_audio_effects():
  x = _tone()
  stretched = augmentation.apply_audio(x, 16_000, {"time_stretch": 1.25})
  assert len(stretched) == pytest.approx(len(x) / 1.25, rel=0.01)
  assert _dominant(stretched) == pytest.approx(440, abs=5)
  shifted = augmentation.apply_audio(x, 16_000, {"pitch_shift": 2.0})
  assert _dominant(shifted) == pytest.approx(440 * 2 ** (2 / 12), abs=5)
  noisy = augmentation.apply_audio(x, 16_000, {"noise_snr_db": 20.0, "noise_seed": 1})
  snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x) ** 2.0))
  assert snr == pytest.approx(20.0, abs=0.3)
  again = augmentation.apply_audio(x, 16_000, {"noise_snr_db": 20.0, "noise_seed": 1})
  np.testing.assert_array_equal(noisy, again)


def test_midi_effects():
  pm = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0)
  piano.notes = [pretty_midi.Note(80, 60, 1.0, 2.0)]
  piano.control_changes = [pretty_midi.ControlChange(64, 100, 1.5)]
  pm.instruments.append(piano)
  augmentation.apply_midi(pm, {"time_stretch": 2.0, "pitch_shift": 1.6})
  note = pm.instruments[0].notes[0]
  assert (note.start, note.end, note.pitch) == (0.5, 1.0, 62)
  assert pm.instruments[0].control_changes[0].time == 0.75


def test_midi_domain_rounds_semitones_and_still_adds_noise():
  c = _config("maestro")
  c.domain = "midi"
  params = augmentation.draw(c, "k", 1)
  assert params["pitch_shift"] == round(params["pitch_shift"])
  assert "noise_snr_db" in params


def test_unknown_preset():
  with pytest.raises(ValueError, match="preset"):
    augment_config.get_config("audioset")
