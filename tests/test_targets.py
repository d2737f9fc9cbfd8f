"""model.targets: training-split standardisation, masks, round trips, errors."""

import numpy as np
import pytest

from model import targets


def test_fit_uses_only_valid_labels_and_round_trips():
  rng = np.random.default_rng(0)
  labels = rng.uniform(1 / 7, 1, size=(50, 19)).astype(np.float32)
  mask = rng.random((50, 19)) > 0.2
  labels_with_junk = np.where(mask, labels, 99.0)
  n = targets.TargetNormalizer.fit(labels_with_junk, mask)
  for d in (0, 7, 18):
    assert n.mean[d] == pytest.approx(labels[mask[:, d], d].mean(), rel=1e-6)
    assert n.std[d] == pytest.approx(labels[mask[:, d], d].std(), rel=1e-5)
  z = n.normalize(labels)
  np.testing.assert_allclose(n.denormalize(z), labels, atol=1e-6)
  full = targets.TargetNormalizer.fit(labels)
  np.testing.assert_allclose(full.normalize(labels).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(full.normalize(labels).std(0), 1, atol=1e-4)
  assert targets.TargetNormalizer.from_dict(n.to_dict()) == n


def test_constant_dimension_is_floored_not_divided_by_zero():
  labels = np.full((10, 3), 0.5)
  n = targets.TargetNormalizer.fit(labels)
  assert n.std == (1e-3,) * 3
  assert np.isfinite(n.normalize(labels)).all()


@pytest.mark.parametrize("labels,mask,match", [
    (np.zeros(5), None, "examples, dimensions"),
    (np.zeros((4, 2)), np.ones((4, 3), bool), "does not match"),
    (np.array([[np.nan, 0.0], [1.0, 1.0]]), None, "NaN"),
    (np.zeros((4, 2)), np.array([[1, 1], [0, 1], [0, 1], [0, 1]], bool), "fewer than 2")])
def test_bad_inputs_are_refused(labels, mask, match):
  with pytest.raises(ValueError, match=match):
    targets.TargetNormalizer.fit(labels, mask)


def test_from_dict_refuses_bad_statistics():
  with pytest.raises(ValueError, match="invalid"):
    targets.TargetNormalizer.from_dict({"mean": [0.0, 1.0], "std": [1.0, 0.0]})
