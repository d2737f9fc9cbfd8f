"""Cross-validation over PercePiano's piece or performer split, resumable fold by fold.

  python -m train.crossval --config=train/configs/finetune.py:tiny --workdir=W \
      --split=piece --config.data_dir=SHARDS [--folds=0,1] [--test] [--config.x=y ...]

Fold k trains on the split's other folds and validates on fold k, in
`W/fold<k>` (an ordinary trainer work directory). A fold that evaluates during
training selects its best evaluation on fold k (early stopping, the kept
checkpoint), but is *reported* at the median selected epoch of the other folds
(`reported_steps`), so no reported fold score was chosen on its own fold; `--test` also
trains on every fold and evaluates the held-out test set once, at its end, in
`W/test`. With early stopping (`early_stopping.patience` > 0) the schedule is only
a ceiling: the test run trains for the median over the finished folds of their
selected evaluation's epoch (`stop_after_epochs`, on the same learning-rate
schedule), so nothing about its length is chosen on the test set; without it, the
whole schedule. A fold whose
`result.json` says finished is skipped; an interrupted fold resumes from its
latest checkpoint (the trainer's own resume), so the job can be run in pieces
(`--folds=0,1` now, `--folds=2,3` in the next session) and killed at any point.
`--folds=none --test` runs the test set alone: how the 2-core benchmark runs its
ablations, which need one comparison on held-out data rather than four folds.

`W/crossval.json` is rewritten after every fold: the config, each fold's status
and scores, and once every fold is done the mean and spread of the per-fold
scores (the headline) next to the pooled out-of-fold scores (every
train/validation performance predicted by the one model that did not see it,
all in one correlation). `eval.report --workdir=W` reports on the out-of-fold
predictions fold by fold and pooled (and the test set when present).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from pipelines import entry_point, lockfile
from pipelines.datasets import taxonomy
from pipelines.shards import metadata
from train import checkpointing, configs, metrics, predictions, rundir, trainer

SUMMARY = "crossval.json"
TEST = "test"
FLAGS = flags.FLAGS


class CrossValidationError(ValueError):
  pass


def fold_dir(workdir: pathlib.Path, fold: int | str) -> pathlib.Path:
  return workdir / (TEST if fold == TEST else f"fold{fold}")


def split_folds(data_dir: str | pathlib.Path, split: str) -> list[int]:
  """The cross-validation folds of `split` in the shards' split table."""
  if split not in ("piece", "performer"):
    raise CrossValidationError(f"--split must be 'piece' or 'performer', got {split!r}")
  return metadata.read(data_dir).folds(split)


def parse_folds(value: str) -> list[int] | None:
  """`--folds`: "" = every fold (None), "none" = no fold ([]), else "0,2"."""
  if not value:
    return None
  if value == "none":
    return []
  try:
    return [int(f) for f in value.split(",")]
  except ValueError:
    raise CrossValidationError(f"--folds must be comma-separated integers or 'none', got "
                               f"{value!r}") from None


def finished(directory: pathlib.Path) -> bool:
  return rundir.finished(rundir.read_result(directory))


def stops_early(config: ml_collections.ConfigDict) -> bool:
  """The fold runs stop early on their validation fold, so the schedule is only a ceiling
  and the test run's length is chosen from the folds' selected evaluations."""
  return bool(config.get("early_stopping") and config.early_stopping.patience > 0)


def test_epochs(workdir: pathlib.Path, folds: list[int]) -> float | None:
  """How long the test run trains: the median over the finished folds of the epoch of
  their selected evaluation (None when no fold has finished)."""
  epochs = [r["selected_epoch"] for r in (rundir.read_result(fold_dir(workdir, k)) for k in folds)
            if rundir.finished(r) and r.get("selected_epoch") is not None]
  return float(np.median(epochs)) if epochs else None


def fold_config(config: ml_collections.ConfigDict, split: str, fold: int | str,
                stop_after_epochs: float | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  c.split = split
  c.validation_fold = -1 if fold == TEST else int(fold)
  if fold == TEST:
    # The test set is evaluated once, at the end: evaluating it during training would
    # also let checkpoint selection or early stopping see it.
    c.eval_every_steps = 0
    if "eval_every_epochs" in c:
      c.eval_every_epochs = 0.0
      c.early_stopping.patience = 0
    if stop_after_epochs is not None:
      c.stop_after_epochs = stop_after_epochs
  return c


def reported_steps(workdir: pathlib.Path, folds: list[int]) -> dict[int, int | None]:
  """The evaluation each fold is reported by, once every fold has finished.

  A fold's own selected evaluation (its best on that fold) has seen the fold once
  more than a model judged on it should: with tens of noisy evaluations that choice
  alone adds several points of Pearson. So fold k is read at the median selected
  epoch of the *other* folds (its evaluation nearest that point, the earlier on a
  tie), as the test run is trained for the median over all folds. A run with one
  evaluation (or one fold) is read at its selected step (None: load_selected's choice).
  """
  results = {k: rundir.read_result(fold_dir(workdir, k)) or {} for k in folds}
  out: dict[int, int | None] = {}
  for k in folds:
    others = [results[j].get("selected_epoch") for j in folds if j != k]
    evaluated = predictions.steps(fold_dir(workdir, k))
    if not others or None in others or len(evaluated) < 2 or \
        not results[k].get("steps_per_epoch"):
      out[k] = None
      continue
    target = float(np.median(others)) * results[k]["steps_per_epoch"]
    out[k] = min(evaluated, key=lambda s: (abs(s - target), s))
  return out


def _load_reported(workdir: pathlib.Path, fold: int | str, step: int | None
                   ) -> predictions.Predictions:
  directory = fold_dir(workdir, fold)
  if step is None:
    return predictions.load_selected(directory)
  return predictions.load(predictions.path_for(directory, step))


def fold_predictions(workdir: str | pathlib.Path) -> list[predictions.Predictions]:
  """Every fold's reported validation predictions (`reported_steps`), fold by fold (each
  performance once)."""
  workdir = pathlib.Path(workdir)
  summary = read_summary(workdir)
  missing = [k for k in summary["folds"] if not finished(fold_dir(workdir, k))]
  if missing:
    raise CrossValidationError(f"{workdir}: folds {missing} are not finished; run "
                               "train.crossval again to complete them")
  steps = reported_steps(workdir, summary["folds"])
  return [_load_reported(workdir, k, steps[k]) for k in summary["folds"]]


def pool(parts: list[predictions.Predictions], split: str) -> predictions.Predictions:
  return predictions.concatenate(parts, split=f"{split}/out-of-fold")


def available_sets(workdir: str | pathlib.Path) -> dict[str, bool]:
  """Which evaluated sets a cross-validation can report now: "out_of_fold" once every
  fold finished, "test" once the test run finished."""
  workdir = pathlib.Path(workdir)
  summary = read_summary(workdir)
  return {"out_of_fold": all(finished(fold_dir(workdir, k)) for k in summary["folds"]),
          "test": finished(fold_dir(workdir, TEST))}


def read_summary(workdir: str | pathlib.Path) -> dict:
  path = pathlib.Path(workdir) / SUMMARY
  if not path.is_file():
    raise FileNotFoundError(f"{workdir} has no {SUMMARY}: not an train.crossval directory")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CrossValidationError(f"{path} is not valid JSON ({e}); delete it and rerun to "
                               "rebuild it from the fold directories") from None


def write_summary(workdir: pathlib.Path, summary: dict) -> None:
  # Atomic: a kill mid-write must not leave a summary that no later run can read.
  tmp = workdir / (SUMMARY + ".tmp")
  tmp.write_text(json.dumps(summary, indent=1, default=float) + "\n")
  tmp.replace(workdir / SUMMARY)


def _scores(p: predictions.Predictions) -> dict[str, float]:
  out = {}
  for name, values in metrics.score(p.predictions, p.labels, p.mask, p.passages).items():
    out.update(metrics.summarise(values, prefix=name))
  return out


def summarise(workdir: pathlib.Path, config, split: str, folds: list[int], test: bool) -> dict:
  runs = [*folds, *([TEST] if test or finished(fold_dir(workdir, TEST)) else [])]
  summary = {"split": split, "folds": folds, "config": json.loads(config.to_json_best_effort()),
             "runs": {}}
  # Each finished run's reported predictions, read once: the test run's and, until every
  # fold has finished, each fold's own selection (provisional); then `reported_steps`.
  all_folds = all(finished(fold_dir(workdir, k)) for k in folds)
  steps = reported_steps(workdir, folds) if all_folds else {}
  loaded, results = {}, {}
  for k in runs:
    directory = fold_dir(workdir, k)
    entry = {"directory": directory.name, "finished": finished(directory)}
    if entry["finished"]:
      results[k] = result = rundir.read_result(directory)
      entry["wall_seconds"] = rundir.total_wall_seconds(result)
      for field in ("stop", "selected_step", "selected_epoch"):
        if result.get(field) is not None:
          entry[field] = result[field]
      loaded[k] = _load_reported(workdir, k, steps.get(k))  # the test run: its selection
      entry["reported_step"] = loaded[k].step
      entry["scores"] = _scores(loaded[k])
    summary["runs"][str(k)] = entry
  done = [summary["runs"][str(k)] for k in folds if summary["runs"][str(k)]["finished"]]
  if len(done) == len(folds):
    pooled = _scores(pool([loaded[k] for k in folds], split))
    headline = [f"pearson/{g}" for g in (*taxonomy.GROUPS, "mean")]
    summary["out_of_fold"] = pooled
    summary["per_fold"] = {k: {"mean": float(np.mean([d["scores"][k] for d in done])),
                               "std": float(np.std([d["scores"][k] for d in done]))}
                           for k in [*headline, "r2/mean", "pearson_within/mean"]}
    # What choosing each fold's evaluation on the fold itself would have reported (the
    # optimism `reported_steps` removes), for the record.
    own = [results[k].get("metrics", {}).get("val/pearson/mean") for k in folds]
    if None not in own:
      summary["per_fold_own_selection"] = {"pearson/mean": float(np.mean(own))}
  return summary


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, split: str,
        only: list[int] | None = None, test: bool = False,
        train: Callable[[ml_collections.ConfigDict, pathlib.Path], trainer.Result] | None = None
        ) -> dict:
  """Trains and evaluates the folds not finished yet; returns the summary.

  `train(fold_config, directory)` makes one fold's run directory (default: the trainer;
  train.ridge passes its closed-form fit). Stops (returning the summary so far, with
  "preempted": True) when a fold is stopped by SIGTERM: the next call resumes it.
  """
  train = train or trainer.train_and_evaluate
  workdir = pathlib.Path(workdir).absolute()
  if not config.data_dir:
    raise CrossValidationError("config.data_dir is not set (--config.data_dir=SHARD_DIR)")
  if config.task != "finetune":
    raise CrossValidationError(f"cross-validation runs fine-tuning configs, not {config.task!r}")
  folds = split_folds(config.data_dir, split)
  if not folds:
    raise CrossValidationError(f"the {split} split has no cross-validation folds")
  chosen = folds if only is None else only
  unknown = sorted(set(chosen) - set(folds))
  if unknown:
    raise CrossValidationError(f"folds {unknown} are not folds of the {split} split {folds}")
  workdir.mkdir(parents=True, exist_ok=True)
  previous = workdir / SUMMARY
  if previous.is_file():
    before = read_summary(workdir)
    if before["split"] != split or before["config"] != json.loads(
        config.to_json_best_effort()):
      raise CrossValidationError(
          f"{workdir} holds a cross-validation with another split or config; use a new "
          "--workdir (or delete it)")
  todo = [*chosen, *([TEST] if test else [])]
  preempted = False
  for k in todo:
    directory = fold_dir(workdir, k)
    if finished(directory):
      logging.info("%s: finished earlier, skipped", directory.name)
      continue
    epochs = None
    if k == TEST and stops_early(config):
      epochs = test_epochs(workdir, folds)
      if epochs is None:
        raise CrossValidationError(
            "with early stopping the test run trains as long as the folds' selected "
            "evaluations, and no fold has finished: run folds first (--folds=0 is enough), "
            "or train a fixed schedule (--config.early_stopping.patience=0)")
      logging.info("test: %.2f epochs, the folds' median selected evaluation", epochs)
    logging.info("%s: training (%s split)", directory.name, split)
    result = train(fold_config(config, split, k, epochs), directory)
    summary = summarise(workdir, config, split, folds, test)
    write_summary(workdir, summary)
    if result.status == "preempted":
      preempted = True
      break
  summary = summarise(workdir, config, split, folds, test)
  summary["preempted"] = preempted
  write_summary(workdir, summary)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpointing.quiet_orbax_logs()
  try:
    only = parse_folds(FLAGS.folds)
    if only == [] and not FLAGS.test:
      raise CrossValidationError("--folds=none runs nothing without --test")
    # One driver per work directory (train.main's reason): its folds' runs are ours alone.
    with lockfile.for_workdir(FLAGS.workdir, "cross-validated", jax.process_index() == 0):
      summary = run(FLAGS.config, FLAGS.workdir, FLAGS.split, only, FLAGS.test)
  except (CrossValidationError, trainer.NonFiniteError, trainer.ConfigError, ValueError,
          FileNotFoundError, lockfile.LockedError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")
  status = {k: "finished" if r["finished"] else "not finished" for k, r in summary["runs"].items()}
  print(f"{FLAGS.split} split, folds: {status}")
  if "out_of_fold" in summary:
    # The mean over folds is the headline (eval.report's too): pooling the folds'
    # predictions mixes models, each fitted to its own training pieces' label means.
    per_fold, oof = summary["per_fold"], summary["out_of_fold"]
    print("out-of-fold Pearson, mean over folds: " + ", ".join(
        f"{g} {per_fold[f'pearson/{g}']['mean']:.3f}" for g in (*taxonomy.GROUPS, "mean"))
        + f"; all folds pooled: mean {oof['pearson/mean']:.3f}")
  if summary["preempted"]:
    sys.exit(trainer.PREEMPTED_EXIT_CODE)


def define_fold_flags() -> None:
  """--workdir, --split, --folds and --test: what every cross-validation command takes."""
  flags.DEFINE_string("workdir", None, "One directory per fold, plus crossval.json.",
                      required=True)
  flags.DEFINE_enum("split", "piece", ["piece", "performer"], "PercePiano split to cross-validate.")
  flags.DEFINE_string("folds", "", "Comma-separated folds to run now (default: all; 'none': "
                      "only the --test run).")
  flags.DEFINE_bool("test", False, "Also fit on every fold and evaluate the test set once.")


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Fine-tuning config file[:variant].",
                                  lock_config=True)
  define_fold_flags()
  flags.mark_flags_as_required(["config"])


def cli() -> None:
  """Console entry point (`ppt-crossval`)."""
  entry_point.run(__doc__, define_flags, main, argv=configs.resolve_argv(sys.argv))


if __name__ == "__main__":
  cli()
