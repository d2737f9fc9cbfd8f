"""train.tree_arrays: a scikit-learn forest as flat arrays predicts exactly as the forest."""

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesRegressor

from train import tree_arrays


def test_packed_trees_predict_exactly_as_the_forest():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(150, 7)), rng.normal(size=(150, 3))
  x[:, 0] = np.round(x[:, 0])  # ties at thresholds: float32 comparisons must match
  forest = ExtraTreesRegressor(20, max_features=0.5, random_state=0).fit(x, y)
  arrays = tree_arrays.pack(forest)
  tree_arrays.check(arrays, 7)
  # Fully grown trees: one leaf per training row, stored once per distinct output.
  assert len(arrays["leaf_values"]) <= 150 < int((arrays["left"] < 0).sum())
  z = np.concatenate([rng.normal(size=(50, 7)), x[:20]])
  np.testing.assert_array_equal(tree_arrays.predict(arrays, z), forest.predict(z))


def test_damaged_arrays_are_refused():
  rng = np.random.default_rng(1)
  forest = ExtraTreesRegressor(3, random_state=0).fit(rng.normal(size=(30, 4)),
                                                      rng.normal(size=(30, 2)))
  arrays = tree_arrays.pack(forest)
  with pytest.raises(tree_arrays.TreeArraysError, match="lacks"):
    tree_arrays.check({k: v for k, v in arrays.items() if k != "leaf"}, 4)
  with pytest.raises(tree_arrays.TreeArraysError, match="offsets"):
    tree_arrays.check({**arrays, "tree_offsets": arrays["tree_offsets"][:-1]}, 4)
  with pytest.raises(tree_arrays.TreeArraysError, match="point outside"):
    tree_arrays.check(arrays, 2)  # splits on columns 2 and 3 of only 2 inputs
  right = arrays["right"].copy()
  right[arrays["left"] >= 0] = 10_000
  with pytest.raises(tree_arrays.TreeArraysError, match="point outside"):
    tree_arrays.check({**arrays, "right": right}, 4)
