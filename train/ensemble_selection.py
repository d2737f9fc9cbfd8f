"""Ensemble selection: the members of an ensemble chosen on the split's own folds.

  python -m train.ensemble_selection --data_dir=SHARDS --candidates=W1,W2,... --workdir=W \
      [--lead=W1] [--split=piece|performer] [--folds=0,1|none] [--test]

Every candidate is a finished cross-validation (`train.crossval`, `train.ridge`,
`train.clip_head`) of the same split and shards, with every fold finished (and the test set
with `--test`). The ensemble is chosen by greedy forward selection with replacement
(Caruana et al., ICML 2004): starting from `--lead` (or from nothing), add the candidate
whose inclusion gives the highest selection score, again and again (a candidate may be
added more than once: its weight is how often it was), until no addition gains
`--min_gain` or the ensemble holds `--max_members`. The ensemble's prediction is the
weighted mean of its members' reported predictions (label space).

The selection score is the report's metric, the mean over dimensions of Pearson's r, averaged
over selection folds; which folds depends on what is being predicted:
- the test set: every fold of the split (the candidates' out-of-fold predictions of the
  training performances), so the test set plays no part in the choice;
- fold k: the split's other folds (nested), so fold k's own labels play no direct part in the
  choice of the ensemble that predicts it. The candidates' predictions of those folds come
  from models that trained on fold k: a weak, indirect path the members' fold predictions
  cannot avoid (they are not re-run inside each fold). The fold scores are therefore nearly,
  not perfectly, unbiased; the test set's is clean.

Why selection and not fixed members: which models add to each other differs between splits
(on the piece split, pieces are unseen and the notes carry the most; on the performer split,
pieces are seen and the audio statistics and clip heads carry more), so one fixed member list
chosen on one split's folds is a choice the other split did not make. Each fold's and the test
set's weights are in its `result.json` (`weights`, `selected_on`, `selection_score`).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections import Counter
from collections.abc import Sequence

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


def select(folds: Sequence[tuple[Sequence[np.ndarray], np.ndarray, np.ndarray]],
           lead: int | None = None, min_gain: float = MIN_GAIN,
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
  if max_members < 1:
    raise SelectionError(f"max_members must be at least 1, got {max_members}")

  def score(chosen: Counter) -> float:
    total = sum(chosen.values())
    return float(np.mean([metrics.mean_pearson(
        sum(w * candidates[i] for i, w in chosen.items()) / total, labels, mask)
        for candidates, labels, mask in folds]))

  order = [] if lead is None else [lead]
  best = score(Counter(order)) if order else -np.inf
  while len(order) < max_members:
    # An undefined score (constant predictions everywhere) never wins.
    gains = np.nan_to_num([score(Counter(order + [i])) for i in range(count)], nan=-np.inf)
    pick = int(np.argmax(gains))  # the first of equal scores
    if gains[pick] < best + min_gain and order:
      break
    order.append(pick)
    best = float(gains[pick])
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
                             "lead": str(lead) if lead is not None else "",
                             "min_gain": min_gain, "max_members": max_members}})


def run_fold(candidates: list[pathlib.Path], lead: int | None, meta: metadata.ShardMetadata,
             config: ml_collections.ConfigDict, directory: pathlib.Path) -> trainer.Result:
  t0 = time.perf_counter()
  fold = fold_runs.fold_of(meta, config)
  assignment = meta.split_table(config.split)
  sides = [f"fold{f}" for f in meta.folds(config.split) if f"fold{f}" != fold.held_side]
  selection = []
  for side in sides:
    parts = ensemble.held_predictions(
        candidates, side, sorted(k for k, v in assignment.items() if v == side))
    selection.append(([p.predictions for p in parts], parts[0].labels, parts[0].mask))
  settings = config.ensemble_selection
  order, chosen_score = select(selection, lead, settings.min_gain, settings.max_members)
  names = [str(c) for c in candidates]
  chosen = weights(order, names)
  members = [pathlib.Path(name) for name in chosen]
  parts = ensemble.held_predictions(members, fold.held_side, fold.held_keys)
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
  candidates = ensemble.checked_members(candidates, split)
  if len(candidates) < 2:
    raise SelectionError(f"selection needs two candidates or more, got {len(candidates)}")
  lead_index = None
  if lead:
    lead = pathlib.Path(lead).absolute()
    if lead not in candidates:
      raise SelectionError(f"the lead {lead} is not one of the candidates")
    lead_index = candidates.index(lead)
  for candidate in candidates:
    crossval.fold_predictions(candidate)  # refuses a candidate with unfinished folds
  meta = metadata.read(data_dir)
  config = _config(data_dir, candidates, lead if lead_index is not None else None, split,
                   min_gain, max_members)
  return crossval.run(config, workdir, split, only, test,
                      train=lambda config, directory: run_fold(candidates, lead_index, meta,
                                                               config, directory))


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "The PercePiano job's output the candidates were run "
                      "on (its split table).", required=True)
  flags.DEFINE_list("candidates", None, "Finished cross-validation directories to choose "
                    "from (every fold finished).", required=True)
  flags.DEFINE_string("lead", None, "A candidate every ensemble starts from (and keeps).")
  flags.DEFINE_float("min_gain", MIN_GAIN, "Stop when no addition raises the selection score "
                     "by this much.", lower_bound=0)
  flags.DEFINE_integer("max_members", MAX_MEMBERS, "The most additions (a candidate added "
                       "twice counts twice).", lower_bound=1)
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
