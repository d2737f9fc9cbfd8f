"""A fine-tuning run, reloaded for inference: model, parameters, target statistics, feature settings.

Everything comes from the work directory the trainer wrote:

  config.json          the resolved training config -> the model
  targets.json         per-dimension label statistics -> predictions in label space
  data_metadata.json   how the training windows were made (window length and hop,
                       normalisation mean/std, trimming) -> inference repeats it
  checkpoints/<step>/  parameters (the best checkpoint by the validation metric
                       unless a step is named)

Only process-local arrays are restored (no mesh): inference runs on one host.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections
import numpy as np

from model import multitask, release, targets
from train import checkpointing, rundir, tasks


class RunError(ValueError):
  """The directory is not a usable fine-tuning run."""


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model_config: multitask.MultiTaskConfig
  params: dict
  normalizer: targets.TargetNormalizer
  data_metadata: dict
  step: int

  @property
  def model(self) -> multitask.MultiTaskModel:
    return multitask.MultiTaskModel(self.model_config)

  @property
  def num_frames(self) -> int:
    # Every backbone reads windows of the encoder config's length (the data's window).
    return int(self.config.model.encoder.num_frames)

  @property
  def feature_mean(self) -> float:
    return float(self.data_metadata["normalization"]["mean"])

  @property
  def feature_std(self) -> float:
    return float(self.data_metadata["normalization"]["std"])


def _read_json(path: pathlib.Path, what: str) -> dict:
  if not path.is_file():
    raise RunError(f"{path.parent} has no {path.name} ({what}); is it a fine-tuning work "
                   "directory written by train.main?")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RunError(f"{path}: not valid JSON ({e})") from None


def load(path: str | pathlib.Path, step: int | str = "best") -> Run:
  """Loads a run from its work directory (or a checkpoint step directory inside it).

  `step`: "best" (by the run's validation metric; the latest if none was
  recorded), "latest", or a step number. A step directory path names its step.
  """
  directory, named_step = checkpointing.locate(path)
  workdir = directory.parent
  config = ml_collections.ConfigDict(_read_json(workdir / rundir.CONFIG, "the config"))
  if config.get("task") != "finetune":
    raise RunError(f"{workdir} is a {config.get('task')!r} run; inference needs a fine-tuning run")
  if config.model.backbone == "clip_stats":
    raise RunError(f"{workdir} is a clip_stats run (a feed-forward model on precomputed clip "
                   "statistics, the ridge's sanity check); inference needs a model on log-mel "
                   "windows")
  normalizer = targets.TargetNormalizer.from_dict(
      _read_json(workdir / targets.FILE, "the target statistics"))
  data_metadata = _read_json(workdir / rundir.DATA_METADATA, "the feature settings")
  state, chosen = _restore(directory, named_step, step, config)
  params = jax.tree.map(np.asarray, state["params"])
  return Run(workdir=workdir, config=config, model_config=tasks.finetuning_model_config(config),
             params=params, normalizer=normalizer, data_metadata=data_metadata, step=int(chosen))


def _restore(directory: pathlib.Path, named_step: int | None, step: int | str,
             config: ml_collections.ConfigDict) -> tuple[dict, int]:
  """The raw state of the chosen checkpoint: a named step (nothing stands in for it), or
  "best" (by the run's metric; the latest when none was recorded) / "latest", falling
  back to the newest intact checkpoint when the chosen one is damaged."""
  reader = checkpointing.Checkpointer(directory, read_only=True,
                                      best_metric=config.checkpoint.best_metric,
                                      best_mode=config.checkpoint.best_mode)
  try:
    if named_step is not None or step not in ("best", "latest"):
      chosen = named_step if named_step is not None else int(step)
      if chosen not in reader.all_steps():
        raise checkpointing.CheckpointNotFoundError(
            f"{directory} has no checkpoint {step!r} (steps: {reader.all_steps()})")
      return reader.restore_raw_state(chosen), chosen
    newest_first = sorted(reader.all_steps(), reverse=True)
    best = reader.best_step() if step == "best" else None
    order = [best, *(s for s in newest_first if s != best)] if best is not None \
        else newest_first
    state, chosen, _ = reader.restore_intact(reader.restore_raw_state, order)
    return state, chosen
  finally:
    reader.close()


@dataclasses.dataclass(frozen=True)
class PretrainedRun:
  """A pre-training run or release, reloaded: its encoder (and transcription head)."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  params: dict  # the encoder's and the transcription head's
  data_metadata: dict
  step: int
  thresholds: dict | None = None  # decoding thresholds chosen on validation, if any


# Beside a pre-training run's checkpoints: the decoding thresholds eval.transcription_report
# chose on validation, per step.
THRESHOLDS_FILE = "transcription_thresholds.json"


def saved_thresholds(workdir: pathlib.Path, step: int) -> dict | None:
  path = pathlib.Path(workdir) / THRESHOLDS_FILE
  if not path.is_file():
    return None
  chosen = json.loads(path.read_text()).get(str(step))
  return None if chosen is None else chosen["thresholds"]


def save_thresholds(workdir: pathlib.Path, step: int, thresholds: dict, how: str) -> None:
  path = pathlib.Path(workdir) / THRESHOLDS_FILE
  saved = json.loads(path.read_text()) if path.is_file() else {}
  saved[str(step)] = {"thresholds": thresholds, "chosen_on": how}
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
  tmp.replace(path)


def checkpoint_steps(path: str | pathlib.Path) -> list[int]:
  """The steps a run (work directory or checkpoints directory) has kept, oldest first."""
  directory, _ = checkpointing.locate(path)
  reader = checkpointing.Checkpointer(directory, read_only=True)
  try:
    return sorted(reader.all_steps())
  finally:
    reader.close()


def load_pretrained(path: str | pathlib.Path, step: int | str = "best", *,
                    transcriber: bool = False) -> PretrainedRun:
  """A pre-training run (work directory or step directory) or a release (`model.release`;
  `step` is then the release's own): its encoder, and the transcription head where the
  objective had one. `transcriber=True` requires the head (`model.transcription_weight` > 0)."""
  if release.is_release(path):
    try:
      params, about = release.read(path)
    except release.ReleaseError as e:
      raise RunError(str(e)) from None
    # A notes_perception release (eval.notes_perception) holds a transcriber and its ridge.
    if transcriber and about.get("kind") not in ("transcriber", "notes_perception"):
      raise RunError(f"{path} is a {about.get('kind')!r} release, not a transcriber")
    return PretrainedRun(workdir=pathlib.Path(path).absolute(),
                         config=ml_collections.ConfigDict(about["config"]), params=params,
                         data_metadata=about["data_metadata"], step=int(about["step"]),
                         thresholds=about.get("thresholds"))
  directory, named_step = checkpointing.locate(path)
  workdir = directory.parent
  config = ml_collections.ConfigDict(_read_json(workdir / rundir.CONFIG, "the config"))
  heads = ("transcription",) if config.get("task") == "pretrain" and \
      config.model.get("transcription_weight") else ()
  if config.get("task") != "pretrain" or (transcriber and not heads):
    raise RunError(f"{workdir} is not a pre-training run" + (
        " with a transcription head (--config.model.transcription_weight > 0)" if transcriber
        else ""))
  data_metadata = _read_json(workdir / rundir.DATA_METADATA, "the feature settings")
  state, chosen = _restore(directory, named_step, step, config)
  params = {k: jax.tree.map(np.asarray, state["params"][k]) for k in ("encoder", *heads)}
  return PretrainedRun(workdir=workdir, config=config, params=params,
                       data_metadata=data_metadata, step=int(chosen),
                       thresholds=saved_thresholds(workdir, int(chosen)))


def load_transcriber(path: str | pathlib.Path, step: int | str = "best") -> PretrainedRun:
  """`load_pretrained` of a run or release with the transcription head."""
  return load_pretrained(path, step, transcriber=True)
