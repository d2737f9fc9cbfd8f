"""pipelines.corpus.performance: each factor changes the MIDI the way it says."""

import dataclasses

import numpy as np
import pytest

from pipelines.corpus import composition, performance

MOVEMENT = composition.compose(np.random.default_rng(3), 8)


def _play(seed=0, **changes):
  factors = dataclasses.replace(performance.DEADPAN, **changes)
  return performance.perform(MOVEMENT.notes, beats_per_bar=MOVEMENT.beats_per_bar,
                             tempo_bpm=MOVEMENT.tempo_bpm, factors=factors,
                             rng=np.random.default_rng(seed)).instruments[0]


def _onsets(piano):
  return np.array(sorted(n.start for n in piano.notes))


def test_deadpan_follows_the_score_clock():
  piano = _play()
  beat = 60.0 / MOVEMENT.tempo_bpm
  expected = sorted(0.3 + n.onset * beat for n in MOVEMENT.notes)
  np.testing.assert_allclose(_onsets(piano), expected, atol=1e-6)
  assert not piano.control_changes  # no pedal


def test_tempo_scales_duration():
  slow, fast = _play(tempo=0.8), _play(tempo=1.25)
  ratio = (_onsets(slow)[-1] - 0.3) / (_onsets(fast)[-1] - 0.3)
  assert ratio == pytest.approx(1.25 / 0.8, rel=1e-6)


def test_jitter_displaces_onsets():
  straight, shaky = _onsets(_play()), _onsets(_play(jitter_s=0.05))
  deviation = np.std(shaky - straight)
  assert 0.03 < deviation < 0.07


def test_rubato_bends_the_clock_but_keeps_order():
  straight, rubato = _onsets(_play()), _onsets(_play(rubato=0.3))
  assert np.max(np.abs(rubato - straight)) > 0.1
  assert np.all(np.diff(rubato) >= 0)


def test_velocity_voicing_and_accents():
  loud, soft = _play(velocity=100), _play(velocity=40)
  mean = lambda p: np.mean([n.velocity for n in p.notes])
  assert mean(loud) - mean(soft) == pytest.approx(60, abs=3)
  voiced = _play(voicing=24)
  pitches = {n.pitch for n in MOVEMENT.notes if n.voice == "melody"}
  melody = np.mean([n.velocity for n in voiced.notes if n.pitch in pitches])
  accompaniment = np.mean([n.velocity for n in voiced.notes if n.pitch not in pitches])
  assert melody - accompaniment > 15
  accented = _play(accents=0.3)
  assert np.mean([n.velocity > 80 for n in accented.notes]) > 0.15


def test_articulation_sets_sounding_duration():
  short, long = _play(articulation=0.4), _play(articulation=1.1)
  total = lambda p: sum(n.end - n.start for n in p.notes)
  assert total(long) / total(short) == pytest.approx(1.1 / 0.4, rel=0.02)


def test_pedal_coverage_and_blur():
  full = _play(pedal=1.0, pedal_blur=0.0)
  presses = [c for c in full.control_changes if c.value >= 64]
  releases = [c for c in full.control_changes if c.value < 64]
  assert len(presses) == MOVEMENT.num_bars  # clean: a change at every bar
  assert len(releases) == MOVEMENT.num_bars
  blurred = _play(pedal=1.0, pedal_blur=1.0)
  assert len([c for c in blurred.control_changes if c.value >= 64]) == 1  # held through
  assert all(c.number == performance.SUSTAIN_PEDAL for c in full.control_changes)


def test_factor_draws_stay_in_range_and_standardise():
  rng = np.random.default_rng(0)
  for _ in range(50):
    z = performance.standardized(performance.draw_factors(rng))
    assert np.all(np.abs(z) <= 1.0)


def test_empty_passage_is_refused():
  with pytest.raises(ValueError, match="no notes"):
    performance.perform((), beats_per_bar=4, tempo_bpm=90, factors=performance.DEADPAN,
                        rng=np.random.default_rng(0))
