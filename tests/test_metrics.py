"""eval.metrics: performance averaging and Pearson, against scipy."""

import numpy as np
import pytest
import scipy.stats

from eval import metrics
from pipelines import taxonomy


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
