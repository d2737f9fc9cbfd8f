"""model.dropout: the hashed mask drops at the stated rate, independently, reproducibly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import dropout

SHAPE = (4, 514, 192)  # a tiny encoder's residual stream for 4 windows at stride 16


def _mask(seed, rate=0.1, shape=SHAPE):
  return np.asarray(dropout.keep_mask(jax.random.key(seed), shape, rate))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_rate_is_the_stated_rate(rate):
  keep = _mask(0, rate)
  n = keep.size
  sd = np.sqrt(rate * (1 - rate) / n)
  assert abs((1 - keep.mean()) - rate) < 5 * sd
  # ... in every slice, not only on average (a bad counter mix shows up as striping).
  per_row = 1 - keep.reshape(-1, SHAPE[-1]).mean(axis=1)
  assert abs(per_row.mean() - rate) < 5 * sd
  assert per_row.std() < 1.5 * np.sqrt(rate * (1 - rate) / SHAPE[-1])


def test_neighbours_keys_and_layers_are_independent():
  a = _mask(0, 0.5).astype(np.float64).ravel() - 0.5
  b = _mask(1, 0.5).astype(np.float64).ravel() - 0.5
  n = a.size
  for lag in (1, 2, SHAPE[-1], SHAPE[-1] * SHAPE[-2]):  # next element, next token, next window
    assert abs(np.mean(a[:-lag] * a[lag:]) / 0.25) < 5 / np.sqrt(n), lag
  assert abs(np.mean(a * b) / 0.25) < 5 / np.sqrt(n)
  # Two keys split from one, as nn.scan gives its layers.
  k1, k2 = jax.random.split(jax.random.key(7))
  c = np.asarray(dropout.keep_mask(k1, SHAPE, 0.5), np.float64).ravel() - 0.5
  d = np.asarray(dropout.keep_mask(k2, SHAPE, 0.5), np.float64).ravel() - 0.5
  assert abs(np.mean(c * d) / 0.25) < 5 / np.sqrt(n)


def test_same_key_same_mask_and_bits_are_uniform():
  np.testing.assert_array_equal(_mask(3), _mask(3))
  assert not np.array_equal(_mask(3), _mask(4))
  bits = np.asarray(dropout.hash_bits(jax.random.key(5), (1 << 16,)))
  counts = np.bincount(bits >> 28, minlength=16)  # top 4 bits: 16 equal cells
  expected = bits.size / 16
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 45  # 15 degrees of freedom: p < 1e-4 beyond this
  assert len(np.unique(bits)) > 0.99 * bits.size


def test_layer_keeps_the_mean_and_zeroes_dropped_elements():
  x = jnp.ones(SHAPE)
  layer = dropout.Dropout(0.1)
  y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  assert set(np.unique(y)) == {0.0, np.float32(1 / 0.9)}
  assert abs(y.mean() - 1.0) < 5 * np.sqrt(0.1 / 0.9 / y.size)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(dropout.Dropout(0.0).apply({}, x, deterministic=False), x)
  zero = dropout.Dropout(1.0).apply({}, x, deterministic=False)
  assert not np.asarray(zero).any()
  y16 = dropout.Dropout(0.1).apply({}, x.astype(jnp.bfloat16), deterministic=False,
                                   rngs={"dropout": jax.random.key(0)})
  assert y16.dtype == jnp.bfloat16


def test_each_call_site_gets_its_own_mask_and_bad_rates_are_refused():
  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      return dropout.Dropout(0.5)(x, False), dropout.Dropout(0.5)(x, False)

  a, b = Two().apply({}, jnp.ones((64, 64)), rngs={"dropout": jax.random.key(0)})
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="rate must be in"):
    dropout.Dropout(1.5).apply({}, jnp.ones(3), deterministic=False)
