"""A run's `result.json`: what the trainer writes at exit, and the one rule for "finished".

Kept apart from the trainer so orchestration (eval.crossval, experiments.stages)
can check runs without importing JAX.
"""

from __future__ import annotations

import json
import pathlib

FILE = "result.json"


def read(workdir: str | pathlib.Path) -> dict | None:
  """A work directory's result.json, or None when absent or cut mid-write."""
  try:
    return json.loads((pathlib.Path(workdir) / FILE).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def total_wall_seconds(result: dict | None) -> float | None:
  """Training wall time over the run's attempts (results written before this field:
  the last attempt's)."""
  if not result:
    return None
  return result.get("total_wall_seconds", result.get("wall_seconds"))


def finished(result: dict | None) -> bool:
  """A run that reached its last step (not stopped by SIGTERM, not still running)."""
  return bool(result) and result.get("status") == "finished" and \
      result.get("step") == result.get("total_steps")
