"""The files of a run directory: their names, and the one rule for "finished".

A fine-tuning or pre-training work directory holds:

  config.json          the resolved config (the trainer writes it before step 1)
  data_metadata.json   how the training windows were made (the shards' feature settings)
  checkpoints/         Orbax checkpoints with the Grain iterator state
  metrics.jsonl        every logged scalar, one JSON object per line
  predictions/<step>.npz  per-performance predictions of each evaluation (train.predictions)
  warm_start.json      what a warm start loaded, resized, initialised
  result.json          written at exit: status, why it stopped, the selected evaluation
                       (step, epoch, scores), wall time

The names live here, below both the trainer (which writes them) and evaluation and
orchestration (which read them), so nothing has to import the trainer for a file
name; this module imports nothing heavier than json, so orchestration
(train.crossval, experiments.stages) can check runs without importing JAX.
"""

from __future__ import annotations

import json
import pathlib

CONFIG = "config.json"
DATA_METADATA = "data_metadata.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions"
WARM_START = "warm_start.json"
RESULT = "result.json"


def write_data_metadata(workdir: str | pathlib.Path, job_metadata: dict) -> None:
  """The training data's metadata without its shard and checksum lists: how the features
  were made (windowing, trimming, normalisation statistics), which inference must repeat
  exactly, without the shards at hand."""
  kept = {k: v for k, v in job_metadata.items() if k not in ("shards", "source_checksums")}
  (pathlib.Path(workdir) / DATA_METADATA).write_text(json.dumps(kept, indent=1, sort_keys=True)
                                                    + "\n")


def read_result(workdir: str | pathlib.Path) -> dict | None:
  """A work directory's result.json, or None when absent or cut mid-write."""
  try:
    return json.loads((pathlib.Path(workdir) / RESULT).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def total_wall_seconds(result: dict | None) -> float | None:
  """Training wall time over the run's attempts (results written before this field:
  the last attempt's)."""
  if not result:
    return None
  return result.get("total_wall_seconds", result.get("wall_seconds"))


def finished(result: dict | None) -> bool:
  """A run that ended as planned: its schedule's last step, its `stop_after_epochs`, or
  early stopping (not stopped by SIGTERM, not still running)."""
  if not result or result.get("status") != "finished":
    return False
  # Results written before runs could end early carry no "stop": those ended at the end.
  return result.get("stop") is not None or result.get("step") == result.get("total_steps")
