"""Scores of per-window predictions against PercePiano labels.

Windows are averaged per performance first (a performance is rated once; its
windows are not independent samples), then Pearson's r is computed per
dimension over performances, and averaged per task group and overall. Pearson is
the primary metric (PercePiano reports R² as well; issue 9 adds R², Spearman,
MSE, confidence intervals and significance tests on top of these functions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipelines import taxonomy


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


def per_dimension_pearson(predictions: np.ndarray, labels: np.ndarray,
                          mask: np.ndarray) -> np.ndarray:
  """`[D]` Pearson's r per dimension over the performances valid there."""
  return np.array([pearson(predictions[mask[:, d], d], labels[mask[:, d], d])
                   for d in range(predictions.shape[1])])


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
