"""Multi-head dot-product attention kernels, `[batch, length, heads, head_dim]` in and out.

  plain    materialises the `[batch, heads, q, k]` probabilities; the reference,
           and the only kernel that can return them (attention maps) or apply
           attention dropout.
  blocked  memory-efficient: queries in blocks, each block's softmax over all keys,
           so the live probability tensor is `[batch, heads, block, k]` and the
           backward pass recomputes it per block instead of storing all of it.

Both take an optional key mask `[batch, k]` (True = attend); masked keys get a
large negative logit, so a query never attends to padding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite: exp underflows to 0 without producing NaN for all-masked rows


def _logits(q, k, dtype):
  """`[B, H, q, k]` logits accumulated in float32."""
  q = q.astype(dtype)
  k = k.astype(dtype)
  return jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)


def plain(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
          *, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Returns `(out [B, q, H, D], probabilities [B, H, q, k])`."""
  scale = q.shape[-1] ** -0.5
  logits = _logits(q * scale, k, dtype)
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype),
                   preferred_element_type=jnp.float32)
  return out.astype(dtype), probs


def blocked(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
            *, dtype=jnp.float32, block_size: int = 128) -> jax.Array:
  """Query-blocked attention; same result as `plain` (to float rounding)."""
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  b, n, h, d = q.shape
  nb = -(-n // block_size)
  pad = nb * block_size - n
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  qb = qp.reshape(b, nb, block_size, h, d).transpose(1, 0, 2, 3, 4)  # [nb, B, blk, H, D]

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one_block(qi):
    out, _ = plain(qi, k, v, key_mask, dtype=dtype)
    return out

  out = jax.lax.map(one_block, qb)  # [nb, B, blk, H, D]
  out = out.transpose(1, 0, 2, 3, 4).reshape(b, nb * block_size, h, d)
  return out[:, :n]

