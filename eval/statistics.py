"""Uncertainty and significance for per-dimension scores: bootstrap CIs, paired tests, Holm.

The unit of resampling is the performance (each is rated once; its windows are
already averaged), so a bootstrap replicate is a vector of multinomial counts
over performances. Replicates are applied as weights: a weighted Pearson's r
over all performances with weights `w` is exactly Pearson's r of the resampled
set, and one `[B, P]` weight matrix scores every dimension, every group mean
and the within-passage variant with a few matrix products (10 000 replicates
of 1202 performances x 19 dimensions take seconds). The same weights are used
for every dimension, so group means and paired differences of two models get
their CIs from the same resamples.

Comparing two models on the same performances:

* `paired_bootstrap`: the difference of any per-dimension metric, its
  percentile CI, and a two-sided p-value from the bootstrap distribution
  shifted to the null (Efron & Tibshirani 1993, §16.4).
* `williams_test`: Williams' t for two dependent correlations that share the
  labels (r(label, A) vs r(label, B), given r(A, B)); the test Steiger (1980)
  recommends. `steiger_z` is Steiger's Z1* on Fisher's z, for reference.

`holm` adjusts the 19 per-dimension p-values (family-wise error at alpha).
The simulations in tests/test_statistics.py check CI coverage and type-I
error against known truth.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from pipelines.datasets import taxonomy
from train import metrics

DEFAULT_RESAMPLES = 10_000
# Resamples scored per matrix product: bounds the [chunk, P] temporaries.
_CHUNK = 2_000


def bootstrap_weights(num_items: int, resamples: int, seed: int) -> np.ndarray:
  """`[resamples, num_items]` counts: how often each item is drawn in each replicate."""
  if num_items < 2:
    raise ValueError(f"need at least 2 performances to bootstrap, got {num_items}")
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_items, np.full(num_items, 1.0 / num_items),
                         size=resamples).astype(np.float64)


def _weighted_pearson(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Pearson's r of `x`, `y` [P] under each row of weights `w` [B, P] -> [B]."""
  n = w.sum(axis=1)
  mx, my = w @ x / n, w @ y / n
  cov = w @ (x * y) / n - mx * my
  vx = w @ (x * x) / n - mx * mx
  vy = w @ (y * y) / n - my * my
  with np.errstate(invalid="ignore", divide="ignore"):
    r = cov / np.sqrt(vx * vy)
  return np.where((vx > 1e-15) & (vy > 1e-15), r, np.nan)


def _weighted_within_pearson(w: np.ndarray, x: np.ndarray, y: np.ndarray,
                             starts: np.ndarray) -> np.ndarray:
  """The within-passage r of each replicate: centring on the replicate's own passage means.

  Items are sorted by passage and `starts` are the first index of each, so the
  per-passage sums of a replicate are one `np.add.reduceat` (O(B·P), not a
  [P, passages] one-hot product).
  """
  sums = lambda v: np.add.reduceat(v, starts, axis=1)  # [B, Q]
  sw, sx, sy = sums(w), sums(w * x), sums(w * y)
  with np.errstate(invalid="ignore", divide="ignore"):
    inv = np.where(sw > 0, 1.0 / sw, 0.0)
  cov = w @ (x * y) - (sx * sy * inv).sum(axis=1)
  vx = w @ (x * x) - (sx * sx * inv).sum(axis=1)
  vy = w @ (y * y) - (sy * sy * inv).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = cov / np.sqrt(vx * vy)
  return np.where((vx > 1e-12) & (vy > 1e-12), r, np.nan)


def _weighted_r2(w: np.ndarray, p: np.ndarray, y: np.ndarray) -> np.ndarray:
  n = w.sum(axis=1)
  my = w @ y / n
  residual = w @ ((y - p) ** 2)
  total = w @ (y * y) - n * my * my
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 1e-15, 1.0 - residual / total, np.where(residual == 0, 1.0, 0.0))


def _weighted_mean_error(w: np.ndarray, p: np.ndarray, y: np.ndarray, power: int) -> np.ndarray:
  return w @ (np.abs(p - y) ** power) / w.sum(axis=1)


def replicate_scores(metric: str, predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                     weights: np.ndarray, passages: Sequence[str] | None = None) -> np.ndarray:
  """`[B, D]` a metric per dimension under each bootstrap replicate's weights.

  `metric`: "pearson", "pearson_within" (needs `passages`), "r2", "mse" or
  "mae". A performance whose label is masked at a dimension gets weight 0 there.
  """
  predictions = np.asarray(predictions, np.float64)
  labels = np.asarray(labels, np.float64)
  mask = np.asarray(mask, bool)
  if metric == "pearson_within":
    if passages is None:
      raise ValueError("pearson_within needs passages")
    groups = np.unique(np.asarray(passages), return_inverse=True)[1]
    order = np.argsort(groups, kind="stable")
    predictions, labels, mask, weights = (predictions[order], labels[order], mask[order],
                                          weights[:, order])
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])
  elif metric not in ("pearson", "r2", "mse", "mae"):
    raise ValueError(f"no bootstrap for metric {metric!r}")
  out = np.empty((weights.shape[0], predictions.shape[1]))
  for start in range(0, weights.shape[0], _CHUNK):
    w_all = weights[start:start + _CHUNK]
    for d in range(predictions.shape[1]):
      if mask[:, d].all():  # the usual case: no [chunk, P] copy
        w, p, y = w_all, predictions[:, d], labels[:, d]
      else:
        w = w_all * mask[:, d]
        p = np.where(mask[:, d], predictions[:, d], 0.0)
        y = np.where(mask[:, d], labels[:, d], 0.0)
      if metric == "pearson":
        r = _weighted_pearson(w, p, y)
      elif metric == "pearson_within":
        r = _weighted_within_pearson(w, p, y, starts)
      elif metric == "r2":
        r = _weighted_r2(w, p, y)
      else:
        r = _weighted_mean_error(w, p, y, 2 if metric == "mse" else 1)
      out[start:start + len(w_all), d] = r
  return out


def with_groups(per_dimension: np.ndarray,
                groups: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
  """`[..., D]` -> `{dimension | group | "mean": [...]}` (group = NaN-ignoring mean of its dims)."""
  groups = taxonomy.GROUPS if groups is None else groups
  out = {name: per_dimension[..., i] for i, name in enumerate(taxonomy.DIMENSION_NAMES)}
  with _quiet_nanmean():
    for group, dims in groups.items():
      out[group] = np.nanmean(per_dimension[..., list(dims)], axis=-1)
    out["mean"] = np.nanmean(per_dimension, axis=-1)
  return out


@contextlib.contextmanager
def _quiet_nanmean():
  """Silences "Mean of empty slice" for all-NaN rows: their result is NaN, as intended."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(low, high) percentile bootstrap interval over axis 0 (NaN replicates ignored)."""
  tail = 100 * (1 - confidence) / 2
  with _quiet_nanmean():
    return (np.nanpercentile(replicates, tail, axis=0),
            np.nanpercentile(replicates, 100 - tail, axis=0))


def confidence_intervals(metric: str, predictions, labels, mask, passages=None, *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, tuple[float, float]]:
  """Percentile bootstrap CI of a metric for every dimension, group and the mean."""
  weights = bootstrap_weights(len(predictions), resamples, seed)
  reps = with_groups(replicate_scores(metric, predictions, labels, mask, weights, passages))
  return {k: tuple(float(v) for v in percentile_interval(r, confidence)) for k, r in reps.items()}


def paired_bootstrap(metric: str, predictions_a, predictions_b, labels, mask, passages=None, *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, dict[str, float]]:
  """Model A minus model B on the same performances, per dimension, group and mean.

  Returns `{name: {"difference", "low", "high", "p"}}` (see `paired_summary`).
  """
  weights = bootstrap_weights(len(labels), resamples, seed)
  full = np.ones((1, len(labels)))
  score = lambda p, w: replicate_scores(metric, p, labels, mask, w, passages)
  return paired_summary(score(predictions_a, weights), score(predictions_b, weights),
                        score(predictions_a, full)[0] - score(predictions_b, full)[0], confidence)


def paired_summary(replicates_a: np.ndarray, replicates_b: np.ndarray, observed: np.ndarray,
                   confidence: float = 0.95) -> dict[str, dict[str, float]]:
  """Difference A - B from per-dimension replicates `[B, D]` drawn with the *same* weights.

  The p-value is two-sided, from the replicate differences shifted to mean
  zero under the null: `(1 + #|d* - mean(d*)| >= |d|) / (1 + B)`.
  """
  observed = with_groups(np.asarray(observed, np.float64))
  out = {}
  for name, d in with_groups(replicates_a - replicates_b).items():
    d = d[np.isfinite(d)]
    delta = float(observed[name])
    if not d.size or not np.isfinite(delta):
      out[name] = {"difference": delta, "low": np.nan, "high": np.nan, "p": np.nan}
      continue
    low, high = percentile_interval(d, confidence)
    extreme = np.count_nonzero(np.abs(d - d.mean()) >= abs(delta) - 1e-12)
    out[name] = {"difference": delta, "low": float(low), "high": float(high),
                 "p": float((1 + extreme) / (1 + d.size))}
  return out


def williams_test(r_la: float, r_lb: float, r_ab: float, n: int) -> tuple[float, float]:
  """Williams' t (df n - 3) for H0: r(label, A) = r(label, B); returns (t, two-sided p).

  Williams (1959), in the form of Steiger (1980, eq. 7). Uses the correlation
  of the two models' predictions, which is what makes the test paired.
  """
  if n < 4:
    return float("nan"), float("nan")
  det = 1 - r_la**2 - r_lb**2 - r_ab**2 + 2 * r_la * r_lb * r_ab
  mean = (r_la + r_lb) / 2
  denominator = 2 * (n - 1) / (n - 3) * det + mean**2 * (1 - r_ab)**3
  if not np.isfinite(denominator) or denominator <= 0:
    return float("nan"), float("nan")
  t = (r_la - r_lb) * np.sqrt((n - 1) * (1 + r_ab) / denominator)
  return float(t), float(2 * scipy.stats.t.sf(abs(t), n - 3))


def steiger_z(r_la: float, r_lb: float, r_ab: float, n: int) -> tuple[float, float]:
  """Steiger's (1980) Z1* for the same hypothesis, on Fisher's z with the pooled r."""
  if n < 4:
    return float("nan"), float("nan")
  mean = (r_la + r_lb) / 2
  psi = r_ab * (1 - 2 * mean**2) - 0.5 * mean**2 * (1 - 2 * mean**2 - r_ab**2)
  covariance = psi / (1 - mean**2) ** 2
  denominator = 2 - 2 * covariance
  if denominator <= 0:
    return float("nan"), float("nan")
  z = (np.arctanh(r_la) - np.arctanh(r_lb)) * np.sqrt((n - 3) / denominator)
  return float(z), float(2 * scipy.stats.norm.sf(abs(z)))


def dependent_correlations(predictions_a, predictions_b, labels, mask
                           ) -> list[dict[str, float]]:
  """Williams' test per dimension: `[{"r_a", "r_b", "r_ab", "n", "t", "p"}]` in label order."""
  out = []
  for d in range(labels.shape[1]):
    m = np.asarray(mask[:, d], bool)
    a, b, y = predictions_a[m, d], predictions_b[m, d], labels[m, d]
    r_a, r_b, r_ab = metrics.pearson(a, y), metrics.pearson(b, y), metrics.pearson(a, b)
    t, p = williams_test(r_a, r_b, r_ab, int(m.sum()))
    out.append({"r_a": r_a, "r_b": r_b, "r_ab": r_ab, "n": int(m.sum()), "t": t, "p": p})
  return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (NaNs stay NaN and do not count as tests)."""
  p = np.asarray(pvalues, np.float64)
  out = np.full_like(p, np.nan)
  finite = np.flatnonzero(np.isfinite(p))
  m = len(finite)
  order = finite[np.argsort(p[finite], kind="stable")]
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out
