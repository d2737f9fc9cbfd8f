"""Fine-tuning's starting point: the encoder of a pre-training run or of converted weights.

Sources (`config.init`):
  checkpoint  a pre-training work directory, its `checkpoints/` directory or one
              step directory; the best checkpoint by the validation metric is
              used when there is one, else the latest. Or a release directory
              (`model.release`: safetensors committed to the repository).
  converted   the output directory of `python -m model.convert` (`params/` in
              Orbax format): transformers / original AST / SSAST weights.

Every encoder parameter of the fine-tuning model is then *loaded* (same shape),
*resized* (the position grid, when the patch stride or clip length changed:
model.posemb.resize_grid — crop when shrinking, bilinear when growing) or
*initialised* (absent from the source: e.g. a distillation token); source
parameters the model has no use for (SSAST's mask embedding and prediction
heads) are *unused*. The heads are always initialised. The report is logged and
written to `WORKDIR/warm_start.json`; any other shape mismatch (a different
width or depth) is an error, not a silent re-initialisation.

Pre-training can continue from a run or a release too (`continue_from`): every
parameter the two share (the encoder and the heads of the objectives both have) is
loaded as it is, with a fresh optimiser state and schedule; a shape mismatch is an
error. So a pre-training spread over sessions on fresh machines continues from the
committed release of the last one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from model import params as params_lib
from model import posemb, release
from train import checkpointing, rundir


class WarmStartError(ValueError):
  pass


@dataclasses.dataclass
class Report:
  source: str
  step: int | None
  loaded: list[str]
  resized: dict[str, str]
  initialised: list[str]
  unused: list[str]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def summary(self) -> str:
    return (f"warm start from {self.source}" + (f" (step {self.step})" if self.step else "") +
            f": {len(self.loaded)} loaded, {len(self.resized)} resized "
            f"({', '.join(f'{k} {v}' for k, v in self.resized.items()) or 'none'}), "
            f"{len(self.initialised)} initialised, {len(self.unused)} unused")


def _read_params(checkpoint: str) -> tuple[dict[str, Any], str, int | None]:
  """(parameter tree, source name, step) of a run's checkpoint or of a release."""
  if release.is_release(checkpoint):
    try:
      params, about = release.read(checkpoint)
    except release.ReleaseError as e:
      raise WarmStartError(str(e)) from None
    return params, str(pathlib.Path(checkpoint).absolute()), about.get("step")
  directory, step = checkpointing.locate(checkpoint)
  reader = checkpointing.Checkpointer(directory, read_only=True, best_metric="val/loss",
                                      best_mode="min")
  try:
    step = step if step is not None else (reader.best_step() or reader.latest_step())
    if step is None:
      raise checkpointing.CheckpointNotFoundError(f"{directory} holds no checkpoint")
    state = reader.restore_raw_state(step)
  finally:
    reader.close()
  return state["params"], str(directory), step


def load_source(init: Mapping[str, str]) -> tuple[dict[str, np.ndarray], str, int | None]:
  """The encoder parameters named by `config.init`, as numpy (flat paths)."""
  if init["checkpoint"] and init["converted"]:
    raise WarmStartError("set only one of init.checkpoint and init.converted")
  if init["checkpoint"]:
    params, source, step = _read_params(init["checkpoint"])
  else:
    path = pathlib.Path(init["converted"]).absolute() / "params"
    if not path.is_dir():
      raise checkpointing.CheckpointNotFoundError(
          f"{path} does not exist (expected the output directory of python -m model.convert)")
    with ocp.StandardCheckpointer() as reader:
      params = reader.restore(path)
    source, step = str(path.parent), None
  encoder = params.get("encoder", params)
  if "patch_embed" not in encoder:
    raise WarmStartError(f"{source} holds no AST encoder parameters (top level: "
                         f"{sorted(params)})")
  return {k: np.asarray(v) for k, v in params_lib.flatten(encoder).items()}, source, step


def apply(params: Mapping[str, Any], source: Mapping[str, np.ndarray], source_name: str,
          step: int | None = None) -> tuple[dict[str, Any], Report]:
  """`params` (initialised, unboxed, possibly sharded) with the encoder taken from `source`."""
  if "encoder" not in params:
    raise WarmStartError("the fine-tuning model has no AST encoder to warm-start "
                         "(backbone must be 'ast')")
  loaded, resized, initialised, problems = [], {}, [], []
  updates: dict[str, np.ndarray] = {}
  for path, value in params_lib.flatten(params).items():
    name = path.removeprefix("encoder/")
    if not path.startswith("encoder/") or name not in source:
      initialised.append(path)
      continue
    new = source[name]
    if new.shape == value.shape:
      loaded.append(path)
    else:
      new, how = _fit(name, new, value.shape)
      if new is None:
        problems.append(f"{path}: source {source[name].shape}, model {value.shape}")
        continue
      resized[path] = how
    updates[path] = new
  # The shared placement: the model's dtype and sharding; the rest stays as initialised.
  merged, misfits = params_lib.merge(params, params_lib.unflatten(updates), strict=False)
  problems += misfits
  if problems:
    raise WarmStartError(f"{source_name} does not fit the model:\n  " + "\n  ".join(problems))
  used = {p.removeprefix("encoder/") for p in loaded} | {
      p.removeprefix("encoder/") for p in resized}
  report = Report(source=source_name, step=step, loaded=loaded, resized=resized,
                  initialised=initialised, unused=sorted(set(source) - used))
  return merged, report


def continue_from(params: Mapping[str, Any], checkpoint: str
                  ) -> tuple[dict[str, Any], Report]:
  """`params` (initialised) with every parameter the source shares taken from it, as it is."""
  source, name, step = _read_params(checkpoint)
  flat = {k: np.asarray(v) for k, v in params_lib.flatten(source).items()}
  loaded, initialised, problems, updates = [], [], [], {}
  for path, value in params_lib.flatten(params).items():
    if path not in flat:
      initialised.append(path)
    elif flat[path].shape != value.shape:
      problems.append(f"{path}: source {flat[path].shape}, model {value.shape}")
    else:
      loaded.append(path)
      updates[path] = flat[path]
  merged, misfits = params_lib.merge(params, params_lib.unflatten(updates), strict=False)
  if problems or misfits:
    raise WarmStartError(f"{name} does not fit the model:\n  " + "\n  ".join(problems + misfits))
  if not loaded:
    raise WarmStartError(f"{name} shares no parameter with the model")
  return merged, Report(source=name, step=step, loaded=loaded, resized={},
                        initialised=initialised, unused=sorted(set(flat) - set(loaded)))


def _fit(name: str, new: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
  """`new` made to fit `shape` where a different size is expected, and how; else (None, "")."""
  if name == "pos_embed" and new.shape[-1] == shape[-1]:
    return (np.asarray(posemb.resize_grid(new, shape[:2])),
            f"{new.shape[0]}x{new.shape[1]} -> {shape[0]}x{shape[1]}")
  if (name in ("tokens", "token_pos_embed") and new.shape[1:] == shape[1:]
      and new.shape[0] > shape[0]):
    # AST checkpoints carry [CLS] + distillation; a one-token model keeps [CLS] (row 0).
    return new[:shape[0]], f"{new.shape[0]} -> {shape[0]} token(s), kept the first"
  return None, ""


def write(report: Report, workdir: pathlib.Path) -> None:
  (workdir / rundir.WARM_START).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
