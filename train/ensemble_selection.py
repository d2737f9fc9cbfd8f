"""Ensemble selection: the members of an ensemble chosen on the split's own folds.

  python -m train.ensemble_selection --data_dir=SHARDS --candidates=W1,W2,... --workdir=W \
      [--lead=W1] [--min_gain=0.001] [--max_members=10] [--split=piece|performer] \
      [--folds=0,1|none] [--test]

Every candidate is a finished cross-validation (`train.crossval`, `train.ridge`,
`train.clip_head`) of the same split and shards, with every fold finished (and the test set
with `--test`). The ensemble is chosen by greedy forward selection with replacement
(Caruana et al., ICML 2004): starting from `--lead` (or from nothing), add the candidate
whose inclusion gives the highest selection score, again and again (a candidate may be
added more than once: its weight is how often it was), until no addition gains
`--min_gain` (and at least something) or the ensemble holds `--max_members` (the lead counts).
The ensemble's prediction is the weighted mean of its members' reported predictions (label
space).

The selection score is the report's metric, the mean over dimensions of Pearson's r, averaged
over selection folds; a combination whose Pearson is undefined on a dimension the labels
define (constant predictions there) scores nothing. Which folds depends on what is predicted:
- the test set: every fold of the split (the candidates' out-of-fold predictions of the
  training performances), so no test label enters the choice;
- fold k: the split's other folds (nested), so fold k's own labels enter the choice of the
  ensemble that predicts it only indirectly: the candidates' predictions of the other folds
  come from models that trained on fold k, and a trainer-trained candidate reports each fold
  at the median of the other folds' selected epochs, fold k's among them. Removing that would
  mean re-running every candidate inside every fold. The fold scores are therefore nearly,
  not perfectly, unbiased; the test set's weights are clean.

Why selection and not fixed members: which models add to each other differs between splits
(on the piece split, pieces are unseen and the notes carry the most; on the performer split,
pieces are seen and the audio statistics and clip heads carry more), so one fixed member list
chosen on one split's folds is a choice the other split did not make. Each fold's and the test
set's weights are in its `result.json` (`weights`, `selected_on`, `selection_score`). The
config records a fingerprint of every candidate's results, so resuming after a candidate was
re-run is refused rather than mixing two versions of it.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from collections import Counter
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import app, flags

from pipelines import entry_point
from pipelines.shards import metadata
from train import crossval, ensemble, fold_runs, metrics, predictions, trainer

FLAGS = flags.FLAGS
# A gain under 0.001 of mean Pearson is far inside a fold's sampling noise (a fold's bootstrap
# s.e. is ~0.02): adding members for it only makes the ensemble harder to read.
MIN_GAIN = 1e-3
MAX_MEMBERS = 10


class SelectionError(ValueError):
  pass


Fold = tuple[Sequence[np.ndarray], np.ndarray, np.ndarray]


def _defined(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The dimensions where Pearson's r against these labels can be defined at all."""
  return np.isfinite(metrics.per_dimension_pearson(labels, labels, mask))


def _check_settings(min_gain: float, max_members: int) -> None:
  if max_members < 1 or min_gain < 0:
    raise SelectionError(f"max_members must be at least 1 and min_gain at least 0, got "
                         f"{max_members} and {min_gain}")


def select(folds: Sequence[Fold], lead: int | None = None, min_gain: float = MIN_GAIN,
           max_members: int = MAX_MEMBERS) -> tuple[list[int], float]:
  """Greedy forward selection with replacement.

  `folds`: per selection fold, (the candidates' `[N, D]` predictions, `[N, D]` labels,
  `[N, D]` mask). Returns the chosen candidate indices in the order they were added (an
  index may repeat: its weight) and their selection score. Ties go to the earlier candidate.
  """
  if not folds:
    raise SelectionError("no selection folds")
  count = len(folds[0][0])
  if count == 0 or any(len(f[0]) != count for f in folds):
    raise SelectionError("every selection fold needs every candidate's predictions")
  if lead is not None and not 0 <= lead < count:
    raise SelectionError(f"lead {lead} is not a candidate index (0..{count - 1})")
  _check_settings(min_gain, max_members)
  defined = [_defined(labels, mask) for _, labels, mask in folds]

  def score(chosen: Counter) -> float:
    total = sum(chosen.values())
    per_fold = []
    for (candidates, labels, mask), where in zip(folds, defined):
      r = metrics.per_dimension_pearson(
          sum(w * candidates[i] for i, w in chosen.items()) / total, labels, mask)
      if not np.all(np.isfinite(r[where])):
        return -np.inf  # a dimension left out would flatter the combination
      per_fold.append(np.mean(r[where]))
    return float(np.mean(per_fold))

  order = [] if lead is None else [lead]
  best = score(Counter(order)) if order else -np.inf
  if order and not np.isfinite(best):
    raise SelectionError(f"the lead (candidate {lead}) has no defined score")
  while len(order) < max_members:
    scores = [score(Counter(order + [i])) for i in range(count)]
    pick = int(np.argmax(scores))  # the first of equal scores
    if not np.isfinite(scores[pick]):
      raise SelectionError("no candidate has a defined score (constant predictions)")
    if order and (scores[pick] <= best or scores[pick] < best + min_gain):
      break
    order.append(pick)
    best = scores[pick]
  return order, best


def weights(order: list[int], names: Sequence[str]) -> dict[str, float]:
  """Each chosen candidate's weight (how often it was added over how many additions), in the
  order each was first added."""
  counts = Counter(order)
  return {names[i]: counts[i] / len(order) for i in dict.fromkeys(order)}


def _config(data_dir: pathlib.Path, candidates: list[pathlib.Path], lead: pathlib.Path | None,
            split: str, min_gain: float, max_members: int) -> ml_collections.ConfigDict:
  # An ensemble led by an AST-based member counts as AST-based (`ast+stats & selection`).
  backbone = (f"{ensemble.member_backbone(lead)} & selection" if lead is not None
              else "selection")
  return ml_collections.ConfigDict({
      "task": "finetune", "data_dir": str(data_dir), "split": split, "seed": 0,
      "validation_fold": -1, "model": {"backbone": backbone},
      "ensemble_selection": {"candidates": [str(c) for c in candidates],
                             "fingerprints": [ensemble.fingerprint(c) for c in candidates],
                             "lead": str(lead) if lead is not None else "",
                             "min_gain": min_gain, "max_members": max_members}})


def _finite(parts: list[predictions.Predictions], names: Sequence[str], side: str) -> None:
  for name, p in zip(names, parts):
    if not np.all(np.isfinite(p.predictions[p.mask])):
      raise SelectionError(f"{name} has non-finite predictions of {side}")


def run_fold(candidates: list[pathlib.Path], lead: int | None, meta: metadata.ShardMetadata,
             config: ml_collections.ConfigDict, directory: pathlib.Path,
             reported: Callable[[pathlib.Path, str], predictions.Predictions] | None = None
             ) -> trainer.Result:
  t0 = time.perf_counter()
  held = functools.partial(ensemble.held_predictions, reported=reported)
  fold = fold_runs.fold_of(meta, config)
  names = [str(c) for c in candidates]
  sides = fold_runs.training_sides(meta, config.split, fold.held_side)
  selection = []
  for side in sides:
    parts = held(candidates, side, fold_runs.side_keys(meta, config.split, side))
    _finite(parts, names, side)
    selection.append(([p.predictions for p in parts], parts[0].labels, parts[0].mask))
  settings = config.ensemble_selection
  order, chosen_score = select(selection, lead, settings.min_gain, settings.max_members)
  chosen = weights(order, names)
  members = [pathlib.Path(name) for name in chosen]
  parts = held(members, fold.held_side, fold.held_keys)
  _finite(parts, list(chosen), fold.held_side)
  scores = sum(w * p.predictions for w, p in zip(chosen.values(), parts))
  return fold_runs.write(directory, config, meta, fold, scores, parts[0].labels, parts[0].mask,
                         time.perf_counter() - t0,
                         {"weights": chosen, "selected_on": sides,
                          "selection_score": chosen_score})


def run(data_dir: str | pathlib.Path, candidates: list[str | pathlib.Path],
        workdir: str | pathlib.Path, split: str, only: list[int] | None = None,
        test: bool = False, lead: str | pathlib.Path | None = None,
        min_gain: float = MIN_GAIN, max_members: int = MAX_MEMBERS) -> dict:
  """Every fold not finished yet (and the test set with `test`); returns the summary."""
  data_dir, workdir = pathlib.Path(data_dir).absolute(), pathlib.Path(workdir).absolute()
  _check_settings(min_gain, max_members)  # before anything is written
  meta = metadata.read(data_dir)
  candidates = ensemble.checked_members(candidates, split, meta.folds(split))
  if len(candidates) < 2:
    raise SelectionError(f"selection needs two candidates or more, got {len(candidates)}")
  lead = pathlib.Path(lead).absolute() if lead else None
  if lead is not None and lead not in candidates:
    raise SelectionError(f"the lead {lead} is not one of the candidates")
  lead_index = None if lead is None else candidates.index(lead)
  # Every candidate complete up front: one chosen late would fail after folds were written.
  for candidate in candidates:
    crossval.fold_predictions(candidate)  # refuses a candidate with unfinished folds
    if test and not crossval.finished(crossval.fold_dir(candidate, crossval.TEST)):
      raise SelectionError(f"{candidate} has no finished test run (run it with --test first)")
  config = _config(data_dir, candidates, lead, split, min_gain, max_members)
  # Each candidate's predictions of each side are read once, not once per fold that selects.
  reported = functools.cache(ensemble.read_reported)
  return crossval.run(config, workdir, split, only, test,
                      train=lambda config, directory: run_fold(
                          candidates, lead_index, meta, config, directory, reported))


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "The PercePiano job's output the candidates were run "
                      "on (its split table).", required=True)
  flags.DEFINE_list("candidates", None, "Finished cross-validation directories to choose "
                    "from (every fold finished).", required=True)
  flags.DEFINE_string("lead", None, "A candidate every ensemble starts from (and keeps).")
  flags.DEFINE_float("min_gain", MIN_GAIN, "Stop when no addition raises the selection score "
                     "by this much.", lower_bound=0)
  flags.DEFINE_integer("max_members", MAX_MEMBERS, "The most additions, the lead included (a "
                       "candidate added twice counts twice).", lower_bound=1)
  crossval.define_fold_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fold_runs.main(lambda only: run(FLAGS.data_dir, FLAGS.candidates, FLAGS.workdir, FLAGS.split,
                                  only, FLAGS.test, FLAGS.lead, FLAGS.min_gain,
                                  FLAGS.max_members),
                 (SelectionError, ensemble.EnsembleError, predictions.PredictionsError,
                  json.JSONDecodeError))


def cli() -> None:
  """Console entry point (`ppt-ensemble-selection`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
