"""train.clip_head: pooling over a performance's window embeddings, on generated windows.

The command line on a real job's embeddings is tested with the probes
(tests/test_transcription.py); here the head's own properties: window averaging is
the mean of the windows scored alone, padding changes nothing, attention pooling does
not depend on the windows' order, training learns a planted signal and is seeded.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from train import clip_head, metrics, statistics_table


def _windows(rng: np.random.Generator, count: int, width: int = 8):
  starts = np.arange(count) * 5.12
  return statistics_table.WindowVectors(rng.normal(size=(count, width)).astype(np.float32),
                                        starts, starts + 5.12)


def _init(pooling: str, batch: clip_head.Batch):
  model = clip_head.ClipHead(pooling, hidden=16, heads=2, dropout=0.0)
  params = model.init(jax.random.key(0), batch.x, batch.position, batch.mask)["params"]
  return lambda b: np.asarray(model.apply({"params": params}, b.x, b.position, b.mask))


def test_positions_and_padding_known_answers():
  rng = np.random.default_rng(0)
  w = _windows(rng, 3)
  batch = clip_head.padded([w, _windows(rng, 1)])
  assert batch.x.shape == (2, 3, 8) and batch.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
  length = 3 * 5.12
  np.testing.assert_allclose(batch.position[0], np.stack(
      [np.arange(3) * 5.12 / length, (np.arange(3) + 1) * 5.12 / length,
       np.full(3, np.log(length)), np.full(3, 0.3)], axis=1), rtol=1e-6)
  assert np.all(batch.x[1, 1:] == 0) and np.all(batch.position[1, 1:] == 0)


def test_window_averaging_is_the_mean_of_the_windows_scored_alone():
  rng = np.random.default_rng(1)
  batch = clip_head.padded([_windows(rng, 4)])
  score = _init("mean", batch)
  alone = [score(clip_head.Batch(batch.x[:, i:i + 1], batch.position[:, i:i + 1],
                                 batch.mask[:, i:i + 1])) for i in range(4)]
  np.testing.assert_allclose(score(batch), np.mean(alone, axis=0), rtol=1e-5, atol=1e-6)
  # Attention pooling is not that mean: the windows see each other.
  attention = _init("attention", batch)
  assert attention(batch).shape == (1, 19)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padding_changes_nothing_and_order_does_not_matter(pooling):
  rng = np.random.default_rng(2)
  short, long = _windows(rng, 2), _windows(rng, 5)
  batch = clip_head.padded([short, long])
  score = _init(pooling, batch)
  together = score(batch)
  alone = score(clip_head.padded([short]))
  np.testing.assert_allclose(together[0], alone[0], rtol=1e-5, atol=1e-6)
  garbage = clip_head.Batch(batch.x.copy(), batch.position.copy(), batch.mask)
  garbage.x[0, 2:] = 1e3
  garbage.position[0, 2:] = -7
  np.testing.assert_allclose(score(garbage), together, rtol=1e-5, atol=1e-5)
  order = np.array([3, 0, 4, 1, 2])  # windows shuffled with their positions
  shuffled = clip_head.Batch(batch.x[1:, order], batch.position[1:, order], batch.mask[1:])
  np.testing.assert_allclose(score(shuffled)[0], together[1], rtol=1e-4, atol=1e-5)


def _planted(seed: int, performances: int = 240):
  """Labels = a fixed linear read-out of the mean window embedding, plus a little noise."""
  rng = np.random.default_rng(seed)
  windows = [_windows(rng, int(n)) for n in rng.integers(1, 6, performances)]
  read_out = rng.normal(size=(8, 19))
  labels = np.stack([w.x.mean(0) @ read_out for w in windows])
  labels += 0.1 * rng.normal(size=labels.shape)
  labels[rng.random(labels.shape) < 0.05] = np.nan  # missing ratings are masked, not zero
  groups = np.array([f"g{i % 24}" for i in range(performances)])
  return windows, labels, groups


# Mean pooling (~20 s) is in make test-slow: the attention pooling is the one that can go wrong.
@pytest.mark.parametrize("pooling", [pytest.param("mean", marks=pytest.mark.slow), "attention"])
def test_both_poolings_learn_a_planted_signal_on_held_out_groups(pooling):
  windows, labels, groups = _planted(3)
  config = clip_head.HeadConfig(pooling=pooling, hidden=32, heads=2, max_epochs=60,
                                patience=10, learning_rate=3e-3)
  train = np.array([int(g[1:]) < 18 for g in groups])
  fitted = clip_head.fit(config, clip_head.padded([w for w, t in zip(windows, train) if t]),
                         labels[train], groups[train], seed=0)
  assert 1 <= fitted.epochs <= 60
  held = [w for w, t in zip(windows, train) if not t]
  pred = fitted.predict(clip_head.padded(held))
  score = metrics.mean_pearson(pred, labels[~train], np.isfinite(labels[~train]))
  assert score > 0.8, score


@pytest.mark.slow  # ~45-90 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_the_same_seed_gives_the_same_head():
  windows, labels, groups = _planted(4, performances=60)
  config = clip_head.HeadConfig(hidden=16, heads=2, max_epochs=5, patience=5)
  batch = clip_head.padded(windows)
  runs = [clip_head.fit(config, batch, labels, groups, seed=s).predict(batch) for s in (0, 0, 1)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert not np.allclose(runs[0], runs[2])
  with pytest.raises(clip_head.ClipHeadError, match="one group"):
    clip_head.fit(config, batch, labels, np.array(["g"] * len(windows)))


def test_window_tables_round_trip_and_refuse_damage(tmp_path):
  rng = np.random.default_rng(5)
  table = {"b": _windows(rng, 2), "a": _windows(rng, 3)}
  path = tmp_path / "w.npz"
  statistics_table.save_windows(path, table, {"step": 7})
  loaded, about = statistics_table.load_windows(path)
  assert list(loaded) == ["a", "b"] and about == {"step": 7}
  np.testing.assert_array_equal(loaded["b"].x, table["b"].x)
  np.testing.assert_array_equal(loaded["a"].ends_s, table["a"].ends_s)
  assert loaded["a"].duration_s == pytest.approx(3 * 5.12)
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(statistics_table.StatisticsError, match="not a window vector table"):
    statistics_table.load_windows(path)
