"""An ensemble of finished cross-validations: the mean of their predictions, fold by fold.

  python -m train.ensemble --data_dir=SHARDS --members=W1,W2 --workdir=W \
      [--split=piece|performer] [--folds=0,1|none] [--test]

Each member is a finished `train.crossval` / `train.ridge` / `train.clip_head` directory of
the same split and shards. For every fold (and the test set with `--test`) the ensemble's
prediction of a held-out performance is the unweighted mean of the members' reported
predictions of it (label space). Equal weights on purpose: a weight chosen on the held-out
folds would be selection on the very performances the folds score, and the ~900 training
performances of a fold are too few to fit a stacking layer on inner predictions that the
members do not write (`train.ensemble_selection` chooses members and weights on the other
folds instead). Nothing is trained, so a fold is exactly as clean as its members: no
member may have seen the performances it predicts (each member's own fold discipline).

The config records a fingerprint of every member's results: resuming after a member was re-run
is refused rather than mixing two versions of it (`stale` names such members).

The run directories are the same as the members' (`train.fold_runs`), so `eval.report`
and `eval.report.summary` read the ensemble like any model; its backbone joins the
members' (`ast+stats & ast+window_mean`), so an ensemble led by an AST-based member counts
as AST-based.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import app, flags

from pipelines import entry_point
from pipelines.shards import metadata
from train import crossval, fold_runs, predictions, trainer

FLAGS = flags.FLAGS


class EnsembleError(ValueError):
  pass


def member_backbone(member: pathlib.Path) -> str:
  return crossval.read_summary(member)["config"]["model"]["backbone"]


def fingerprint(member: pathlib.Path) -> str:
  """A hash of what a member's results are read from: every fold's and the test set's
  `result.json` and predictions files (`<step>.npz`; not a save's leftover temporary). Any
  re-run rewrites it (`result.json` holds its wall time), and so does a side added since."""
  digest = hashlib.sha256()
  files = sorted([*member.glob("*/result.json"),
                  *(p for p in member.glob("*/predictions/*.npz") if p.stem.isdigit())])
  for path in files:
    digest.update(str(path.relative_to(member)).encode() + b"\0" + path.read_bytes())
  return digest.hexdigest()


def stale(workdir: str | pathlib.Path) -> list[str]:
  """The members (or a selection's candidates) whose results were rewritten or extended since
  the run in `workdir` read them: its predictions may mix in results that are no longer there.
  A run made before fingerprints were recorded cannot tell: every member counts as changed."""
  config = crossval.read_summary(workdir)["config"]
  settings = config.get("ensemble") or config.get("ensemble_selection")
  if not settings:
    raise EnsembleError(f"{workdir} is not an ensemble or an ensemble selection")
  paths = settings.get("members") or settings["candidates"]
  recorded = settings.get("fingerprints") or [None] * len(paths)
  return [m for m, f in zip(paths, recorded)
          if not pathlib.Path(m).is_dir() or fingerprint(pathlib.Path(m)) != f]


def _config(data_dir: pathlib.Path, members: list[pathlib.Path], split: str
            ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "task": "finetune", "data_dir": str(data_dir), "split": split, "seed": 0,
      "validation_fold": -1,
      "model": {"backbone": " & ".join(member_backbone(m) for m in members)},
      "ensemble": {"members": [str(m) for m in members],
                   "fingerprints": [fingerprint(m) for m in members]}})


def read_reported(member: pathlib.Path, held_side: str) -> predictions.Predictions:
  """A member's reported predictions of one held-out side ("fold<k>" or "test")."""
  summary = crossval.read_summary(member)
  if held_side == crossval.TEST:
    directory = crossval.fold_dir(member, crossval.TEST)
    if not crossval.finished(directory):
      raise EnsembleError(f"{member} has no finished test run (run it with --test first)")
    return predictions.load_selected(directory)
  parts = dict(zip((f"fold{k}" for k in summary["folds"]), crossval.fold_predictions(member)))
  return parts[held_side]


def checked_members(members: list[str | pathlib.Path], split: str,
                    folds: list[int] | None = None) -> list[pathlib.Path]:
  """The members' absolute paths, each an existing cross-validation of `split` (over `folds`,
  the shards' folds of it, when given), none twice."""
  members = [pathlib.Path(m).absolute() for m in members]
  if len(set(members)) != len(members):
    raise EnsembleError("a member is named twice")
  for member in members:
    if not member.is_dir():
      raise EnsembleError(f"member {member} does not exist")
    summary = crossval.read_summary(member)
    if summary["split"] != split:
      raise EnsembleError(f"member {member} is a {summary['split']} split cross-validation, "
                          f"not {split}")
    if folds is not None and list(summary["folds"]) != list(folds):
      raise EnsembleError(f"member {member} has folds {summary['folds']}, the shards' {split} "
                          f"split {folds}: it was run on other shards")
  return members


def held_predictions(members: list[pathlib.Path], held_side: str, keys: list[str],
                     reported: Callable[[pathlib.Path, str], predictions.Predictions]
                     | None = None) -> list[predictions.Predictions]:
  """Each member's reported predictions of `keys`, the performances of one held-out side
  ("fold<k>" or "test"), in that order; refused unless every member predicted them all with
  the same labels (members run on other shards or another split). `reported(member, side)`
  reads them (default: from disk, every call)."""
  parts = []
  for member in members:
    p = (reported or read_reported)(member, held_side)
    missing = sorted(set(keys) - set(p.keys))
    if missing:
      raise EnsembleError(f"{member} did not predict {len(missing)} performances of "
                          f"{held_side} (other shards or split?), e.g. {missing[:3]}")
    parts.append(p.subset(keys))
  first = parts[0]
  for member, p in zip(members[1:], parts[1:]):
    same = np.array_equal(p.mask, first.mask) and np.array_equal(
        np.where(p.mask, p.labels, 0), np.where(first.mask, first.labels, 0))
    if not same:
      raise EnsembleError(f"{member}'s labels of {held_side} differ from {members[0]}'s: "
                          "the members were not run on the same shards")
  return parts


def run_fold(members: list[pathlib.Path], meta: metadata.ShardMetadata,
             config: ml_collections.ConfigDict, directory: pathlib.Path) -> trainer.Result:
  t0 = time.perf_counter()
  fold = fold_runs.fold_of(meta, config)
  parts = held_predictions(members, fold.held_side, fold.held_keys)
  scores = np.mean([p.predictions for p in parts], axis=0)
  return fold_runs.write(directory, config, meta, fold, scores, parts[0].labels, parts[0].mask,
                         time.perf_counter() - t0, {"members": [str(m) for m in members]})


def run(data_dir: str | pathlib.Path, members: list[str | pathlib.Path],
        workdir: str | pathlib.Path, split: str, only: list[int] | None = None,
        test: bool = False) -> dict:
  """Every fold not finished yet (and the test set with `test`); returns the summary."""
  data_dir, workdir = pathlib.Path(data_dir).absolute(), pathlib.Path(workdir).absolute()
  meta = metadata.read(data_dir)
  members = checked_members(members, split, meta.folds(split))
  if len(members) < 2:
    raise EnsembleError(f"an ensemble needs two members or more, got {len(members)}")
  return crossval.run(_config(data_dir, members, split), workdir, split, only, test,
                      train=lambda config, directory: run_fold(members, meta, config,
                                                               directory))


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "The PercePiano job's output the members were run on "
                      "(its split table).", required=True)
  flags.DEFINE_list("members", None, "Finished cross-validation directories to average.",
                    required=True)
  crossval.define_fold_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fold_runs.main(lambda only: run(FLAGS.data_dir, FLAGS.members, FLAGS.workdir, FLAGS.split,
                                  only, FLAGS.test),
                 (EnsembleError, predictions.PredictionsError, json.JSONDecodeError))


def cli() -> None:
  """Console entry point (`ppt-ensemble`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
