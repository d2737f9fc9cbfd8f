"""The runs a report is on: a fine-tuning work directory or an train.crossval directory."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from eval import ceiling as ceiling_lib
from eval.report.common import ReportError
from train import crossval, metric_writer, predictions, rundir

BACKBONE_NAMES = {"ast": "AST", "cnn": "CNN baseline", "pooled_stats": "feed-forward baseline",
                  "ridge": "ridge on clip statistics",
                  "clip_stats": "feed-forward on clip statistics",
                  "oracle": "oracle-notes (ridge on the performance MIDI's note statistics)",
                  "notes": "notes (ridge on the transcription's note statistics)",
                  "probe": "probe (ridge on frozen encoder embeddings)",
                  "fusion": "fusion (ridge on the transcription's note statistics and the "
                            "encoder's embeddings)"}


@dataclasses.dataclass(frozen=True)
class Source:
  """One run to report on or compare with."""

  name: str
  workdir: pathlib.Path
  kind: str  # "run" | "crossval"
  config: dict
  evaluations: dict[str, predictions.Predictions]
  curves: dict[str, list[dict]]
  pending: tuple[str, ...] = ()  # sets a cross-validation started but has not finished
  not_run: tuple[str, ...] = ()  # sets it never started (e.g. `--folds=none`: no fold)
  # The performances of each fold, per set scored fold by fold (the out-of-fold set).
  folds: dict[str, tuple[tuple[str, ...], ...]] = dataclasses.field(default_factory=dict)

  @property
  def backbone(self) -> str:
    return self.config["model"]["backbone"]

  @property
  def split(self) -> str:
    return self.config.get("split") or ""

  @property
  def run_dir(self) -> pathlib.Path:
    """A fine-tuning work directory with checkpoints (a cross-validation's fold 0, or its
    test run when fold 0 has not finished)."""
    if self.kind != "crossval":
      return self.workdir
    fold0 = crossval.fold_dir(self.workdir, 0)
    return fold0 if crossval.finished(fold0) else crossval.fold_dir(self.workdir, crossval.TEST)


def default_name(config: dict) -> str:
  name = BACKBONE_NAMES.get(config["model"]["backbone"], config["model"]["backbone"])
  if config["model"]["backbone"] == "ast":
    name += f" {config.get('size', '')}".rstrip()
    if config.get("init", {}).get("checkpoint") or config.get("init", {}).get("converted"):
      name += ", pre-trained"
    if config["model"].get("head") == "flat":
      name += ", flat head"
  return name


def _curves(workdir: pathlib.Path) -> list[dict]:
  return metric_writer.read(workdir) if (workdir / rundir.METRICS).is_file() else []


def load_source(path: str | pathlib.Path, name: str | None = None) -> Source:
  workdir = pathlib.Path(path).absolute()
  if not workdir.is_dir():
    raise ReportError(f"{workdir} does not exist")
  if (workdir / crossval.SUMMARY).is_file():
    summary = crossval.read_summary(workdir)
    config = summary["config"]
    config = {**config, "split": summary["split"]}
    # A cross-validation reports what is complete: the out-of-fold set once every
    # fold finished, the test set once it finished (`--folds=none --test` runs only it);
    # what is not is named in the report.
    available = crossval.available_sets(workdir)
    if not any(available.values()):
      raise ReportError(f"{workdir}: no finished evaluation yet (neither every fold nor the "
                        "test set)")
    evaluations, folds = {}, {}
    if available["out_of_fold"]:
      parts = crossval.fold_predictions(workdir)
      evaluations["out_of_fold"] = crossval.pool(parts, summary["split"])
      folds["out_of_fold"] = tuple(p.keys for p in parts)
    if available["test"]:
      evaluations["test"] = predictions.load_selected(crossval.fold_dir(workdir, crossval.TEST))
    # A set with any run directory is under way; one without was never started
    # (an ablation on the test set alone): the report words the two differently.
    present = [k for k in [*summary["folds"], crossval.TEST]
               if crossval.fold_dir(workdir, k).is_dir()]
    started = {"out_of_fold": any(k != crossval.TEST for k in present),
               "test": crossval.TEST in present}
    pending = [k for k, ready in available.items() if not ready and started[k]]
    not_run = [k for k, ready in available.items() if not ready and not started[k]]
    curves = {("test" if k == crossval.TEST else f"fold {k}"): _curves(crossval.fold_dir(workdir, k))
              for k in present}
    kind = "crossval"
  elif (workdir / rundir.CONFIG).is_file():
    config = json.loads((workdir / rundir.CONFIG).read_text())
    if config.get("task") != "finetune":
      raise ReportError(f"{workdir} is a {config.get('task')!r} run; reports score fine-tuning")
    final = predictions.load_selected(workdir)
    config = {**config, "split": final.split.split("/")[0] if "/" in final.split else ""}
    evaluations = {"test" if final.split.endswith("test") else "validation": final}
    curves = {"run": _curves(workdir)}
    kind = "run"
    pending, not_run, folds = [], [], {}
  else:
    raise ReportError(f"{workdir} is neither a fine-tuning work directory nor an "
                      "train.crossval directory")
  return Source(name=name or default_name(config), workdir=workdir, kind=kind, config=config,
                evaluations=evaluations, curves=curves, pending=tuple(pending),
                not_run=tuple(not_run), folds=folds)


def shown(path: str | pathlib.Path) -> str:
  """`path` as the report writes it: relative to the working directory."""
  return os.path.relpath(path)


def raw_ratings(main: Source, percepiano_dir: str | None):
  """The raw per-rater answers for the ceiling, and where they came from.

  `--percepiano_dir` must hold them; without it, the release the run's data
  were made from is used when it is still there (else the report says so).
  """
  if percepiano_dir is not None:
    path = pathlib.Path(percepiano_dir) / ceiling_lib.percepiano.RAW_RATINGS_FILE
    return ceiling_lib.percepiano.read_raw_ratings(path), shown(path)
  metadata = main.run_dir / rundir.DATA_METADATA
  release = None
  if metadata.is_file():
    release = json.loads(metadata.read_text()).get("config", {}).get("percepiano_dir")
  if not release:
    return None, "no --percepiano_dir given and the run's data name no release"
  path = pathlib.Path(release) / ceiling_lib.percepiano.RAW_RATINGS_FILE
  if not path.is_file():
    return None, (f"the run's release has no raw ratings at {shown(path)} "
                  "(pass --percepiano_dir)")
  return ceiling_lib.percepiano.read_raw_ratings(path), shown(path)
