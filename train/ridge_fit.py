"""The closed-form ridge: standardise, centre, solve all 19 dimensions through one SVD, with
the regularisation chosen by a grouped inner cross-validation.

The regularisation is chosen over the *training* performances only, grouped like the outer
split (by passage for the piece split, by performer for the performer split), by the
report's metric: the mean over dimensions of the Pearson correlation. `train.ridge` runs it
over a split's folds in the trainer's run format; `train.notes_from_midi` and
`eval.cross_timbre` fit it too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from train import metrics

ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


class RidgeError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class RidgeModel:
  mean: np.ndarray  # [F] feature means of the training performances
  scale: np.ndarray  # [F] their standard deviations (1 where constant)
  weights: np.ndarray  # [F, D]
  bias: np.ndarray  # [D] the training labels' means
  alpha: float
  inner_pearson: dict[float, float]  # mean inner-CV Pearson of every alpha tried
  block_weight: float | None = None  # the second block's weight (fusion), else None

  def predict(self, x: np.ndarray) -> np.ndarray:
    return ((x - self.mean) / self.scale) @ self.weights + self.bias


def _solve(x: np.ndarray, y: np.ndarray, alphas) -> list[np.ndarray]:
  """Ridge weights `[F, D]` for each alpha (x standardised, y centred), from one SVD."""
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  uty = u.T @ y
  return [vt.T @ ((s / (s * s + a))[:, None] * uty) for a in alphas]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mean, scale = x.mean(0), x.std(0)
  return mean, np.where(scale > 0, scale, 1.0)


def group_folds(groups: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
  """An inner fold per item, whole groups at a time: groups shuffled by `seed`, then dealt
  to the fold with the fewest items so far (folds stay about the same size)."""
  unique = np.unique(groups)
  if unique.size < num_folds:
    raise RidgeError(f"{unique.size} groups cannot fill {num_folds} inner folds")
  order = np.random.default_rng(seed).permutation(unique)
  sizes = np.zeros(num_folds, int)
  fold_of = {}
  for g in order:
    k = int(np.argmin(sizes))
    fold_of[g] = k
    sizes[k] += int((groups == g).sum())
  return np.array([fold_of[g] for g in groups])


# Fusion: the second block's columns are scaled by one of these after standardising (chosen
# by the inner cross-validation with alpha), so 384 embedding columns need not outweigh 39
# note statistics under one penalty.
BLOCK_WEIGHTS = (0.1, 0.2, 0.35, 0.6, 1.0)


def fit(x: np.ndarray, labels: np.ndarray, mask: np.ndarray, groups: np.ndarray, *,
        alphas=ALPHAS, inner_folds: int = 4, seed: int = 0,
        second_block: int | None = None) -> RidgeModel:
  """Ridge on `x [N, F]` -> `labels [N, D]`, alpha chosen by grouped inner cross-validation.

  With `second_block` (a column index) the columns from it on form a second block whose
  standardised values are scaled by a weight from `BLOCK_WEIGHTS`, chosen with alpha (a
  lighter penalty on the first block). With fewer groups than `inner_folds` (a small
  corpus) each group is its own inner fold. With one alpha and no second block there is
  nothing to choose, and no inner cross-validation runs.
  """
  if len(alphas) == 1 and second_block is None:
    mean, scale = _standardise(x)
    bias = labels.mean(0)
    alpha = float(alphas[0])
    return RidgeModel(mean=mean, scale=scale, weights=_solve((x - mean) / scale, labels - bias,
                                                             [alpha])[0],
                      bias=bias, alpha=alpha, inner_pearson={})
  inner_folds = min(inner_folds, np.unique(groups).size)
  if inner_folds < 2:
    raise RidgeError("the training performances form one group: no inner cross-validation "
                     "can choose the regularisation")
  block_weights = BLOCK_WEIGHTS if second_block is not None else (1.0,)

  def weighted(scale: np.ndarray, w: float) -> np.ndarray:
    if second_block is None:
      return scale
    return np.concatenate([scale[:second_block], scale[second_block:] / w])

  folds = group_folds(groups, inner_folds, seed)
  scores = np.zeros((inner_folds, len(block_weights), len(alphas)))
  for k in range(inner_folds):
    train, held = folds != k, folds == k
    mean, base = _standardise(x[train])
    bias = labels[train].mean(0)
    for b, block_weight in enumerate(block_weights):
      scale = weighted(base, block_weight)
      for j, w in enumerate(_solve((x[train] - mean) / scale, labels[train] - bias, alphas)):
        scores[k, b, j] = metrics.mean_pearson(((x[held] - mean) / scale) @ w + bias,
                                               labels[held], mask[held])
  inner = np.nanmean(scores, axis=0)  # [block weights, alphas]
  b, j = np.unravel_index(int(np.nanargmax(inner)), inner.shape)
  best = float(alphas[j])
  mean, base = _standardise(x)
  scale = weighted(base, block_weights[b])
  bias = labels.mean(0)
  weights = _solve((x - mean) / scale, labels - bias, [best])[0]
  return RidgeModel(mean=mean, scale=scale, weights=weights, bias=bias, alpha=best,
                    inner_pearson={float(a): float(v) for a, v in zip(alphas, inner[b])},
                    block_weight=float(block_weights[b]) if second_block is not None else None)
