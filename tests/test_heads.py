"""model.heads: label order, group membership, cross-task attention paths, padding masked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import heads
from pipelines.datasets import taxonomy

D = 32


def _tokens(b=2, n=9, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, n, D)), jnp.ones((b, n), bool)


def _init(module, tokens, mask):
  return jax.jit(module.init)(jax.random.key(0), tokens, mask)


def test_default_groups_come_from_the_taxonomy():
  assert dict(heads.DEFAULT_GROUPS) == taxonomy.GROUPS
  assert dict(heads.DEFAULT_GROUPS)["timing"] == (0,)
  assert dict(heads.DEFAULT_GROUPS)["dynamics"] == tuple(range(1, 11))
  assert dict(heads.DEFAULT_GROUPS)["expression"] == tuple(range(11, 19))


def test_outputs_are_scattered_back_to_label_order():
  """Give every group's last layer a bias only, distinct per dimension: the output shows the order."""
  groups = (("b", (4, 0, 2)), ("a", (1, 3)))  # deliberately out of order
  m = heads.GroupedHeads(groups, num_outputs=5, heads=2)
  t, mask = _tokens()
  v = nn.meta.unbox(_init(m, t, mask))
  p = jax.tree.map(lambda x: x, v)
  for name, dims in groups:
    p["params"][f"{name}_fc2"]["kernel"] = jnp.zeros_like(p["params"][f"{name}_fc2"]["kernel"])
    p["params"][f"{name}_fc2"]["bias"] = jnp.asarray(dims, jnp.float32) * 10.0
  out = jax.jit(m.apply)(p, t, mask)
  np.testing.assert_array_equal(out, np.broadcast_to(np.arange(5) * 10.0, (2, 5)))


def _perturb_query(v, j):
  """A random (not constant: LayerNorm would remove that) change to group j's query."""
  v = jax.tree.map(lambda x: x, nn.meta.unbox(v))
  v["params"]["queries"] = v["params"]["queries"].at[j].add(jax.random.normal(jax.random.key(7), (D,)))
  return v


def test_cross_task_attention_lets_groups_read_each_other_and_can_be_switched_off():
  t, mask = _tokens()
  groups = heads.DEFAULT_GROUPS
  timing = list(dict(groups)["timing"])
  for cross, should_change in ((True, True), (False, False)):
    m = heads.GroupedHeads(groups, heads=2, cross_task=cross, dropout=0.0)
    v = nn.meta.unbox(_init(m, t, mask))
    apply = jax.jit(m.apply)
    base = apply(v, t, mask)
    moved = apply(_perturb_query(v, 2), t, mask)  # move the expression group's query
    changed = not np.allclose(base[:, timing], moved[:, timing], atol=1e-6)
    assert changed == should_change, cross
    # The moved group itself always changes.
    assert not np.allclose(base[:, 11:], moved[:, 11:])


def test_padding_tokens_do_not_reach_the_predictions():
  t, _ = _tokens(n=12)
  mask = jnp.arange(12)[None, :] < jnp.array([[12], [7]])
  m = heads.GroupedHeads(heads=4)
  v = _init(m, t, mask)
  apply = jax.jit(m.apply)
  a = apply(v, t, mask)
  b = apply(v, t.at[1, 7:].set(100.0), mask)
  np.testing.assert_allclose(a, b, atol=1e-6)
  real_change = jax.random.normal(jax.random.key(3), (7, D))
  assert not np.allclose(apply(v, t.at[1, :7].add(real_change), mask)[1], a[1])


def test_cross_attention_maps_are_sown_per_layer():
  t, mask = _tokens(n=9)
  m = heads.GroupedHeads(heads=4, depth=2)
  v = _init(m, t, mask)
  _, state = jax.jit(lambda v: m.apply(v, t, mask, mutable=["intermediates"]))(v)
  for i in range(2):
    (probs,) = state["intermediates"][f"layer_{i}"]["cross_attention"]
    assert probs.shape == (2, 4, 3, 9 + 3)  # groups attend over tokens + groups
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_flat_head_shape():
  pooled = jnp.ones((3, D))
  m = heads.FlatHead()
  v = m.init(jax.random.key(0), pooled)
  assert m.apply(v, pooled).shape == (3, taxonomy.NUM_DIMENSIONS)


@pytest.mark.parametrize("groups,match", [
    ((("a", (0, 1)), ("b", (1, 2))), "exactly once"),
    ((("a", (0,)), ("b", (2,))), "exactly once"),
    ((("a", (0, 1)), ("a", (2,))), "unique")])
def test_bad_groups_are_refused(groups, match):
  with pytest.raises(ValueError, match=match):
    heads.check_groups(groups, 3)


def test_width_must_divide_into_heads():
  t, mask = _tokens()
  with pytest.raises(ValueError, match="divisible"):
    heads.GroupedHeads(heads=5).init(jax.random.key(0), t, mask)
