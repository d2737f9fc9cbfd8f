"""The human ceiling: how well *any* model could correlate with PercePiano's noisy labels.

A label is the mean of 5-20 listeners' answers, so part of its variance is
rater noise that no audio model can predict. The reliability of that mean is
estimated by split-half: each performance's *listeners* are split at random into
two halves (all of a listener's answer rows for a clip in one half, averaged as
the label rule averages rows), the half-means are correlated across performances per dimension,
and the Spearman-Brown formula `2r / (1 + r)` steps the half-length
reliability up to the full panel. The average r over many random splits is
used (one split is noisy). A model that predicted each performance's expected
rating perfectly would reach Pearson `sqrt(reliability)` with the labels
(classical test theory: the correlation of a score with its true score), so
that is the ceiling every report divides by.

The same is done *within passage* (half-means centred on each passage's mean
before correlating), the ceiling for ranking performances of the same music.

Rows follow the release's label rule (`percepiano.RawRatings.labels`): a row
with an answer above 7 is invalid, an empty or 0 answer is missing for its
dimension, duplicate rows count twice. A dimension is scored over the
performances whose two halves both have an answer there. With an odd number
of listeners the halves differ by one; Spearman-Brown then slightly
underestimates (by well under 0.01 at PercePiano's panel sizes, see the
simulation test).

Why listeners and not rows: the raw CSV holds repeated answers by the same
listener for the same clip (about 14 rows but 10 distinct listeners per clip in
the median). A listener's repeats share that listener's view of the clip, so a
row split that puts them in both halves correlates the halves beyond what two
independent panels would: the ceiling comes out too high (the simulation test
plants such repeats; `unit="row"` keeps the old estimate for that comparison).

  python -m eval.ceiling --percepiano_dir=../shared/data/percepiano [--output_json=F]
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np

from pipelines import entry_point
from pipelines.datasets import percepiano, taxonomy
from train import metrics

DEFAULT_SPLITS = 200


@dataclasses.dataclass(frozen=True)
class Ceiling:
  """Per-dimension `[19]` arrays (label order); `sqrt(reliability)` is the Pearson ceiling."""

  split_half: np.ndarray  # mean split-half r over the random splits
  reliability: np.ndarray  # Spearman-Brown stepped up to the full panel
  split_half_within: np.ndarray
  reliability_within: np.ndarray
  performances: int
  raters_per_performance: tuple[float, float, float]  # min, median, max valid answer rows
  listeners_per_performance: tuple[float, float, float]  # min, median, max distinct listeners
  splits: int
  unit: str = "listener"  # what the halves are drawn over

  @property
  def pearson(self) -> np.ndarray:
    return _ceiling(self.reliability)

  @property
  def pearson_within(self) -> np.ndarray:
    return _ceiling(self.reliability_within)

  def to_dict(self) -> dict:
    per_dim = lambda values: dict(zip(taxonomy.DIMENSION_NAMES, map(float, values)))
    return {
        "method": "split-half reliability of the rater panel, Spearman-Brown; ceiling = "
                  "sqrt(reliability)",
        "performances": self.performances, "splits": self.splits,
        "split_unit": self.unit,
        "raters_per_performance": dict(zip(("min", "median", "max"),
                                           self.raters_per_performance)),
        "listeners_per_performance": dict(zip(("min", "median", "max"),
                                              self.listeners_per_performance)),
        "pearson": per_dim(self.pearson), "pearson_within": per_dim(self.pearson_within),
        "reliability": per_dim(self.reliability),
        "reliability_within": per_dim(self.reliability_within),
    }


def _ceiling(reliability: np.ndarray) -> np.ndarray:
  return np.sqrt(np.clip(reliability, 0.0, 1.0))


def spearman_brown(r: np.ndarray, factor: float = 2.0) -> np.ndarray:
  """Reliability of a test `factor` times as long as one with reliability `r`."""
  r = np.asarray(r, np.float64)
  return factor * r / (1 + (factor - 1) * r)


def split_half(raw: percepiano.RawRatings, keys=None, *, splits: int = DEFAULT_SPLITS,
               seed: int = 0, unit: str = "listener") -> Ceiling:
  """Split-half reliability per dimension of the panel means, overall and within passage.

  `keys` restricts the estimate to those performances (e.g. the labelled
  ones); every key must have at least two valid listeners (two valid rows with
  `unit="row"`).
  """
  if unit not in ("listener", "row"):
    raise ValueError(f"unit must be 'listener' or 'row', got {unit!r}")
  valid = ~np.any(raw.answers > 7, axis=1)
  row_keys = np.asarray(raw.keys)[valid]
  answers = raw.answers[valid]
  unique, key_index, rows_per_key = np.unique(row_keys, return_inverse=True,
                                               return_counts=True)
  # The (clip, listener) pairs: a listener's rows for a clip, which a listener split keeps
  # together. `row_unit` is each row's unit, `unit_key` each unit's clip.
  pairs, pair_of_row = np.unique(np.stack([key_index, np.asarray(raw.users)[valid]], axis=1),
                                 axis=0, return_inverse=True)
  listeners = np.bincount(pairs[:, 0], minlength=len(unique))
  if unit == "listener":
    row_unit, unit_key = pair_of_row.reshape(-1), pairs[:, 0]
  else:
    row_unit, unit_key = np.arange(len(key_index)), key_index
  counts = np.bincount(unit_key, minlength=len(unique))  # units (listeners or rows) per key
  if keys is not None:
    wanted = set(keys)
    missing = sorted(wanted - set(unique.tolist()))
    if missing:
      raise percepiano.PercePianoError(
          f"{len(missing)} performances have no valid rating row, e.g. {missing[:3]}")
  else:
    wanted = set(unique.tolist())
  too_few = [k for k, c in zip(unique, counts) if c < 2 and k in wanted]
  if too_few:
    raise percepiano.PercePianoError(
        f"{len(too_few)} performances have fewer than 2 valid {unit}s (no split possible), "
        f"e.g. {too_few[:3]}")
  chosen = np.array([k in wanted for k in unique])
  # Only the chosen keys must parse (the raw CSV may hold clips outside the release).
  passages = np.array([percepiano.parse_key(str(k)).passage if c else "" for k, c in
                       zip(unique, chosen)])
  present = answers > 0
  values = np.where(present, answers, 0.0)
  # Units grouped by key once; each split shuffles their positions within each key and
  # gives the first half of every key's units (with all their rows) to the first half.
  order = np.argsort(unit_key, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rng = np.random.default_rng(seed)
  r_overall = np.zeros((splits, taxonomy.NUM_DIMENSIONS))
  r_within = np.zeros_like(r_overall)
  for s in range(splits):
    shuffled = order[np.lexsort((rng.random(len(order)), unit_key[order]))]
    position = np.empty(len(order), int)
    position[shuffled] = np.arange(len(order)) - np.repeat(starts, counts)
    first = (position < (counts[unit_key] // 2))[row_unit]
    half_means = []
    for half in (first, ~first):
      total = np.zeros((len(unique), taxonomy.NUM_DIMENSIONS))
      n = np.zeros_like(total)
      np.add.at(total, key_index[half], values[half])
      np.add.at(n, key_index[half], present[half])
      with np.errstate(invalid="ignore", divide="ignore"):
        half_means.append(np.where(n > 0, total / n, np.nan))
    a, b = half_means
    for d in range(taxonomy.NUM_DIMENSIONS):
      m = chosen & np.isfinite(a[:, d]) & np.isfinite(b[:, d])
      r_overall[s, d] = metrics.pearson(a[m, d], b[m, d])
      r_within[s, d] = metrics.within_passage_pearson(a[m, d], b[m, d], passages[m])
  rows, chosen_listeners = rows_per_key[chosen], listeners[chosen]
  half, half_within = r_overall.mean(axis=0), r_within.mean(axis=0)
  return Ceiling(split_half=half, reliability=spearman_brown(half),
                 split_half_within=half_within, reliability_within=spearman_brown(half_within),
                 performances=int(chosen.sum()),
                 raters_per_performance=(float(rows.min()), float(np.median(rows)),
                                         float(rows.max())),
                 splits=splits, unit=unit,
                 listeners_per_performance=(float(chosen_listeners.min()),
                                            float(np.median(chosen_listeners)),
                                            float(chosen_listeners.max())))


def from_release(percepiano_dir: str | pathlib.Path, *, splits: int = DEFAULT_SPLITS,
                 seed: int = 0) -> Ceiling:
  """The ceiling of a PercePiano-layout release over its labelled performances."""
  root = pathlib.Path(percepiano_dir)
  labels = percepiano.read_labels(root / percepiano.LABELS_FILE)
  raw = percepiano.read_raw_ratings(root / percepiano.RAW_RATINGS_FILE)
  return split_half(raw, sorted(labels), splits=splits, seed=seed)


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  try:
    result = from_release(f.percepiano_dir, splits=f.splits, seed=f.seed)
  except (FileNotFoundError, percepiano.PercePianoError) as e:
    sys.exit(f"error: {e}")
  text = json.dumps(result.to_dict(), indent=1)
  if f.output_json:
    pathlib.Path(f.output_json).write_text(text + "\n")
  print(f"{'dimension':24s} {'ceiling r':>9s} {'within':>7s} {'reliab.':>7s}")
  for i, name in enumerate(taxonomy.DIMENSION_NAMES):
    print(f"{name:24s} {result.pearson[i]:9.3f} {result.pearson_within[i]:7.3f} "
          f"{result.reliability[i]:7.3f}")
  for group, dims in taxonomy.GROUPS.items():
    print(f"{group:24s} {np.mean(result.pearson[list(dims)]):9.3f} "
          f"{np.mean(result.pearson_within[list(dims)]):7.3f}")
  print(f"{result.performances} performances; per performance (min, median, max): listeners "
        f"{result.listeners_per_performance}, answer rows {result.raters_per_performance}; "
        f"{result.splits} random splits by listener")


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("percepiano_dir", None, "A PercePiano-layout release (labels + raw CSV).")
  flags.DEFINE_integer("splits", DEFAULT_SPLITS, "Random split-halves averaged.")
  flags.DEFINE_integer("seed", 0, "Seed of the random splits.")
  flags.DEFINE_string("output_json", None, "Also write the result here.")
  flags.mark_flag_as_required("percepiano_dir")


def cli() -> None:
  """Console entry point (`ppt-ceiling`)."""
  entry_point.run(__doc__, _define_flags, main)


if __name__ == "__main__":
  cli()
