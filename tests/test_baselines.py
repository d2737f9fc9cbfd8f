"""model.baselines: the CNN and pooled-statistics FFN share the encoder's interface and respect padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import baselines


def _x(b=2, f=32, t=64, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, f, t))


def test_pooled_statistics_match_numpy_over_valid_frames():
  x = _x()
  valid = jnp.array([64, 20])
  got = np.asarray(baselines.pooled_statistics(x, valid))
  xn = np.asarray(x, np.float64)
  for b, n in enumerate([64, 20]):
    seg = xn[b, :, :n]
    want = np.concatenate([seg.mean(1), seg.std(1), np.abs(np.diff(seg, axis=1)).mean(1)])
    np.testing.assert_allclose(got[b], want, atol=1e-4)


def test_interfaces_and_shapes():
  x = _x()
  for module, n_tokens in ((baselines.CNN(baselines.CNNConfig(width=48)), (32 // 32) * (64 // 32)),
                           (baselines.PooledStats(baselines.PooledStatsConfig(width=48)), 1)):
    v = jax.jit(module.init)(jax.random.key(0), x)
    out = jax.jit(module.apply)(v, x)
    assert out["tokens"].shape == (2, n_tokens, 48)
    assert out["pooled"].shape == (2, 48)
    assert out["token_mask"].shape == (2, n_tokens) and bool(out["token_mask"].all())


@pytest.mark.parametrize("module", [baselines.PooledStats(), baselines.CNN()])
def test_what_lies_in_the_padding_does_not_matter(module):
  x = _x(t=128)
  valid = jnp.array([128, 64])  # clip 1: CNN tokens at time starts 0, 32 valid; 64, 96 padding
  v = jax.jit(module.init)(jax.random.key(0), x)
  apply = jax.jit(lambda x: module.apply(v, x, valid_frames=valid))
  a = apply(x)
  b = apply(x.at[1, :, 64:].set(7.0))
  np.testing.assert_array_equal(a["pooled"], b["pooled"])
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.allclose(apply(x.at[1, :, :64].add(1.0))["pooled"][1], a["pooled"][1])
  if isinstance(module, baselines.CNN):
    np.testing.assert_array_equal(a["token_mask"][1], [True, True, False, False])  # 1 x 4 token grid


def test_cnn_refuses_sizes_it_cannot_pool():
  with pytest.raises(ValueError, match="divisible by 32"):
    baselines.CNN().init(jax.random.key(0), jnp.zeros((1, 30, 64)))


def test_seeded_initialisation():
  x = _x()
  m = baselines.CNN()
  a, b = jax.jit(m.init)(jax.random.key(3), x), jax.jit(m.init)(jax.random.key(3), x)
  for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(p, q)
