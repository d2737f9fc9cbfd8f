"""Audio Spectrogram Transformer encoder (Gong et al. 2021) in Flax Linen.

Input: normalised log-mel features `[batch, mel, frames]` (the shards' layout,
`[B, 128, 1024]`). The spectrogram is cut into `patch_size`² patches with a
configurable frequency/time stride (10: AST's overlapping layout, 12 x 101 = 1212
patches; 16: SSAST's non-overlapping pre-training layout, 8 x 64 = 512), each
patch is projected linearly (the 16x16 convolution of AST, written as patch
extraction + matmul), optional [CLS] and distillation tokens are prepended, 2-D
learnable position embeddings over the (frequency, time) patch grid are added,
and pre-LayerNorm Transformer blocks with a final LayerNorm follow.

Parameter tree (stable: checkpoints and `model.convert` depend on it; D = width,
L = depth, H = heads, K = D / H, P = patch_size², F' x T' = patch grid):

  patch_embed/kernel [P, D]  (patch values frequency-major: index i*p + j is
                             mel offset i, frame offset j), patch_embed/bias [D]
  tokens [num_tokens, D]     row 0 = [CLS], row 1 = distillation token
  token_pos_embed [num_tokens, D]
  pos_embed [F', T', D]      the 2-D grid; `model.posemb` resizes it
  mask_embed [D]             only when called with `patch_mask` (SSAST)
  blocks/                    all L layers stacked on a leading axis (nn.scan):
    norm1/{scale,bias} [L, D]
    attn/qkv/kernel [L, D, 3, H, K], attn/qkv/bias [L, 3, H, K]
    attn/out/kernel [L, H, K, D], attn/out/bias [L, D]
    norm2/{scale,bias} [L, D]
    mlp/fc1/kernel [L, D, mlp], mlp/fc1/bias [L, mlp]
    mlp/fc2/kernel [L, mlp, D], mlp/fc2/bias [L, D]
  norm/{scale,bias} [D]

Logical axis names: `embed`, `mlp`, `heads`, `kv`, `layers` on parameters;
`batch`, `length`, `embed` on activations (mapped to mesh axes by the trainer).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model import attention, dropout, linear

_REMAT_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass: least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the weight matmuls' outputs, recompute the rest (the attention
    # probabilities above all): most of the memory saving at little extra time.
    # By name, because the bf16 matmul's dot sits inside a custom VJP that the
    # dot-based policies cannot see.
    "dots": jax.checkpoint_policies.save_only_these_names(linear.MATMUL_NAME),
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """AST encoder hyper-parameters; `variant()` gives the named sizes."""

  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  freq_stride: int = 10
  time_stride: int = 10
  num_mel_bins: int = 128
  num_frames: int = 1024
  num_tokens: int = 2  # 0, 1 ([CLS]) or 2 ([CLS] + distillation), as AST/DeiT
  pooling: str = "tokens"  # "tokens": mean of the extra tokens (AST); "patches": patch mean (SSAST)
  dropout: float = 0.1
  layer_norm_eps: float = 1e-6  # timm/original AST; transformers' ASTConfig default is 1e-12
  gelu_approximate: bool = False  # exact erf GELU, as AST/transformers
  dtype: str = "float32"  # compute dtype: "float32" or "bfloat16"
  param_dtype: str = "float32"
  # "auto" (blocked on a CPU, fused on a GPU/TPU), "blocked" (memory-efficient), "fused"
  # (jax.nn.dot_product_attention) or "plain" (can return the maps); model/attention.py.
  attention: str = "auto"
  attention_block_size: int = 256  # measured best here for N = 514 and 1214 (BUILD_NOTES.md)
  remat: str = "none"  # "none", "dots" or "full"
  scan_unroll: int = 1  # layers per scan iteration; depth = fully unrolled (same parameters)

  def __post_init__(self):
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
    if self.num_tokens not in (0, 1, 2):
      raise ValueError(f"num_tokens must be 0, 1 or 2, got {self.num_tokens}")
    if self.pooling not in ("tokens", "patches"):
      raise ValueError(f"pooling must be 'tokens' or 'patches', got {self.pooling!r}")
    if self.pooling == "tokens" and self.num_tokens == 0:
      raise ValueError("pooling='tokens' needs num_tokens >= 1")
    if self.attention not in attention.KERNELS:
      raise ValueError(f"attention must be one of {attention.KERNELS}, got {self.attention!r}")
    if self.remat not in _REMAT_POLICIES:
      raise ValueError(f"remat must be one of {sorted(_REMAT_POLICIES)}, got {self.remat!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}")
    for size, stride, what in ((self.num_mel_bins, self.freq_stride, "mel bins"),
                               (self.num_frames, self.time_stride, "frames")):
      if stride < 1 or size < self.patch_size:
        raise ValueError(f"{size} {what} cannot hold a {self.patch_size}-patch at stride {stride}")

  @property
  def grid(self) -> tuple[int, int]:
    """The (frequency, time) patch grid, `(F', T')`."""
    return (grid_size(self.num_mel_bins, self.patch_size, self.freq_stride),
            grid_size(self.num_frames, self.patch_size, self.time_stride))

  @property
  def num_patches(self) -> int:
    f, t = self.grid
    return f * t

  @property
  def length(self) -> int:
    """Sequence length: extra tokens + patches."""
    return self.num_tokens + self.num_patches

  def replace(self, **changes) -> EncoderConfig:
    return dataclasses.replace(self, **changes)


VARIANTS: dict[str, dict[str, Any]] = {
    # ViT/DeiT-base, as AST and SSAST (~87 M parameters at stride 10).
    "base": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    # Sized for 2-CPU-core experiments (REFERENCE.md's measured FLOPs use these).
    "small": dict(width=384, depth=6, heads=6, mlp_dim=1536),
    "tiny": dict(width=192, depth=4, heads=3, mlp_dim=768),
}


def variant(name: str, **overrides) -> EncoderConfig:
  """`variant("base", freq_stride=16, time_stride=16)` etc."""
  if name not in VARIANTS:
    raise ValueError(f"unknown encoder variant {name!r}; expected one of {sorted(VARIANTS)}")
  return EncoderConfig(**{**VARIANTS[name], **overrides})


def grid_size(size: int, patch_size: int, stride: int) -> int:
  """Patches along one axis of `size` bins/frames: a strided convolution's output length."""
  return (size - patch_size) // stride + 1


def patchify(features: jax.Array, patch_size: int, freq_stride: int, time_stride: int) -> jax.Array:
  """`[B, mel, frames]` -> patches `[B, F', T', patch_size²]`, frequency-major in each patch.

  Non-overlapping strides are a reshape; overlapping ones gather with static
  indices (two takes), which is what a strided 16x16 convolution reads.
  """
  b, n_mel, n_frames = features.shape
  gf = grid_size(n_mel, patch_size, freq_stride)
  gt = grid_size(n_frames, patch_size, time_stride)
  if freq_stride == patch_size and time_stride == patch_size:
    x = features[:, :gf * patch_size, :gt * patch_size]
    x = x.reshape(b, gf, patch_size, gt, patch_size)
  else:
    fi = (np.arange(gf)[:, None] * freq_stride + np.arange(patch_size)[None]).reshape(-1)
    ti = (np.arange(gt)[:, None] * time_stride + np.arange(patch_size)[None]).reshape(-1)
    x = jnp.take(jnp.take(features, fi, axis=1), ti, axis=2)
    x = x.reshape(b, gf, patch_size, gt, patch_size)
  return x.transpose(0, 1, 3, 2, 4).reshape(b, gf, gt, patch_size * patch_size)


def patch_validity(valid_frames: jax.Array, config: EncoderConfig) -> jax.Array:
  """`[B]` valid frame counts -> `[B, F'·T']`: a patch is valid if it holds a real frame."""
  gf, gt = config.grid
  starts = jnp.arange(gt) * config.time_stride
  valid_t = starts[None, :] < valid_frames[:, None]  # [B, T']
  return jnp.broadcast_to(valid_t[:, None, :], (valid_frames.shape[0], gf, gt)).reshape(-1, gf * gt)


class Mlp(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = linear.Dense(c.mlp_dim, ("embed",), ("mlp",), dtype=c.dtype, param_dtype=c.param_dtype,
                     name="fc1")(x)
    x = nn.gelu(x, approximate=c.gelu_approximate)
    x = nn.with_logical_constraint(x, ("batch", "length", "mlp"))
    return linear.Dense(c.width, ("mlp",), ("embed",), dtype=c.dtype, param_dtype=c.param_dtype,
                        name="fc2")(x)


class SelfAttention(nn.Module):
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, key_mask):
    c = self.config
    head_dim = c.width // c.heads
    qkv = linear.Dense((3, c.heads, head_dim), ("embed",), (None, "heads", "kv"), dtype=c.dtype,
                       param_dtype=c.param_dtype, name="qkv")(x)  # [B, N, 3, H, K]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    kernel = attention.resolve(c.attention)
    if kernel == "plain":
      out, probs = attention.plain(q, k, v, key_mask, dtype=c.dtype)
      # Attention maps for eval.attention (collected with mutable=["intermediates"]).
      self.sow("intermediates", "attention", probs)
    elif kernel == "fused":
      out = attention.fused(q, k, v, key_mask, dtype=c.dtype)
    else:
      out = attention.blocked(q, k, v, key_mask, dtype=c.dtype, block_size=c.attention_block_size)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return linear.Dense(c.width, ("heads", "kv"), ("embed",), dtype=c.dtype,
                        param_dtype=c.param_dtype, name="out")(out)


class EncoderBlock(nn.Module):
  """Pre-LayerNorm Transformer block; `(x, key_mask) -> (x, None)` for nn.scan."""

  config: EncoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, key_mask):
    c = self.config
    norm = functools.partial(linear.layer_norm, c.layer_norm_eps, c.dtype, c.param_dtype)
    y = SelfAttention(c, name="attn")(norm("norm1")(x), key_mask)
    x = x + dropout.Dropout(c.dropout)(y, deterministic=self.deterministic)
    y = Mlp(c, name="mlp")(norm("norm2")(x))
    x = x + dropout.Dropout(c.dropout)(y, deterministic=self.deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class Encoder(nn.Module):
  """The AST encoder.

  `__call__(features [B, mel, frames], train, valid_frames [B] | None,
  patch_mask [B, F'·T'] bool | None)` returns a dict:

    tokens      [B, N, D]  every output token after the final LayerNorm
                           (N = num_tokens + F'·T', extra tokens first)
    pooled      [B, D]     per `config.pooling`
    token_mask  [B, N]     True for tokens that hold signal (not zero padding)

  With `valid_frames`, patches made only of padding are excluded as attention
  keys and from patch pooling. With `patch_mask` (SSAST), masked patches'
  embeddings are replaced by the learned `mask_embed` before the position
  embeddings are added.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None, patch_mask=None):
    c = self.config
    if features.ndim != 3 or features.shape[1:] != (c.num_mel_bins, c.num_frames):
      raise ValueError(f"features must be [batch, {c.num_mel_bins}, {c.num_frames}], "
                       f"got {features.shape}")
    b = features.shape[0]
    gf, gt = c.grid
    patches = patchify(features, c.patch_size, c.freq_stride, c.time_stride)
    x = linear.Dense(c.width, (None,), ("embed",), dtype=c.dtype, param_dtype=c.param_dtype,
                     name="patch_embed")(patches.reshape(b, gf * gt, -1))
    if patch_mask is not None:
      mask_embed = self.param("mask_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed",)), (c.width,), c.param_dtype)
      x = jnp.where(patch_mask[..., None], mask_embed.astype(x.dtype), x)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.truncated_normal(0.02), (None, None, "embed")), (gf, gt, c.width),
        c.param_dtype)
    # The residual stream stays float32 whatever the compute dtype (as torch.autocast
    # does): block outputs in bf16 are added to it in float32, so rounding does not
    # accumulate over depth; only the LayerNorm outputs feeding the matmuls are bf16.
    x = x.astype(jnp.float32) + pos.reshape(gf * gt, c.width).astype(jnp.float32)
    if c.num_tokens:
      tokens = self.param("tokens", nn.with_logical_partitioning(
          nn.initializers.truncated_normal(0.02), (None, "embed")), (c.num_tokens, c.width),
          c.param_dtype)
      token_pos = self.param("token_pos_embed", nn.with_logical_partitioning(
          nn.initializers.truncated_normal(0.02), (None, "embed")), (c.num_tokens, c.width),
          c.param_dtype)
      extra = jnp.broadcast_to((tokens + token_pos).astype(jnp.float32), (b, c.num_tokens, c.width))
      x = jnp.concatenate([extra, x], axis=1)
    x = dropout.Dropout(c.dropout)(x, deterministic=not train)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    if valid_frames is None:
      token_mask = jnp.ones((b, c.length), bool)
      key_mask = None
    else:
      token_mask = jnp.concatenate(
          [jnp.ones((b, c.num_tokens), bool), patch_validity(valid_frames, c)], axis=1)
      key_mask = token_mask

    block = EncoderBlock
    if c.remat != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
    stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                    length=c.depth, unroll=c.scan_unroll,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(c, deterministic=not train, name="blocks")(x, key_mask)
    x = linear.layer_norm(c.layer_norm_eps, c.dtype, c.param_dtype, "norm")(x)

    if c.pooling == "tokens":
      pooled = x[:, :c.num_tokens].mean(axis=1)
    else:
      w = token_mask[:, c.num_tokens:, None].astype(x.dtype)
      pooled = (x[:, c.num_tokens:] * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1)
    return {"tokens": x, "pooled": pooled, "token_mask": token_mask}
