"""Run directories for models fitted outside the trainer, one cross-validation fold at a time.

`train.ridge` (closed form) and `train.clip_head` (a small head on cached window
embeddings) are driven by `train.crossval.run` like the trainer: each fold (or the test
set) gets a directory with `config.json`, the data metadata, `predictions/1.npz` and
`result.json`, so `eval.report` and `eval.report.summary` read them like any run. This
module holds what both need: which performances a fold trains on and holds out, writing
the directory, and the command line's body (errors in one line, the scores printed).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import flags, logging

from pipelines.datasets import taxonomy
from pipelines.shards import metadata
from train import crossval, metrics, predictions, rundir, statistics_table, trainer


@dataclasses.dataclass(frozen=True)
class Fold:
  held_side: str  # "fold<k>" or "test"
  train_keys: list[str]
  held_keys: list[str]


def fold_of(meta: metadata.ShardMetadata, config: ml_collections.ConfigDict) -> Fold:
  """The performances `config` (crossval's fold config) trains on: the split's other folds,
  or every fold for the test set; and the ones it holds out."""
  fold = crossval.TEST if config.validation_fold == -1 else config.validation_fold
  held_side = "test" if fold == crossval.TEST else f"fold{fold}"
  train_sides = training_sides(meta, config.split, held_side)
  assignment = meta.split_table(config.split)
  return Fold(held_side=held_side,
              train_keys=sorted(k for k, v in assignment.items() if v in train_sides),
              held_keys=side_keys(meta, config.split, held_side))


def training_sides(meta: metadata.ShardMetadata, split: str, held_side: str) -> list[str]:
  """The split's folds ("fold<k>", in order) other than `held_side`."""
  return [f"fold{f}" for f in meta.folds(split) if f"fold{f}" != held_side]


def side_keys(meta: metadata.ShardMetadata, split: str, side: str) -> list[str]:
  """The performances of one side of the split ("fold<k>" or "test"), sorted."""
  return sorted(k for k, v in meta.split_table(split).items() if v == side)


def write(directory: pathlib.Path, config: ml_collections.ConfigDict,
          meta: metadata.ShardMetadata, fold: Fold, scores_of_held: np.ndarray,
          labels: np.ndarray, mask: np.ndarray, seconds: float, extra: dict) -> trainer.Result:
  """Writes the fold's run directory from its predictions for `fold.held_keys`; returns
  the result `train.crossval` records (`extra` goes into `result.json`)."""
  out = predictions.Predictions(
      keys=tuple(fold.held_keys), predictions=scores_of_held, labels=labels, mask=mask,
      windows=np.ones(len(fold.held_keys), int), step=1,
      split=f"{config.split}/{fold.held_side}")
  directory.mkdir(parents=True, exist_ok=True)
  (directory / rundir.CONFIG).write_text(config.to_json_best_effort(indent=1) + "\n")
  rundir.write_data_metadata(directory, meta.raw)
  out.save(predictions.path_for(directory, 1))
  scores = metrics.summarise(metrics.per_dimension_pearson(out.predictions, out.labels,
                                                           out.mask), prefix="val/pearson")
  seconds = round(seconds, 1)
  result = trainer.Result(status="finished", step=1, total_steps=1, metrics=scores,
                          wall_seconds=seconds, total_wall_seconds=seconds)
  (directory / rundir.RESULT).write_text(json.dumps(
      {**dataclasses.asdict(result), **extra, "train_performances": len(fold.train_keys)},
      indent=1) + "\n")
  return result


def print_summary(summary: dict) -> None:
  """Each finished run's mean and group Pearson, and the mean over folds, one line each."""
  for name, entry in summary["runs"].items():
    if entry.get("finished"):
      s = entry["scores"]
      print(f"{'test' if name == crossval.TEST else 'fold ' + name}: mean Pearson "
            f"{s['pearson/mean']:.3f} (" + ", ".join(
                f"{g} {s[f'pearson/{g}']:.3f}" for g in taxonomy.GROUPS) + ")")
  if "per_fold" in summary:
    print("out of fold, mean over folds: " + ", ".join(
        f"{g} {summary['per_fold'][f'pearson/{g}']['mean']:.3f}"
        for g in (*taxonomy.GROUPS, "mean")))


def main(run: Callable[[list[int] | None], dict], errors: tuple[type[Exception], ...] = ()
         ) -> None:
  """The body of a cross-validation command (--folds, --test from `crossval.
  define_fold_flags`): `run(folds)` fits what is not finished yet and returns the summary,
  printed here; the expected errors end the command in one line."""
  try:
    only = crossval.parse_folds(flags.FLAGS.folds)
    if only == [] and not flags.FLAGS.test:
      raise ValueError("--folds=none runs nothing without --test")
    summary = run(only)
  except (*errors, statistics_table.StatisticsError, crossval.CrossValidationError,
          metadata.MetadataError, ValueError, FileNotFoundError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")
  print_summary(summary)
