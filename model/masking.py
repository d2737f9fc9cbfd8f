"""Patch masks for SSAST masked-patch pre-training.

A mask selects exactly `num_masked` patches of the `(F', T')` grid per clip (a
static count, so shapes stay static under jit) by ranking one score per patch:

  random   scores are i.i.d. uniform: any subset is equally likely.
  cluster  the uniform scores are box-filtered over a `cluster_size`² neighbourhood
           before ranking, so high scores - and the masked patches - come in
           contiguous blobs. SSAST grows square clusters around random seeds
           until the count is reached; ranking smoothed noise gives the same kind
           of blobs with an exact count and no data-dependent loop, which XLA
           needs. Contiguity is what makes the task hard: an isolated masked
           patch can be interpolated from its neighbours, a blob cannot.

Patches outside `valid` (zero padding after a short clip) are ranked below every
valid patch, so they are masked only when a clip has fewer valid patches than
`num_masked`; callers weight such positions 0 in the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _box_filter(x: jax.Array, size: int) -> jax.Array:
  """Mean over a `size` x `size` window (SAME padding) of `[B, F, T]`."""
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, size, size), (1, 1, 1), "SAME")
  counts = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, (1, size, size),
                                 (1, 1, 1), "SAME")
  return summed / counts


def patch_scores(rng: jax.Array, batch: int, grid: tuple[int, int], *, kind: str,
                 cluster_size: int = 3) -> jax.Array:
  """`[B, F'·T']` ranking scores in [0, 1] for `kind` "random" or "cluster"."""
  scores = jax.random.uniform(rng, (batch, *grid))
  if kind == "cluster":
    if cluster_size < 1:
      raise ValueError(f"cluster_size must be >= 1, got {cluster_size}")
    scores = _box_filter(scores, cluster_size)
  elif kind != "random":
    raise ValueError(f"mask kind must be 'random' or 'cluster', got {kind!r}")
  return scores.reshape(batch, grid[0] * grid[1])


def sample(rng: jax.Array, batch: int, grid: tuple[int, int], num_masked: int, *,
           kind: str = "cluster", cluster_size: int = 3,
           valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Returns `(mask [B, F'·T'] bool, indices [B, num_masked] int32)`.

  `indices` are the masked patch positions (frequency-major), highest score
  first; `mask[b, indices[b]]` is True and exactly `num_masked` entries per row
  are True.
  """
  num_patches = grid[0] * grid[1]
  if not 0 < num_masked <= num_patches:
    raise ValueError(f"num_masked must be in 1..{num_patches}, got {num_masked}")
  scores = patch_scores(rng, batch, grid, kind=kind, cluster_size=cluster_size)
  if valid is not None:
    scores = jnp.where(valid, scores, scores - 2.0)  # below every valid patch's score
  _, indices = jax.lax.top_k(scores, num_masked)
  mask = jnp.zeros((batch, num_patches), bool).at[jnp.arange(batch)[:, None], indices].set(True)
  return mask, indices.astype(jnp.int32)
