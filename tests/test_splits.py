"""pipelines.datasets.splits: no group ever on two sides, every key exactly once, seeded."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipelines.datasets import percepiano, splits


def _performance(key: str, performer_id: int = 0) -> percepiano.Performance:
  return percepiano.Performance(key=percepiano.parse_key(key), labels=np.zeros(19, np.float32),
                                label_std=None, performer_id=performer_id, midi_path=None)


clips = st.lists(
    st.tuples(st.sampled_from(["Schubert", "Beethoven", "Chopin"]),
              st.sampled_from(["D960_mv2", "D960_mv3", "WoO80_var1", "op10_no.4", "D935_no.3",
                               "WoO80_thema"]),
              st.sampled_from([4, 8, 16]),
              st.sampled_from(["1", "2", "3", "4", "5", "6", "Score", "Score2"]),
              st.integers(0, 40)),
    min_size=1, max_size=200,
).map(lambda rows: [_performance(f"{c}_{w}_{b}bars_{p}_{s}") for c, w, b, p, s in set(rows)])


def _check_partition(split, performances, group_of):
  keys = sorted(p.key.text for p in performances)
  sides = [split.test] + list(split.folds)
  assert sorted(k for side in sides for k in side) == keys  # each key exactly once
  owner = {}
  for i, side in enumerate(sides):
    for k in side:
      assert owner.setdefault(group_of[k], i) == i, f"group {group_of[k]} on two sides"


@settings(max_examples=150, deadline=None)
@given(clips, st.integers(0, 2**32 - 1), st.integers(1, 5), st.floats(0.05, 0.5))
def test_piece_split_never_leaks_a_movement(performances, seed, folds, fraction):
  movements = {p.key.text: p.key.movement for p in performances}
  try:
    split = splits.piece_split(performances, test_fraction=fraction, num_folds=folds, seed=seed)
  except ValueError as e:  # too few movements for the folds, or none small enough for test
    assert "cannot fill" in str(e) or "no group fits" in str(e)
    assume(False)
  _check_partition(split, performances, movements)
  assert len(split.test) <= round(fraction * len(performances))
  assert split == splits.piece_split(performances, test_fraction=fraction, num_folds=folds,
                                     seed=seed)


@settings(max_examples=150, deadline=None)
@given(clips, st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_performer_split_never_leaks_a_performer(performances, seed, folds):
  performer = {p.key.text: p.key.performer for p in performances}
  present = sorted(set(performer.values()))
  test = present[:1]
  try:
    split = splits.performer_split(performances, test_performers=test, num_folds=folds,
                                   seed=seed)
  except ValueError as e:
    assert "cannot fill" in str(e)
    assume(False)
  _check_partition(split, performances, performer)
  assert {performer[k] for k in split.test} == set(test)


@settings(max_examples=50, deadline=None)
@given(clips, st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_fold_views_are_consistent(performances, seed, folds):
  try:
    split = splits.piece_split(performances, test_fraction=0.0, num_folds=folds, seed=seed)
  except ValueError:
    assume(False)
  assert split.test == ()
  for i in range(folds):
    train, val = split.fold(i)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(split.trainval())


def test_folds_are_balanced_when_groups_allow():
  # 40 movements of 10 clips: folds must come out equal.
  performances = [_performance(f"Beethoven_WoO80_var{m}_8bars_{p}_{m}") for m in range(40)
                  for p in range(10)]
  split = splits.piece_split(performances, test_fraction=0.15, num_folds=4, seed=3)
  assert len(split.test) == 60
  sizes = [len(f) for f in split.folds]
  # Largest-first dealing keeps folds within one group (10 clips) of each other.
  assert sum(sizes) == 340 and max(sizes) - min(sizes) <= 10


def test_seed_changes_the_split():
  performances = [_performance(f"Beethoven_WoO80_var{m}_8bars_{p}_{m}") for m in range(40)
                  for p in range(3)]
  a = splits.piece_split(performances, seed=0)
  b = splits.piece_split(performances, seed=1)
  assert a != b


def test_unknown_test_performer_is_an_error():
  with pytest.raises(ValueError, match="no items"):
    splits.performer_split([_performance("Schubert_D960_mv2_8bars_3_07")],
                           test_performers=["99"], num_folds=1)


def test_fold_index_checked():
  split = splits.piece_split([_performance(f"Schubert_D960_mv{m}_8bars_3_07") for m in range(3)],
                             test_fraction=0, num_folds=3)
  with pytest.raises(IndexError):
    split.fold(3)


@pytest.mark.real_data
def test_real_release_splits(percepiano_dir):
  performances = percepiano.read_release(percepiano_dir).performances
  movement = {p.key.text: p.key.movement for p in performances}
  piece = splits.piece_split(performances, seed=0)
  _check_partition(piece, performances, movement)
  assert 0.10 < len(piece.test) / 1202 <= 0.15
  # The 8- and 16-bar cuts of D960 mv3 always fall on one side.
  sides = piece.assignment()
  assert len({sides[k] for k in movement if k.startswith("Schubert_D960_mv3_")}) == 1

  performer = splits.performer_split(performances, seed=0)
  tokens = {p.key.text: p.key.performer for p in performances}
  _check_partition(performer, performances, tokens)
  assert len(performer.test) == 99 + 94  # performers "1" and "2"
  sizes = [len(f) for f in performer.folds]
  assert max(sizes) - min(sizes) <= 20


def test_split_arguments_are_validated():
  performances = [_performance(f"Schubert_D960_mv{m}_8bars_3_07") for m in range(4)]
  with pytest.raises(ValueError, match="test_fraction"):
    splits.piece_split(performances, test_fraction=-0.1, num_folds=2)
  with pytest.raises(ValueError, match="not both"):
    splits.grouped_split("x", ["a", "b", "c"], str, num_folds=1, seed=0, test_fraction=0.3,
                         test_groups=["a"])
