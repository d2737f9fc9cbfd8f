"""Fine-tuning's starting point: the encoder of a pre-training run or of converted weights.

Sources (`config.init`):
  checkpoint  a pre-training work directory, its `checkpoints/` directory or one
              step directory; the best checkpoint by the validation metric is
              used when there is one, else the latest.
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
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from model import posemb
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


def load_source(init: Mapping[str, str]) -> tuple[dict[str, np.ndarray], str, int | None]:
  """The encoder parameters named by `config.init`, as numpy (flat paths)."""
  if init["checkpoint"] and init["converted"]:
    raise WarmStartError("set only one of init.checkpoint and init.converted")
  if init["checkpoint"]:
    directory, step = checkpointing.locate(init["checkpoint"])
    reader = checkpointing.Checkpointer(directory, read_only=True, best_metric="val/loss",
                                        best_mode="min")
    try:
      step = step if step is not None else (reader.best_step() or reader.latest_step())
      if step is None:
        raise checkpointing.CheckpointNotFoundError(f"{directory} holds no checkpoint")
      state = reader.restore_raw_state(step)
    finally:
      reader.close()
    params = state["params"]
    source = str(directory)
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
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(encoder, sep="/").items()}, source, step


def apply(params: Mapping[str, Any], source: Mapping[str, np.ndarray], source_name: str,
          step: int | None = None) -> tuple[dict[str, Any], Report]:
  """`params` (initialised, unboxed, possibly sharded) with the encoder taken from `source`."""
  if "encoder" not in params:
    raise WarmStartError("the fine-tuning model has no AST encoder to warm-start "
                         "(backbone must be 'ast')")
  flat = traverse_util.flatten_dict(params, sep="/")
  loaded, resized, initialised, problems = [], {}, [], []
  for path, value in flat.items():
    name = path.removeprefix("encoder/")
    if not path.startswith("encoder/"):
      initialised.append(path)
      continue
    if name not in source:
      initialised.append(path)
      continue
    new = source[name]
    if new.shape != value.shape:
      if name == "pos_embed" and new.shape[-1] == value.shape[-1]:
        resized[path] = f"{new.shape[0]}x{new.shape[1]} -> {value.shape[0]}x{value.shape[1]}"
        new = np.asarray(posemb.resize_grid(new, value.shape[:2]))
      elif (name in ("tokens", "token_pos_embed") and new.shape[1:] == value.shape[1:]
            and new.shape[0] > value.shape[0]):
        # AST checkpoints carry [CLS] + distillation; a one-token model keeps [CLS] (row 0).
        resized[path] = f"{new.shape[0]} -> {value.shape[0]} token(s), kept the first"
        new = new[:value.shape[0]]
      else:
        problems.append(f"{path}: source {new.shape}, model {value.shape}")
        continue
    else:
      loaded.append(path)
    array = jax.numpy.asarray(new, dtype=value.dtype)
    sharding = getattr(value, "sharding", None)
    flat[path] = jax.device_put(array, sharding) if sharding is not None else array
  if problems:
    raise WarmStartError(f"{source_name} does not fit the model:\n  " + "\n  ".join(problems))
  used = {p.removeprefix("encoder/") for p in loaded} | {
      p.removeprefix("encoder/") for p in resized}
  report = Report(source=source_name, step=step, loaded=loaded, resized=resized,
                  initialised=initialised, unused=sorted(set(source) - used))
  return traverse_util.unflatten_dict(flat, sep="/"), report


def write(report: Report, workdir: pathlib.Path) -> None:
  (workdir / rundir.WARM_START).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
