"""The report's plots: Pearson bars with CIs, prediction-vs-label scatter, training curves.

Drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend
state), written as PNG. Every function takes plain arrays and dicts so the
report can be redrawn from its JSON.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from pipelines.datasets import percepiano, taxonomy

RATING_SCALE = percepiano.RATING_SCALE  # plots show the 1-7 questionnaire scale



def save(fig, path: pathlib.Path) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  return path


def pearson_bars(path: pathlib.Path, runs: Mapping[str, Mapping[str, Sequence[float]]],
                 ceiling: Sequence[float] | None, title: str) -> pathlib.Path:
  """Grouped bars per dimension: `runs[name] = {"value": [19], "low": [19], "high": [19]}`."""
  from matplotlib.figure import Figure
  names = list(runs)
  fig = Figure(figsize=(13, 4.8))
  ax = fig.add_subplot()
  x = np.arange(taxonomy.NUM_DIMENSIONS)
  width = 0.8 / max(len(names), 1)
  for i, name in enumerate(names):
    r = runs[name]
    value = np.asarray(r["value"], float)
    err = np.stack([value - np.asarray(r["low"], float), np.asarray(r["high"], float) - value])
    ax.bar(x + (i - (len(names) - 1) / 2) * width, value, width, yerr=np.nan_to_num(err),
           capsize=2, label=name)
  if ceiling is not None:
    ax.scatter(x, ceiling, marker="_", s=200, color="black", zorder=3, label="human ceiling")
  ax.axhline(0, color="grey", lw=0.8)
  ax.set_xticks(x, taxonomy.DIMENSION_NAMES, rotation=60, ha="right", fontsize=8)
  ax.set_ylabel("Pearson r (95% bootstrap CI)")
  ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.0)
  ax.set_title(title)
  ax.legend(fontsize=8, loc="lower right")
  return save(fig, path)


def scatter(path: pathlib.Path, predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray,
            pearson: Sequence[float], title: str) -> pathlib.Path:
  """Prediction vs label per dimension on the 1-7 scale, one panel each."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(15, 10))
  fig.suptitle(title)
  for d, name in enumerate(taxonomy.DIMENSION_NAMES):
    ax = fig.add_subplot(4, 5, d + 1)
    m = mask[:, d]
    y, p = labels[m, d] * RATING_SCALE, predictions[m, d] * RATING_SCALE
    ax.scatter(y, p, s=6, alpha=0.5)
    if m.any():
      lo, hi = min(y.min(), p.min()), max(y.max(), p.max())
      ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_title(f"{name}  r={pearson[d]:.2f}", fontsize=8)
    ax.tick_params(labelsize=7)
    if d % 5 == 0:
      ax.set_ylabel("prediction", fontsize=7)
    if d >= 15:
      ax.set_xlabel("label (mean rating)", fontsize=7)
  fig.subplots_adjust(hspace=0.45, wspace=0.3)
  return save(fig, path)


def curves(path: pathlib.Path, series: Mapping[str, Sequence[Mapping[str, float]]],
           title: str) -> pathlib.Path:
  """Training loss and validation Pearson (mean) per step, one line per run/fold."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 3.8))
  fig.suptitle(title)
  panels = (("train/loss", "training loss"), ("val/pearson/mean", "validation Pearson (mean)"))
  for i, (key, label) in enumerate(panels):
    ax = fig.add_subplot(1, 2, i + 1)
    for name, records in series.items():
      points = [(r["step"], r[key]) for r in records
                if key in r and isinstance(r[key], (int, float))]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    if len(ax.get_legend_handles_labels()[0]) > 1:
      ax.legend(fontsize=7)
  return save(fig, path)
