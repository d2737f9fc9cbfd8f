"""Leak-free, seeded PercePiano splits.

*Piece split*: clips are grouped by work/movement (the 8- and 16-bar cuts of a
movement are the same music), a held-out test set of about `test_fraction` of
the clips is drawn from whole groups, and the remaining groups are dealt into
`num_folds` cross-validation folds balanced by clip count.

*Performer split*: clips are grouped by performer; by default the test set is
the performers {"1", "2"} (key tokens, see BUILD_NOTES.md) and the other
performers are dealt into folds.

Group sizes are very uneven (Schubert D960 mv3 has ~560 of 1202 clips), so the
folds cannot be equal; the dealing is "largest group to the emptiest fold",
which is the best simple bound. Every random choice comes from `seed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from pipelines.datasets import percepiano

PAPER_TEST_PERFORMERS = ("1", "2")


@dataclasses.dataclass(frozen=True)
class Split:
  """Keys on the held-out test side and in each cross-validation fold."""

  name: str
  test: tuple[str, ...]
  folds: tuple[tuple[str, ...], ...]

  def fold(self, index: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train keys, validation keys) when fold `index` is held out."""
    if not 0 <= index < len(self.folds):
      raise IndexError(f"fold {index} of {len(self.folds)}")
    train = tuple(sorted(k for i, f in enumerate(self.folds) if i != index for k in f))
    return train, self.folds[index]

  def trainval(self) -> tuple[str, ...]:
    """All non-test keys (for the final fit before the one test evaluation)."""
    return tuple(sorted(k for f in self.folds for k in f))

  def assignment(self) -> dict[str, str]:
    """key -> "test" or "fold{i}"."""
    out = {k: "test" for k in self.test}
    out.update({k: f"fold{i}" for i, f in enumerate(self.folds) for k in f})
    return out


def _deal(groups: Mapping[str, Sequence[str]], num_folds: int,
          rng: np.random.Generator) -> list[list[str]]:
  """Deals groups into folds: largest first, each to the fold with fewest keys.

  Ties between equal-sized groups are broken by a seeded shuffle, so different
  seeds give different folds.
  """
  names = sorted(groups)
  order = rng.permutation(len(names))
  ranked = sorted(range(len(names)), key=lambda i: (-len(groups[names[i]]), order[i]))
  folds: list[list[str]] = [[] for _ in range(num_folds)]
  for i in ranked:
    smallest = min(range(num_folds), key=lambda f: (len(folds[f]), f))
    folds[smallest].extend(groups[names[i]])
  return folds


def _pick_test(groups: Mapping[str, Sequence[str]], fraction: float,
               rng: np.random.Generator) -> set[str]:
  """Whole groups, in seeded random order, while the test side stays <= fraction."""
  total = sum(len(v) for v in groups.values())
  target = round(fraction * total)
  names = sorted(groups)
  chosen, size = set(), 0
  for i in rng.permutation(len(names)):
    name = names[i]
    if size + len(groups[name]) <= target:
      chosen.add(name)
      size += len(groups[name])
  if not chosen:
    raise ValueError(
        f"no group fits in a test set of {fraction:.0%} ({target} of {total} items)")
  return chosen


def grouped_split(
    name: str,
    items: Iterable[str],
    group_of: Callable[[str], str],
    *,
    num_folds: int,
    seed: int,
    test_fraction: float = 0.0,
    test_groups: Iterable[str] = (),
) -> Split:
  """Splits `items` so that no group is on two sides.

  The test side is `test_groups` when given, else a seeded draw of whole groups
  holding at most `test_fraction` of the items (none when 0).
  """
  if num_folds < 1:
    raise ValueError(f"num_folds must be >= 1, got {num_folds}")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  test_groups = set(test_groups)
  if test_groups and test_fraction:
    raise ValueError("give test_groups or test_fraction, not both")
  groups: dict[str, list[str]] = {}
  for item in sorted(set(items)):
    groups.setdefault(group_of(item), []).append(item)
  rng = np.random.default_rng(seed)
  unknown = test_groups - groups.keys()
  if unknown:
    raise ValueError(f"{name}: test groups {sorted(unknown)} have no items")
  if not test_groups and test_fraction > 0:
    test_groups = _pick_test(groups, test_fraction, rng)
  rest = {g: v for g, v in groups.items() if g not in test_groups}
  if len(rest) < num_folds:
    raise ValueError(f"{name}: {len(rest)} groups cannot fill {num_folds} folds")
  folds = _deal(rest, num_folds, rng)
  return Split(
      name=name,
      test=tuple(sorted(k for g in test_groups for k in groups[g])),
      folds=tuple(tuple(sorted(f)) for f in folds),
  )


def piece_split(performances: Iterable[percepiano.Performance], *, test_fraction: float = 0.15,
                num_folds: int = 4, seed: int = 0) -> Split:
  """Test set and folds grouped by work/movement."""
  movement = {p.key.text: p.key.movement for p in performances}
  return grouped_split("piece", movement, movement.__getitem__, num_folds=num_folds,
                       seed=seed, test_fraction=test_fraction)


def performer_split(performances: Iterable[percepiano.Performance], *,
                    test_performers: Sequence[str] = PAPER_TEST_PERFORMERS,
                    num_folds: int = 4, seed: int = 0) -> Split:
  """Test set = `test_performers` (key tokens); folds grouped by performer."""
  performer = {p.key.text: p.key.performer for p in performances}
  return grouped_split("performer", performer, performer.__getitem__, num_folds=num_folds,
                       seed=seed, test_groups=test_performers)
