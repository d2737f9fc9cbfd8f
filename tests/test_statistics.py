"""eval.statistics: exact agreement with direct computation, then simulations with known truth."""

import numpy as np
import pytest

from eval import statistics
from train import metrics


def _bivariate(rng, n, rho):
  cov = [[1, rho], [rho, 1]]
  x = rng.multivariate_normal([0, 0], cov, size=n)
  return x[:, 0], x[:, 1]


def _cols(x):
  """One simulated score as all 19 dimensions (the statistics are per dimension)."""
  return np.tile(x[:, None], (1, 19))


def test_a_weighted_replicate_equals_scoring_the_resampled_performances():
  rng = np.random.default_rng(0)
  n = 30
  y = rng.normal(size=(n, 19))
  p = y + rng.normal(size=(n, 19))
  mask = rng.random((n, 19)) > 0.1
  passages = np.repeat([f"p{i}" for i in range(10)], 3)
  weights = statistics.bootstrap_weights(n, 5, seed=1)
  assert (weights.sum(axis=1) == n).all()
  for metric in ("pearson", "pearson_within", "r2", "mse", "mae"):
    reps = statistics.replicate_scores(metric, p, y, mask, weights, passages)
    for b in range(5):
      rows = np.repeat(np.arange(n), weights[b].astype(int))
      # Duplicates of one performance stay in its passage (rows share its label).
      direct = metrics.per_dimension(metric, p[rows], y[rows], mask[rows], passages[rows])
      np.testing.assert_allclose(reps[b], direct, rtol=1e-9, atol=1e-12, err_msg=metric)


def test_groups_and_mean_come_from_the_same_replicates():
  per_dim = np.arange(2 * 19, dtype=float).reshape(2, 19)
  out = statistics.with_groups(per_dim)
  assert out["timing"].tolist() == per_dim[:, 0].tolist()
  np.testing.assert_allclose(out["mean"], per_dim.mean(axis=1))


@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_bootstrap_interval_covers_the_true_correlation_95_percent_of_the_time(rho):
  rng = np.random.default_rng(int(rho * 10))
  trials, covered = 300, 0
  for t in range(trials):
    x, y = _bivariate(rng, 150, rho)
    weights = statistics.bootstrap_weights(150, 1000, seed=t)
    reps = statistics.replicate_scores("pearson", x[:, None], y[:, None], np.ones((150, 1), bool),
                                       weights)
    low, high = statistics.percentile_interval(reps)
    covered += low[0] <= rho <= high[0]
  # Monte-Carlo standard error of a 95 % rate over 300 trials is 1.3 points.
  assert 0.91 <= covered / trials <= 0.985


def test_williams_and_steiger_hold_alpha_when_both_models_correlate_equally():
  rng = np.random.default_rng(5)
  # label, A, B: r(label, A) = r(label, B) = 0.5, r(A, B) = 0.6.
  cov = np.array([[1, 0.5, 0.5], [0.5, 1, 0.6], [0.5, 0.6, 1]])
  trials, n = 3000, 80
  rejected = {"williams": 0, "steiger": 0}
  for _ in range(trials):
    y, a, b = rng.multivariate_normal(np.zeros(3), cov, size=n).T
    args = (metrics.pearson(a, y), metrics.pearson(b, y), metrics.pearson(a, b), n)
    rejected["williams"] += statistics.williams_test(*args)[1] < 0.05
    rejected["steiger"] += statistics.steiger_z(*args)[1] < 0.05
  for test, count in rejected.items():
    assert 0.035 <= count / trials <= 0.065, (test, count / trials)


def test_williams_detects_a_real_difference():
  rng = np.random.default_rng(6)
  cov = np.array([[1, 0.7, 0.4], [0.7, 1, 0.4], [0.4, 0.4, 1]])
  y, a, b = rng.multivariate_normal(np.zeros(3), cov, size=300).T
  t, p = statistics.williams_test(metrics.pearson(a, y), metrics.pearson(b, y),
                                  metrics.pearson(a, b), 300)
  assert t > 0 and p < 1e-6


def test_paired_bootstrap_type_one_error_and_power():
  rng = np.random.default_rng(7)
  trials, n, rejected = 200, 100, 0
  for t in range(trials):
    y = rng.normal(size=n)
    shared = rng.normal(size=n)
    # Same expected correlation with y; correlated errors (same items, same labels).
    a = y + shared + rng.normal(size=n)
    b = y + shared + rng.normal(size=n)
    out = statistics.paired_bootstrap("pearson", _cols(a), _cols(b), _cols(y),
                                      np.ones((n, 19), bool), resamples=500, seed=t)
    rejected += out["timing_stability"]["p"] < 0.05
  assert 0.02 <= rejected / trials <= 0.09
  y = rng.normal(size=200)
  better, worse = y + 0.5 * rng.normal(size=200), y + 2 * rng.normal(size=200)
  out = statistics.paired_bootstrap("pearson", _cols(better), _cols(worse), _cols(y),
                                    np.ones((200, 19), bool), resamples=2000, seed=0)
  d = out["timing_stability"]
  assert d["difference"] == pytest.approx(metrics.pearson(better, y) - metrics.pearson(worse, y))
  assert d["low"] > 0 and d["p"] < 0.01


def test_holm_adjusts_by_hand_and_controls_the_family_wise_error():
  # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
  np.testing.assert_allclose(statistics.holm([0.01, 0.04, 0.03, 0.005]),
                             [0.03, 0.06, 0.06, 0.02])
  adjusted = statistics.holm([0.2, np.nan, 0.9])
  assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.4) and adjusted[2] == 0.9
  rng = np.random.default_rng(8)
  null = rng.random((4000, 19))
  any_rejected = np.mean([(statistics.holm(p) < 0.05).any() for p in null])
  assert any_rejected <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)
  assert any_rejected > 0.035  # not a vacuous "reject nothing"
