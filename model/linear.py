"""Dense layers with logical axis names and a mixed-precision matmul.

Every matmul in the models goes through `matmul`, so the precision policy lives in
one place:

  f32 compute   a plain float32 dot.
  bf16 compute  bfloat16 operands with float32 accumulation
                (`preferred_element_type=float32`), rounded to bfloat16 afterwards.
                XLA's CPU backend runs bf16 x bf16 -> bf16 dots by upcasting to f32
                (~300 GFLOP/s here), but bf16 operands accumulated in f32 use the
                AMX/AVX-512-BF16 path (~1.1 TFLOP/s measured, REFERENCE.md). The
                custom VJP keeps the two backward matmuls on that path too: JAX's
                own transpose rule would multiply the float32 cotangent by the bf16
                operand, i.e. a float32 matmul.

Parameters stay in `param_dtype` (float32 master weights) and are cast to the
compute dtype at use, so optimiser updates never round to bf16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

# Linear-layer initialisation of ViT/DeiT (timm): truncated normal, std 0.02.
DEFAULT_KERNEL_INIT = nn.initializers.truncated_normal(stddev=0.02)


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x[..., K] @ w[K, N]` accumulated in float32."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def _bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return _dot(x, w).astype(x.dtype)


def _bf16_matmul_fwd(x, w):
  return _bf16_matmul(x, w), (x, w)


def _bf16_matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32).astype(x.dtype)
  x2 = x.reshape(-1, x.shape[-1])
  g2 = g.reshape(-1, g.shape[-1])
  dw = jax.lax.dot_general(x2, g2, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


# Name under which every weight-matmul output is tagged for rematerialisation policies:
# `jax.checkpoint_policies.dots_*` cannot see the dot inside the bf16 custom VJP.
MATMUL_NAME = "dense_matmul"


def matmul(x: jax.Array, w: jax.Array, dtype: Dtype) -> jax.Array:
  """`x[..., K] @ w[K, N]` in the compute `dtype` (float32 or bfloat16)."""
  x = x.astype(dtype)
  w = w.astype(dtype)
  if jnp.dtype(dtype) == jnp.bfloat16:
    y = _bf16_matmul(x, w)
  else:
    # Float32 precision follows `jax_default_matmul_precision` (exact f32 on CPU).
    y = jnp.matmul(x, w)
  return checkpoint_name(y, MATMUL_NAME)


class Dense(nn.Module):
  """`y = x · kernel + bias`, contracting the last `len(in_axes)` input dimensions.

  The kernel has shape `[*x.shape[-n:], *features]` and the logical axis names
  `(*in_axes, *out_axes)`, which the trainer maps to mesh axes. Attention uses
  the multi-dimensional forms (`features=(3, heads, head_dim)` for the fused
  query/key/value projection, two contracted dimensions for the output
  projection) so that heads stay a separate, shardable axis.
  """

  features: int | Sequence[int]
  in_axes: Sequence[str | None] = ("embed",)
  out_axes: Sequence[str | None] = ("mlp",)
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = len(self.in_axes)
    if len(self.out_axes) != len(features):
      raise ValueError(f"out_axes {self.out_axes} do not match features {features}")
    in_shape = x.shape[-n_in:]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, (*self.in_axes, *self.out_axes)),
        (*in_shape, *features), self.param_dtype)
    k_in, k_out = math.prod(in_shape), math.prod(features)
    y = matmul(x.reshape(*x.shape[:-n_in], k_in), kernel.reshape(k_in, k_out), self.dtype)
    y = y.reshape(*x.shape[:-n_in], *features)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_axes)),
                        features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def layer_norm(epsilon: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over `embed` with named scale/bias; statistics always in float32."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))
