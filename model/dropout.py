"""Dropout whose mask costs a few integer operations per element, not a threefry hash.

`flax.linen.Dropout` draws one uniform float per element from JAX's default PRNG
(threefry-2x32: 20 rounds of 32-bit add/rotate/xor per pair of outputs). On a CPU that was
13 % of the tiny encoder's training step and 0.14 s of a base step (BUILD_NOTES.md, "Model
benchmark"), more than PyTorch spends on its Philox masks. Here the layer's key (from
`make_rng("dropout")`, so every call site, layer and step still gets its own stream, split
exactly as for `nn.Dropout`) yields two 32-bit seeds, and each element's bits are a
counter-based hash of its flat index: two rounds of MurmurHash3's 32-bit finaliser, a
bijection on 32-bit words whose avalanche makes neighbouring indices uncorrelated. An element
is kept when its bits are at or above `rate · 2³²`, so the drop rate is exact to 2⁻³², and
kept values are scaled by `1 / (1 - rate)`. tests/test_dropout.py checks the rate, the
scaling, independence between neighbours and between keys, and determinism.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35  # MurmurHash3 fmix32 multipliers
_GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters before mixing


def _fmix32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_M1)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(_M2)
  return x ^ (x >> 16)


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 bits of `shape`, a deterministic function of `key` and each element's index."""
  seed = jax.random.bits(key, (2,), jnp.uint32)
  size = 1
  for n in shape:
    size *= n
  if size >= 2 ** 32:
    raise ValueError(f"dropout over {size} elements: the counter would wrap at 2^32")
  counter = lax.iota(jnp.uint32, size).reshape(shape)
  return _fmix32(_fmix32(counter * jnp.uint32(_GOLDEN) + seed[0]) ^ seed[1])


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """True where an element is kept; each is dropped with probability `rate`."""
  threshold = jnp.uint32(min(round(rate * 2 ** 32), 2 ** 32 - 1))
  return hash_bits(key, shape) >= threshold


class Dropout(nn.Module):
  """`nn.Dropout(rate)(x, deterministic=...)` with the hashed mask above."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))
