"""train.metrics: performance averaging and Pearson, against scipy."""

import numpy as np
import pytest
import scipy.stats

from pipelines.datasets import taxonomy
from train import metrics


def test_windows_are_averaged_per_performance_before_scoring():
  ids = np.array([3, 1, 3, 1, 2])
  pred = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
  label = np.array([[0.5], [0.2], [0.5], [0.2], [0.9]])
  mask = np.array([[True], [True], [False], [True], [True]])
  p, y, m = metrics.performance_means(ids, pred, label, mask)
  np.testing.assert_allclose(p[:, 0], [3.0, 5.0, 2.0])  # ids 1, 2, 3
  np.testing.assert_allclose(y[:, 0], [0.2, 0.9, 0.5])
  assert m[:, 0].tolist() == [True, True, True]


def test_pearson_matches_scipy_and_is_nan_for_constants():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=50), rng.normal(size=50)
  assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
  assert np.isnan(metrics.pearson(np.ones(5), y[:5]))
  assert np.isnan(metrics.pearson(x[:1], y[:1]))


def test_summary_has_every_dimension_each_group_and_the_mean():
  values = np.linspace(-0.5, 0.9, taxonomy.NUM_DIMENSIONS)
  values[taxonomy.GROUPS["dynamics"][0]] = np.nan  # an undefined r is left out of its group
  out = metrics.summarise(values)
  for name in taxonomy.DIMENSION_NAMES:
    assert f"pearson/{name}" in out
  for group, dims in taxonomy.GROUPS.items():
    finite = [values[d] for d in dims if np.isfinite(values[d])]
    assert out[f"pearson/{group}"] == pytest.approx(np.mean(finite))
  assert out["pearson/mean"] == pytest.approx(np.nanmean(values))
  assert np.isnan(metrics.summarise(np.full(19, np.nan))["pearson/mean"])


def test_spearman_r2_mse_mae_match_scipy_and_sklearn():
  import sklearn.metrics
  rng = np.random.default_rng(1)
  y = rng.normal(size=60)
  p = 0.6 * y + rng.normal(size=60)
  p[:10] = p[0]  # ties
  assert metrics.spearman(p, y) == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-12)
  assert metrics.r2(p, y) == pytest.approx(sklearn.metrics.r2_score(y, p), abs=1e-12)
  assert metrics.mse(p, y) == pytest.approx(sklearn.metrics.mean_squared_error(y, p))
  assert metrics.mae(p, y) == pytest.approx(sklearn.metrics.mean_absolute_error(y, p))
  # sklearn's convention for a constant label column.
  const = np.full(5, 0.5)
  assert metrics.r2(const, const) == sklearn.metrics.r2_score(const, const) == 1.0
  assert metrics.r2(const + 0.1, const) == sklearn.metrics.r2_score(const, const + 0.1) == 0.0


def test_within_passage_pearson_ignores_passage_offsets_and_singletons():
  rng = np.random.default_rng(2)
  passages = np.repeat([f"p{i}" for i in range(12)], 5)
  offset = np.repeat(rng.normal(scale=5, size=12), 5)
  y = offset + rng.normal(size=60)
  p = 0.5 * (y - offset) + rng.normal(size=60)  # ranks within passage, knows nothing of pieces
  within = metrics.within_passage_pearson(p, y, passages)
  # By hand: the pooled within-group correlation.
  yc = np.concatenate([g - g.mean() for g in np.split(y, 12)])
  pc = np.concatenate([g - g.mean() for g in np.split(p, 12)])
  assert within == pytest.approx(scipy.stats.pearsonr(pc, yc)[0], abs=1e-12)
  # Passage offsets in the predictions change nothing within passage, everything overall.
  shifted = p + np.repeat(rng.normal(scale=5, size=12), 5)
  assert metrics.within_passage_pearson(shifted, y, passages) == pytest.approx(within, abs=1e-12)
  assert abs(metrics.pearson(shifted, y) - metrics.pearson(p, y)) > 0.05
  # A passage with one performance adds nothing.
  more = metrics.within_passage_pearson(np.append(p, 100.0), np.append(y, -100.0),
                                        np.append(passages, "solo"))
  assert more == pytest.approx(within, abs=1e-12)


def test_score_gives_every_metric_per_dimension_over_valid_performances():
  rng = np.random.default_rng(3)
  y = rng.normal(size=(40, 19))
  p = y + rng.normal(size=(40, 19))
  mask = rng.random((40, 19)) > 0.2
  passages = np.repeat([f"p{i}" for i in range(10)], 4)
  out = metrics.score(p, y, mask, passages)
  assert set(out) == {"pearson", "spearman", "r2", "mse", "mae", "pearson_within"}
  d = 7
  m = mask[:, d]
  assert out["pearson"][d] == pytest.approx(scipy.stats.pearsonr(p[m, d], y[m, d])[0])
  assert out["pearson_within"][d] == pytest.approx(
      metrics.within_passage_pearson(p[m, d], y[m, d], passages[m]))
  assert "pearson_within" not in metrics.score(p, y, mask)
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.per_dimension("kendall", p, y, mask)
