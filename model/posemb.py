"""Resizing the 2-D position embeddings when the patch grid changes.

The grid changes with the patch stride (SSAST pre-trains at stride 16, 8 x 64;
AST fine-tunes at stride 10, 12 x 101) and with the clip length. As AST and SSAST
do, each axis is handled on its own:

  shrinking  centre crop (start = old//2 - new//2): the kept embeddings are
             exactly the learned ones, with their learned spacing.
  growing    linear interpolation with half-pixel centres, i.e. PyTorch's
             `F.interpolate(mode="bilinear", align_corners=False)` (bilinear is
             separable, so per-axis equals 2-D).

`mode="interpolate"` interpolates on both axes whatever the direction
(anti-aliasing off, as PyTorch's bilinear). An unchanged axis is returned
untouched, so an identity resize returns the input bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _interpolate_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  shape = list(x.shape)
  shape[axis] = size
  return jax.image.resize(x, tuple(shape), method="linear", antialias=False)


def _crop_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
  start = x.shape[axis] // 2 - size // 2
  return jax.lax.slice_in_dim(x, start, start + size, axis=axis)


def resize_grid(grid: jax.Array | np.ndarray, shape: tuple[int, int], mode: str = "auto") -> jax.Array:
  """`[F, T, D]` -> `[F2, T2, D]` position embeddings for a `shape = (F2, T2)` patch grid."""
  if mode not in ("auto", "interpolate"):
    raise ValueError(f"mode must be 'auto' or 'interpolate', got {mode!r}")
  if grid.ndim != 3:
    raise ValueError(f"position grid must be [freq, time, width], got {grid.shape}")
  if len(shape) != 2 or min(shape) < 1:
    raise ValueError(f"target grid shape must be two positive sizes, got {shape}")
  x = jnp.asarray(grid)
  for axis, size in enumerate(shape):
    if size == x.shape[axis]:
      continue
    if size < x.shape[axis] and mode == "auto":
      x = _crop_axis(x, axis, size)
    else:
      x = _interpolate_axis(x, axis, size)
  return x
