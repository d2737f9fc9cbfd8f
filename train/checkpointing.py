"""Orbax checkpoints of the whole run: train state and the Grain iterator, in one step directory.

Layout: `WORKDIR/checkpoints/<step>/{state,data}` — `state` is the TrainState
(parameters, optimiser state, step, rng; sharded arrays are written by every
host and restored straight into their shardings), `data` is each host's Grain
iterator state (`process_<i>-of-<n>.json`), so a restored run reads exactly
the batch after the one the checkpoint was taken at.

Kept: the latest `keep` checkpoints plus the best one by the validation metric
(`best_metric`, `best_mode`); checkpoints saved without metrics count only
towards the latest. Saves are asynchronous (training continues while arrays are
written); `close()` waits for the last one, and Orbax writes into a temporary
directory that is renamed only when complete, so a run killed mid-save leaves
the previous checkpoint as the latest.

A checkpoint damaged on disk afterwards (a file truncated by a full disk or a
crashed copy, a file deleted, garbage in its metadata) cannot be restored:
`restore_intact` skips it with a warning naming its step and the reason and
takes the newest one that restores; with none, one error naming the directory.
"""

from __future__ import annotations

import logging as logging_lib
import pathlib
from collections.abc import Callable

import grain
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

# Re-exported as `checkpointing.CheckpointNotFoundError`: one class for a missing
# checkpoint, a training run's or a weights file to convert (a FileNotFoundError,
# and a ValueError through ConversionError, which every caller here catches too).
from model.convert.errors import CheckpointNotFoundError  # noqa: F401
from train import rundir


class _QuietOrbax(logging_lib.Filter):
  """Drops Orbax's per-save INFO chatter (dozens of lines per checkpoint); warnings pass."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logs() -> None:
  """For the training CLIs' logs (train.main, train.crossval): one filter on absl's handler."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
    handler.addFilter(_QuietOrbax())


class Checkpointer:
  """Saves and restores `(TrainState, Grain iterator)` pairs under `WORKDIR/checkpoints`."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, best_metric: str = "",
               best_mode: str = "max", async_save: bool = True, read_only: bool = False):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.best_metric = best_metric
    keep_policies = [policies.LatestN(n=keep)]
    if best_metric:
      keep_policies.append(policies.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min", n=1,  # keeps the end of the sorted list
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
        best_mode=best_mode)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def save(self, step: int, state, iterator, metrics: dict | None = None) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(iterator)
    self._manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state, iterator=None):
    """Restores `step` into `abstract_state`'s shapes and shardings (and `iterator`)."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def restore_raw_state(self, step: int):
    """The saved state as a tree of arrays, without a target (for warm starts)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]

  def restore_intact(self, restore: Callable[[int], object], steps: list[int] | None = None
                     ) -> tuple[object, int, list[tuple[int, str]]]:
    """`restore(step)` of the first of `steps` (default: newest first) that restores.

    Returns (what it restored, its step, [(skipped step, reason)]). Any error while
    reading counts as damage: Orbax, TensorStore and JSON each raise their own types.
    """
    steps = sorted(self.all_steps(), reverse=True) if steps is None else steps
    skipped = []
    for step in steps:
      try:
        return restore(step), step, skipped
      except Exception as e:  # noqa: BLE001 (see the docstring)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        logging.warning("checkpoint %s/%d cannot be restored, skipped: %s: %s", self.directory,
                        step, type(e).__name__, reason)
        skipped.append((step, f"{type(e).__name__}: {reason}"))
    raise CheckpointNotFoundError(
        f"{self.directory}: no intact checkpoint"
        + (f" (steps {', '.join(str(s) for s, _ in skipped)} cannot be restored; first: "
           f"{skipped[0][1]})" if skipped else " (none saved)"))

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def locate(path: str | pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(checkpoints directory, step) for a work directory, a checkpoints directory or a step.

  A step directory names its step; otherwise the step is None (caller picks
  the latest or best).
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointNotFoundError(f"{path} does not exist")
  if (path / rundir.CHECKPOINTS).is_dir():
    return path / rundir.CHECKPOINTS, None
  if path.name.isdigit() and (path / "state").is_dir():
    return path.parent, int(path.name)
  if any(p.name.isdigit() for p in path.iterdir()):
    return path, None
  raise CheckpointNotFoundError(f"{path} is neither a work directory, a checkpoints directory "
                                f"nor a checkpoint step directory")
