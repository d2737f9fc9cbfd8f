"""Scores of per-window predictions against PercePiano labels.

Windows are averaged per performance first (a performance is rated once; its
windows are not independent samples), then each metric is computed per
dimension over performances, and averaged per task group and overall.

Pearson's r is the primary metric. R² follows `sklearn.metrics.r2_score`
exactly (1 - SS_res / SS_tot; a constant label column scores 1 if predicted
exactly, else 0), as the PercePiano paper reports R². *Within-passage*
Pearson centres labels and predictions on each passage's mean before
correlating: it asks whether the model ranks different performances of the
same music as listeners did, which the overall figure mixes up with telling
pieces apart (the passage explains much of the label variance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from pipelines.datasets import taxonomy


def performance_means(ids: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
                      label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages windows per performance id.

  Args:
    ids: `[N]` integer performance ids (windows of one performance share one).
    predictions, labels: `[N, D]` in label space.
    label_mask: `[N, D]` bool; a dimension counts for a performance if any of
      its windows has a valid label there.

  Returns:
    `(predictions [P, D], labels [P, D], mask [P, D])` in increasing id order.
  """
  ids = np.asarray(ids)
  unique, inverse = np.unique(ids, return_inverse=True)
  counts = np.bincount(inverse, minlength=len(unique)).astype(np.float64)[:, None]
  mask = np.asarray(label_mask, bool)

  def mean(x, weights):
    total = np.zeros((len(unique), x.shape[1]))
    np.add.at(total, inverse, np.where(weights, x, 0.0))
    return total

  pred = mean(np.asarray(predictions, np.float64), np.ones_like(mask)) / counts
  valid = np.zeros((len(unique), mask.shape[1]))
  np.add.at(valid, inverse, mask.astype(np.float64))
  label = mean(np.asarray(labels, np.float64), mask) / np.maximum(valid, 1)
  return pred, label, valid > 0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson's r of two vectors; NaN when either is constant or shorter than 2."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.size < 2:
    return float("nan")
  xc, yc = x - x.mean(), y - y.mean()
  denominator = np.sqrt((xc * xc).sum() * (yc * yc).sum())
  return float((xc * yc).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman's rho: Pearson's r of the ranks (ties get their average rank)."""
  if np.size(x) < 2:
    return float("nan")
  return pearson(scipy.stats.rankdata(x), scipy.stats.rankdata(y))


def r2(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Coefficient of determination with `sklearn.metrics.r2_score`'s definition."""
  predictions = np.asarray(predictions, np.float64)
  labels = np.asarray(labels, np.float64)
  if labels.size < 2:
    return float("nan")
  residual = ((labels - predictions) ** 2).sum()
  total = ((labels - labels.mean()) ** 2).sum()
  if total == 0:
    return 1.0 if residual == 0 else 0.0
  return float(1.0 - residual / total)


def mse(predictions: np.ndarray, labels: np.ndarray) -> float:
  d = np.asarray(predictions, np.float64) - np.asarray(labels, np.float64)
  return float(np.mean(d * d)) if d.size else float("nan")


def mae(predictions: np.ndarray, labels: np.ndarray) -> float:
  d = np.asarray(predictions, np.float64) - np.asarray(labels, np.float64)
  return float(np.mean(np.abs(d))) if d.size else float("nan")


def centre_by_group(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """`x` minus the mean of its group (groups given as any hashable labels per row)."""
  x = np.asarray(x, np.float64)
  _, inverse = np.unique(np.asarray(groups), return_inverse=True)
  sums = np.bincount(inverse, weights=x)
  return x - (sums / np.bincount(inverse))[inverse]


def within_passage_pearson(predictions: np.ndarray, labels: np.ndarray,
                           passages: Sequence[str]) -> float:
  """Pearson's r after centring both on each passage's mean (the pooled within-passage r).

  Passages with a single performance carry no within-passage information and
  are left out.
  """
  passages = np.asarray(passages)
  _, inverse, counts = np.unique(passages, return_inverse=True, return_counts=True)
  keep = counts[inverse] > 1
  if keep.sum() < 2:
    return float("nan")
  return pearson(centre_by_group(np.asarray(predictions)[keep], passages[keep]),
                 centre_by_group(np.asarray(labels)[keep], passages[keep]))


# name -> (per-column score function, higher is better)
METRICS = {
    "pearson": (pearson, True),
    "spearman": (spearman, True),
    "r2": (r2, True),
    "mse": (mse, False),
    "mae": (mae, False),
}


def per_dimension(metric: str, predictions: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray, passages: Sequence[str] | None = None) -> np.ndarray:
  """`[D]` one metric per dimension over the performances valid there.

  `metric` is a key of `METRICS` or "pearson_within" (needs `passages`).
  """
  if metric == "pearson_within":
    if passages is None:
      raise ValueError("pearson_within needs the passage of every performance")
    passages = np.asarray(passages)
    fn = lambda p, y, m: within_passage_pearson(p, y, passages[m])
  elif metric in METRICS:
    fn = lambda p, y, m: METRICS[metric][0](p, y)
  else:
    raise ValueError(f"unknown metric {metric!r}; expected one of "
                     f"{sorted([*METRICS, 'pearson_within'])}")
  mask = np.asarray(mask, bool)
  return np.array([fn(predictions[mask[:, d], d], labels[mask[:, d], d], mask[:, d])
                   for d in range(predictions.shape[1])])


def per_dimension_pearson(predictions: np.ndarray, labels: np.ndarray,
                          mask: np.ndarray) -> np.ndarray:
  """`[D]` Pearson's r per dimension over the performances valid there."""
  return per_dimension("pearson", predictions, labels, mask)


def mean_pearson(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
  """The mean over dimensions of Pearson's r (those where it is defined): model selection's
  metric."""
  return _nanmean(per_dimension_pearson(predictions, labels, mask))


def score(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray,
          passages: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Every metric per dimension: `{metric: [D]}` (with "pearson_within" when passages are given)."""
  names = [*METRICS] + (["pearson_within"] if passages is not None else [])
  return {m: per_dimension(m, predictions, labels, mask, passages) for m in names}


def summarise(values: np.ndarray, groups: Mapping[str, Sequence[int]] | None = None,
              prefix: str = "pearson") -> dict[str, float]:
  """`{prefix}/{dimension}`, `{prefix}/{group}` (mean of its dimensions) and `{prefix}/mean`."""
  groups = taxonomy.GROUPS if groups is None else groups
  out = {f"{prefix}/{name}": float(v) for name, v in zip(taxonomy.DIMENSION_NAMES, values)}
  for group, dims in groups.items():
    out[f"{prefix}/{group}"] = _nanmean(values[list(dims)])
  out[f"{prefix}/mean"] = _nanmean(values)
  return out


def _nanmean(values: np.ndarray) -> float:
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float("nan")
