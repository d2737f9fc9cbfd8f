"""A fitted forest of regression trees as flat arrays, and its prediction from them.

The notes model's estimator (`train.notes_from_midi`) holds scikit-learn extra-trees. A
release stores them as safetensors arrays instead of a pickle (a pickle runs code on
load and ties the file to one scikit-learn version), and predicts with numpy alone:

  tree_offsets  int64 [T + 1]   tree t's nodes are rows offsets[t]:offsets[t + 1]
  left, right   int32 [N]       children, as indices within the tree (-1 at a leaf)
  feature       int32 [N]       the input column a node splits on
  threshold     float64 [N]     go left when the input (as float32, as scikit-learn
                                compares it) is <= threshold
  leaf          int32 [N]       a leaf's row in `leaf_values` (-1 elsewhere)
  leaf_values   float64 [U, S]  the distinct leaf outputs: a fully grown tree's leaves
                                mostly hold one training row each, so the outputs are
                                stored once per distinct row, not once per leaf

The forest's prediction is the mean over the trees of each one's leaf output.
"""

from __future__ import annotations

import numpy as np

NAMES = ("tree_offsets", "left", "right", "feature", "threshold", "leaf", "leaf_values")


class TreeArraysError(ValueError):
  pass


def pack(forest) -> dict[str, np.ndarray]:
  """The arrays of a fitted scikit-learn forest of regression trees (`estimators_`)."""
  trees = [estimator.tree_ for estimator in forest.estimators_]
  counts = [t.node_count for t in trees]
  left = np.concatenate([t.children_left for t in trees]).astype(np.int32)
  values = np.concatenate([t.value[:, :, 0] for t in trees]).astype(np.float64)
  is_leaf = left < 0
  distinct, index = np.unique(values[is_leaf], axis=0, return_inverse=True)
  leaf = np.full(left.shape, -1, np.int32)
  leaf[is_leaf] = index.reshape(-1)
  return {"tree_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
          "left": left,
          "right": np.concatenate([t.children_right for t in trees]).astype(np.int32),
          "feature": np.concatenate([t.feature for t in trees]).astype(np.int32),
          "threshold": np.concatenate([t.threshold for t in trees]).astype(np.float64),
          "leaf": leaf, "leaf_values": distinct}


def check(arrays: dict[str, np.ndarray], inputs: int) -> None:
  """Refuses arrays that would index out of bounds: a damaged or foreign file."""
  missing = [n for n in NAMES if n not in arrays]
  if missing:
    raise TreeArraysError(f"the forest lacks {missing}")
  offsets, n = arrays["tree_offsets"], len(arrays["left"])
  if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 1):
    raise TreeArraysError("the forest's tree offsets do not cover its nodes")
  if any(len(arrays[k]) != n for k in ("right", "feature", "threshold", "leaf")):
    raise TreeArraysError("the forest's node arrays differ in length")
  sizes = np.repeat(np.diff(offsets), np.diff(offsets))
  inner = arrays["left"] >= 0
  if (np.any(arrays["left"][inner] >= sizes[inner]) or np.any(arrays["right"][inner] < 0)
      or np.any(arrays["right"][inner] >= sizes[inner])
      or np.any((arrays["feature"][inner] < 0) | (arrays["feature"][inner] >= inputs))
      or np.any(arrays["leaf"][~inner] < 0)
      or np.any(arrays["leaf"][~inner] >= len(arrays["leaf_values"]))):
    raise TreeArraysError("the forest's nodes point outside it")


def predict(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  """`x [n, F]` -> the forest's mean output `[n, S]`."""
  x = np.asarray(x, np.float32).astype(np.float64)  # scikit-learn's trees compare float32
  rows = np.arange(len(x))
  total = np.zeros((len(x), arrays["leaf_values"].shape[1]))
  offsets = arrays["tree_offsets"]
  for t in range(len(offsets) - 1):
    base = int(offsets[t])
    node = np.zeros(len(x), np.int64)
    while True:
      left = arrays["left"][base + node]
      inner = left >= 0
      if not inner.any():
        break
      at = base + node[inner]
      go_left = x[rows[inner], arrays["feature"][at]] <= arrays["threshold"][at]
      node[inner] = np.where(go_left, left[inner], arrays["right"][at])
    total += arrays["leaf_values"][arrays["leaf"][base + node]]
  return total / (len(offsets) - 1)
