"""Scalars of a run: TensorBoard event files and a JSON-lines log, written by process 0.

`WORKDIR/tensorboard/` (tensorboardX event files: `tensorboard --logdir WORKDIR`)
and `WORKDIR/metrics.jsonl` (one `{"step": s, name: value, ...}` object per
write; the evaluation report reads its training curves from here). Other hosts
get a writer that writes nothing, so callers need no `if process_index == 0`.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping

from train import rundir


class MetricWriter:
  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      # Imported here: only the writing process pays for tensorboardX.
      from tensorboardX import SummaryWriter
      workdir = pathlib.Path(workdir)
      self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"), flush_secs=30)
      self._jsonl = open(workdir / rundir.METRICS, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, global_step=step)
    self._jsonl.write(json.dumps(
        {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}})
        + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read(workdir: str | pathlib.Path) -> list[dict]:
  """The JSON-lines log of a run (for reports and tests)."""
  path = pathlib.Path(workdir) / rundir.METRICS
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
