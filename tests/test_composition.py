"""pipelines.corpus.composition: seeded, well-formed musical material."""

import numpy as np
import pytest

from pipelines.corpus import composition


def test_same_seed_same_movement_and_different_seeds_differ():
  a = composition.compose(np.random.default_rng(1), 8)
  assert a == composition.compose(np.random.default_rng(1), 8)
  assert a != composition.compose(np.random.default_rng(2), 8)


@pytest.mark.parametrize("seed", range(20))
def test_movement_is_well_formed(seed):
  m = composition.compose(np.random.default_rng(seed), 16)
  assert m.num_bars == 16 and m.chords[-2:] == (4, 0)  # authentic cadence
  bar_beats = m.beats_per_bar
  melody = [n for n in m.notes if n.voice == "melody"]
  accompaniment = [n for n in m.notes if n.voice == "accompaniment"]
  assert melody and accompaniment
  # Melody above the accompaniment, everything in the piano's range.
  assert min(n.pitch for n in melody) > max(n.pitch for n in accompaniment) - 12
  assert all(21 <= n.pitch <= 108 for n in m.notes)
  # Each bar's melody fills the bar exactly, notes stay inside their bar.
  for bar in range(16):
    notes = [n for n in melody if n.bar == bar]
    assert sum(n.duration for n in notes) == pytest.approx(bar_beats)
    assert all(bar * bar_beats <= n.onset < (bar + 1) * bar_beats for n in notes)
  scale = composition.MINOR if m.minor else composition.MAJOR
  assert all((n.pitch - m.tonic) % 12 in scale for n in m.notes)


def test_passage_is_retimed_and_bounded():
  m = composition.compose(np.random.default_rng(0), 8)
  p = m.passage(4, 4)
  assert min(n.onset for n in p) == 0.0
  assert {n.bar for n in p} == {0, 1, 2, 3}
  assert len(p) == sum(1 for n in m.notes if n.bar >= 4)
  with pytest.raises(ValueError):
    m.passage(6, 4)
  with pytest.raises(ValueError):
    m.passage(-1, 2)


def test_bar_count_must_be_a_multiple_of_four():
  with pytest.raises(ValueError):
    composition.compose(np.random.default_rng(0), 6)
