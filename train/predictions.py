"""Per-performance predictions of one evaluation, as the trainer writes them and the report reads them.

`WORKDIR/predictions/<step>.npz` holds, for every performance of the evaluated
split (windows already averaged, label space):

  keys         [P]      PercePiano keys (passage and performer are parsed from them)
  predictions  [P, 19]
  labels       [P, 19]
  mask         [P, 19]  bool: the dimension has a valid label
  windows      [P]      how many windows were averaged
  step, split           the training step and "<split>/fold<k>" / "<split>/test"

Scores, confidence intervals and significance tests are all computed from
these files, so a report can be rebuilt (and two runs compared on the same
performances) without a checkpoint or the shards.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from pipelines.datasets import percepiano, taxonomy
from train import rundir


class PredictionsError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Predictions:
  keys: tuple[str, ...]
  predictions: np.ndarray
  labels: np.ndarray
  mask: np.ndarray
  windows: np.ndarray
  step: int = 0
  split: str = ""

  def __post_init__(self):
    p, d = len(self.keys), taxonomy.NUM_DIMENSIONS
    for name in ("predictions", "labels", "mask"):
      if np.shape(getattr(self, name)) != (p, d):
        raise PredictionsError(f"{name} is {np.shape(getattr(self, name))}, expected {(p, d)}")
    if np.shape(self.windows) != (p,):
      raise PredictionsError(f"windows is {np.shape(self.windows)}, expected {(p,)}")
    if len(set(self.keys)) != p:
      raise PredictionsError("duplicate performance keys")

  @property
  def passages(self) -> tuple[str, ...]:
    return tuple(percepiano.parse_key(k).passage for k in self.keys)

  def subset(self, keys) -> Predictions:
    """These predictions restricted to (and ordered by) `keys`; every key must be present."""
    index = {k: i for i, k in enumerate(self.keys)}
    missing = [k for k in keys if k not in index]
    if missing:
      raise PredictionsError(f"{len(missing)} performances have no prediction, e.g. {missing[:3]}")
    rows = np.array([index[k] for k in keys], int)
    return dataclasses.replace(self, keys=tuple(keys), predictions=self.predictions[rows],
                               labels=self.labels[rows], mask=self.mask[rows],
                               windows=self.windows[rows])

  def save(self, path: str | pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, keys=np.asarray(self.keys, dtype=str), predictions=self.predictions,
             labels=self.labels, mask=self.mask, windows=self.windows, step=self.step,
             split=self.split)
    tmp.replace(path)  # a reader never sees a half-written file


def concatenate(parts: list[Predictions], split: str) -> Predictions:
  """Out-of-fold predictions of several folds as one set (keys must not overlap)."""
  return Predictions(
      keys=tuple(k for p in parts for k in p.keys),
      predictions=np.concatenate([p.predictions for p in parts]),
      labels=np.concatenate([p.labels for p in parts]),
      mask=np.concatenate([p.mask for p in parts]),
      windows=np.concatenate([p.windows for p in parts]),
      step=max(p.step for p in parts), split=split)


def load(path: str | pathlib.Path) -> Predictions:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no predictions at {path}")
  with np.load(path, allow_pickle=False) as f:
    return Predictions(keys=tuple(str(k) for k in f["keys"]), predictions=f["predictions"],
                       labels=f["labels"], mask=f["mask"].astype(bool), windows=f["windows"],
                       step=int(f["step"]), split=str(f["split"]))


def steps(workdir: str | pathlib.Path) -> list[int]:
  directory = pathlib.Path(workdir) / rundir.PREDICTIONS
  return sorted(int(p.stem) for p in directory.glob("*.npz") if p.stem.isdigit())


def path_for(workdir: str | pathlib.Path, step: int) -> pathlib.Path:
  return pathlib.Path(workdir) / rundir.PREDICTIONS / f"{step}.npz"


def load_selected(workdir: str | pathlib.Path) -> Predictions:
  """The evaluation a run is judged by: the one its result.json selected (the best on the
  validation fold by the run's metric), else its last.

  A cross-validation fold's selected score has seen its own fold once more (the choice
  of evaluation); the test run is scored once, at the end, so it carries no such bias.
  """
  found = steps(workdir)
  if not found:
    raise FileNotFoundError(f"{workdir} has no {rundir.PREDICTIONS}/<step>.npz: not a finished "
                            "fine-tuning run")
  selected = (rundir.read_result(workdir) or {}).get("selected_step")
  if selected is not None and selected not in found:
    raise FileNotFoundError(f"{workdir}: result.json selects step {selected}, which has no "
                            f"{rundir.PREDICTIONS}/{selected}.npz")
  return load(path_for(workdir, found[-1] if selected is None else selected))
