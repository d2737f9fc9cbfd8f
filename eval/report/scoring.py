"""Every number of one evaluated set: rows per dimension/group, comparisons, ceiling."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from eval import ceiling as ceiling_lib
from eval import statistics
from eval.report.common import ROWS, ReportError
from pipelines.datasets import taxonomy
from train import metrics, predictions


def _common(main: predictions.Predictions, other: predictions.Predictions, name: str
            ) -> predictions.Predictions:
  if set(other.keys) != set(main.keys):
    raise ReportError(
        f"{name} was evaluated on other performances ({len(other.keys)} vs {len(main.keys)}, "
        f"{len(set(other.keys) ^ set(main.keys))} differ): compare runs on the same split and "
        "folds")
  other = other.subset(main.keys)
  if not np.allclose(np.where(main.mask, main.labels, 0), np.where(other.mask, other.labels, 0)):
    raise ReportError(f"{name} has different labels for the same performances")
  return other


def _rows(values: np.ndarray) -> dict[str, float]:
  """`[19]` -> {dimension, group, "mean"} (groups average their dimensions)."""
  return {k: float(v) for k, v in statistics.with_groups(values).items()}


def relative_gain(value: float, baseline: float) -> float | None:
  """(value - baseline) / baseline; None when the baseline's Pearson is not positive:
  a gain relative to a negative correlation has no meaning (the sign flips it)."""
  if not (np.isfinite(value) and np.isfinite(baseline)) or baseline <= 0:
    return None
  return (value - baseline) / baseline


class _FoldScores:
  """Pearson scored fold by fold and averaged over the folds, as k-fold results are
  reported: pooling the folds' predictions instead mixes models that each learned
  their own training pieces' label means, which can turn every model's correlation
  negative although each fold's is positive. The bootstrap resamples each fold's
  performances on their own (stratified), with the same draws for every run; it holds
  the fold models fixed and treats performances as independent, so its CI is narrower
  than the spread between folds (see each fold's value beside it)."""

  def __init__(self, keys: Sequence[str], folds: Sequence[Sequence[str]], resamples: int,
               seed: int):
    index = {k: i for i, k in enumerate(keys)}
    self.members = [np.array([index[k] for k in fold], int) for fold in folds]
    if sorted(np.concatenate(self.members)) != list(range(len(keys))):
      raise ReportError("the folds do not partition the out-of-fold performances")
    if min(len(m) for m in self.members) < 3:
      raise ReportError(f"a fold of {[len(m) for m in self.members]} performances has too few "
                        "for a correlation")
    # Seeds apart from the pooled bootstrap's (seed) so the two never share draws.
    self.weights = [statistics.bootstrap_weights(len(m), resamples, seed + 1 + f)
                    for f, m in enumerate(self.members)]

  def __call__(self, p: predictions.Predictions) -> tuple[np.ndarray, np.ndarray]:
    """(`[F, D]` each fold's Pearson, `[F, B, D]` its bootstrap replicates)."""
    per_fold = np.stack([metrics.per_dimension_pearson(p.predictions[m], p.labels[m], p.mask[m])
                         for m in self.members])
    reps = np.stack([statistics.replicate_scores("pearson", p.predictions[m], p.labels[m],
                                                 p.mask[m], w)
                     for m, w in zip(self.members, self.weights)])
    return per_fold, reps


def _over_folds(per_fold: np.ndarray, reps: np.ndarray, valid: np.ndarray | None = None,
                valid_reps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(`[D]`, `[B, D]`): the mean over the folds where a dimension's Pearson is defined
  (no signal in a fold: NaN, left out) or, for a paired difference, over `valid` ones:
  the folds defined for both runs, so the two means average the same folds."""
  valid = np.isfinite(per_fold) if valid is None else valid
  valid_reps = np.isfinite(reps) if valid_reps is None else valid_reps
  with warnings.catch_warnings():  # a dimension defined in no fold: NaN, as intended
    warnings.simplefilter("ignore", RuntimeWarning)
    return (np.nanmean(np.where(valid, per_fold, np.nan), axis=0),
            np.nanmean(np.where(valid_reps, reps, np.nan), axis=0))


def _fold_rows(per_fold: np.ndarray, reps: np.ndarray) -> dict[str, dict]:
  mean, reps = _over_folds(per_fold, reps)
  low, high = statistics.percentile_interval(reps)
  folds = [_rows(f) for f in per_fold]
  return {k: {"pearson": v, "pearson_low": lo, "pearson_high": hi,
              "folds": [f[k] for f in folds]}
          for (k, v), lo, hi in zip(_rows(mean).items(), _rows(low).values(),
                                    _rows(high).values())}


def _replicate(p: predictions.Predictions, metric: str, weights: np.ndarray,
               passages: Sequence[str]) -> np.ndarray:
  return statistics.replicate_scores(metric, p.predictions, p.labels, p.mask, weights, passages)


def _described(p: predictions.Predictions, weights: np.ndarray, passages: Sequence[str]
               ) -> tuple[dict, dict]:
  """(rows of every metric, with CIs for Pearson, within-passage Pearson and R²; the
  bootstrap replicates of those three)."""
  scores = metrics.score(p.predictions, p.labels, p.mask, passages)
  rows = {k: {} for k in ROWS}
  reps = {}
  for metric, values in scores.items():
    for k, v in _rows(values).items():
      rows[k][metric] = v
  for metric in ("pearson", "pearson_within", "r2"):
    reps[metric] = _replicate(p, metric, weights, passages)
    low, high = statistics.percentile_interval(reps[metric])
    for k, v in _rows(low).items():
      rows[k][f"{metric}_low"] = v
    for k, v in _rows(high).items():
      rows[k][f"{metric}_high"] = v
  return rows, reps


def _add_ceiling(rows: dict[str, dict], ceiling: ceiling_lib.Ceiling) -> None:
  """The human ceiling in every row, and the model's Pearson as a fraction of it."""
  for key, values in (("ceiling", ceiling.pearson), ("ceiling_within", ceiling.pearson_within)):
    for k, v in _rows(values).items():
      rows[k][key] = v
  ratio = lambda v, c: v / c if c > 0 else float("nan")  # a zero ceiling: no reliable signal
  for k in ROWS:
    rows[k]["of_ceiling"] = ratio(rows[k]["pearson"], rows[k]["ceiling"])
    rows[k]["of_ceiling_within"] = ratio(rows[k]["pearson_within"], rows[k]["ceiling_within"])


def _compared_rows(main: predictions.Predictions, other: predictions.Predictions, reps: dict,
                   other_rows: dict[str, dict], other_reps: dict, passages: Sequence[str]
                   ) -> dict[str, dict]:
  """The other run's rows, with the main run's Pearson lead over it: paired-bootstrap
  difference (CI, p) and Williams' test, Holm-corrected across the dimensions."""
  full = np.ones((1, len(main.keys)))
  paired = statistics.paired_summary(
      reps["pearson"], other_reps["pearson"],
      _replicate(main, "pearson", full, passages)[0]
      - _replicate(other, "pearson", full, passages)[0])
  williams = statistics.dependent_correlations(main.predictions, other.predictions,
                                               main.labels, main.mask)
  p_boot = statistics.holm([paired[d]["p"] for d in taxonomy.DIMENSION_NAMES])
  p_williams = [w["p"] for w in williams]
  p_williams_holm = statistics.holm(p_williams)
  table = {}
  for k in ROWS:
    entry = {"pearson": other_rows[k]["pearson"], "pearson_low": other_rows[k]["pearson_low"],
             "pearson_high": other_rows[k]["pearson_high"], "r2": other_rows[k]["r2"],
             "pearson_within": other_rows[k]["pearson_within"],
             "difference": paired[k]["difference"], "difference_low": paired[k]["low"],
             "difference_high": paired[k]["high"], "p_bootstrap": paired[k]["p"]}
    if k in taxonomy.DIMENSION_NAMES:
      d = taxonomy.DIMENSION_NAMES.index(k)
      entry.update(p_bootstrap_holm=float(p_boot[d]), p_williams=float(p_williams[d]),
                   p_williams_holm=float(p_williams_holm[d]))
    table[k] = entry
  return table


def _compared_fold_rows(by_fold: _FoldScores, main_folds: tuple[np.ndarray, np.ndarray],
                        other: predictions.Predictions, name: str,
                        folds: Sequence[Sequence[str]],
                        other_folds: dict[str, Sequence[Sequence[str]]] | None
                        ) -> dict[str, dict]:
  """The other run's rows scored fold by fold, with the main run's lead over it averaged
  over the folds defined for both."""
  theirs = (other_folds or {}).get(name)
  if theirs is not None and {frozenset(f) for f in theirs} != {frozenset(f) for f in folds}:
    raise ReportError(f"{name} was cross-validated on other folds: its fold models cannot "
                      "be compared fold by fold (use the same split and --folds)")
  scores = by_fold(other)
  valid = np.isfinite(main_folds[0]) & np.isfinite(scores[0])
  valid_reps = np.isfinite(main_folds[1]) & np.isfinite(scores[1]) & valid[:, None, :]
  (mine, mine_reps), (its, its_reps) = (_over_folds(*x, valid, valid_reps)
                                        for x in (main_folds, scores))
  fold_paired = statistics.paired_summary(mine_reps, its_reps, mine - its)
  return {k: {**v, "difference": fold_paired[k]["difference"],
              "difference_low": fold_paired[k]["low"], "difference_high": fold_paired[k]["high"],
              "p_bootstrap": fold_paired[k]["p"]}
          for k, v in _fold_rows(*scores).items()}


def evaluate(main: predictions.Predictions, others: dict[str, predictions.Predictions],
             ceiling: ceiling_lib.Ceiling | None, *, resamples: int, seed: int,
             folds: Sequence[Sequence[str]] | None = None,
             other_folds: dict[str, Sequence[Sequence[str]]] | None = None) -> dict:
  """Every number of one evaluated set: rows per dimension/group, comparisons, ceiling.

  With `folds` (the performances of each cross-validation fold) the headline is the
  mean over folds of each fold's Pearson (`fold_rows`); the pooled rows stay beside it.
  A compared run must have been cross-validated on the same folds (`other_folds`).
  """
  passages = main.passages
  n = len(main.keys)
  weights = statistics.bootstrap_weights(n, resamples, seed)
  rows, reps = _described(main, weights, passages)
  by_fold = _FoldScores(main.keys, folds, resamples, seed) if folds is not None else None
  if by_fold is not None:
    main_folds = by_fold(main)
    fold_rows = _fold_rows(*main_folds)
  if ceiling is not None:
    _add_ceiling(rows, ceiling)
  compare = {}
  for name, other in others.items():
    other = _common(main, other, name)
    other_rows, other_reps = _described(other, weights, passages)
    compare[name] = {"rows": _compared_rows(main, other, reps, other_rows, other_reps, passages)}
    headline, other_headline = rows["mean"]["pearson"], other_rows["mean"]["pearson"]
    if by_fold is not None:
      compare[name]["fold_rows"] = _compared_fold_rows(by_fold, main_folds, other, name, folds,
                                                       other_folds)
      headline = fold_rows["mean"]["pearson"]
      other_headline = compare[name]["fold_rows"]["mean"]["pearson"]
    compare[name]["relative_mean_pearson_gain"] = relative_gain(headline, other_headline)
  out = {"performances": n, "passages": len(set(passages)), "split": main.split,
         "rows": rows, "compare": compare,
         "headline": "pooled" if by_fold is None else "mean over folds"}
  if by_fold is not None:
    out["fold_rows"] = fold_rows
    out["fold_sizes"] = [len(m) for m in by_fold.members]
  return out


def headline_rows(evaluation: dict) -> dict[str, dict]:
  """The rows a set (or a comparison on it) is judged by: the mean over folds where
  scored by fold, else pooled."""
  return evaluation.get("fold_rows") or evaluation["rows"]
