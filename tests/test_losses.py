"""model.losses: masked per-dimension MSE against numpy, group means, fixed and uncertainty weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import losses

GROUPS = (("t", (0,)), ("d", (1, 2, 3)), ("e", (4, 5)))


def _batch(seed=0, b=7, d=6):
  rng = np.random.default_rng(seed)
  pred, lab = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  mask = rng.random((b, d)) > 0.3
  weights = (rng.random(b) > 0.2).astype(np.float32)
  return pred.astype(np.float32), lab.astype(np.float32), mask, weights


def test_per_dimension_mse_matches_numpy_with_masks_and_weights():
  pred, lab, mask, w = _batch()
  mse, count = losses.per_dimension_mse(pred, lab, mask, w)
  m = mask & (w[:, None] > 0)
  for d in range(6):
    sel = m[:, d]
    want = ((pred[sel, d] - lab[sel, d]) ** 2).mean() if sel.any() else 0.0
    assert float(mse[d]) == pytest.approx(want, rel=1e-5)
    assert int(count[d]) == sel.sum()


def test_a_dimension_without_labels_does_not_count_in_its_group():
  pred, lab, mask, _ = _batch()
  mask[:, 2] = False
  mse, count = losses.per_dimension_mse(pred, lab, mask)
  assert float(mse[2]) == 0.0
  g = losses.group_losses(mse, GROUPS, count)
  assert float(g["d"]) == pytest.approx(float((mse[1] + mse[3]) / 2), rel=1e-6)
  assert float(losses.group_losses(mse, GROUPS)["d"]) == pytest.approx(float(mse[1:4].mean()))


def test_fixed_weights_default_to_one_and_unknown_groups_are_refused():
  g = {"t": jnp.float32(1.0), "d": jnp.float32(2.0), "e": jnp.float32(3.0)}
  total, w = losses.combine(g)
  assert float(total) == 6.0 and all(float(v) == 1.0 for v in w.values())
  total, _ = losses.combine(g, fixed_weights={"d": 0.5})
  assert float(total) == 5.0
  with pytest.raises(ValueError, match="unknown groups"):
    losses.combine(g, fixed_weights={"x": 1.0})


def test_uncertainty_weighting_is_stationary_where_the_weight_matches_the_loss():
  g = {"t": jnp.float32(0.5), "d": jnp.float32(2.0), "e": jnp.float32(4.0)}
  s_opt = jnp.log(jnp.array([0.5, 2.0, 4.0]))
  grad = jax.grad(lambda s: losses.combine(g, log_variances=s)[0])(s_opt)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  _, w = losses.combine(g, log_variances=s_opt)
  assert float(w["t"]) == pytest.approx(2.0)  # the low-loss group gets the higher weight
  with pytest.raises(ValueError, match="do not match"):
    losses.combine(g, log_variances=jnp.zeros(2))


def test_nan_labels_under_the_mask_do_not_poison_the_loss():
  pred, lab, mask, _ = _batch()
  lab = np.where(mask, lab, np.nan)
  mse, _ = losses.per_dimension_mse(pred, lab, mask)
  assert np.isfinite(np.asarray(mse)).all()


def test_a_group_absent_from_the_batch_does_not_move_its_weight():
  g = {"t": jnp.float32(0.0), "d": jnp.float32(2.0), "e": jnp.float32(4.0)}
  present = {"t": jnp.float32(0.0), "d": jnp.float32(1.0), "e": jnp.float32(1.0)}
  grad = jax.grad(lambda s: losses.combine(g, log_variances=s, present=present)[0])(jnp.zeros(3))
  assert float(grad[0]) == 0.0 and float(grad[1]) != 0.0
  count = jnp.array([0, 3, 3, 3, 1, 0])
  flags = losses.group_presence(GROUPS, count)
  assert {k: float(v) for k, v in flags.items()} == {"t": 0.0, "d": 1.0, "e": 1.0}
