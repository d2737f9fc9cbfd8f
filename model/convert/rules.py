"""The mapping from PyTorch names and layouts to our parameter tree, as data.

`EMBEDDING_RULES` and `BLOCK_RULES` hold one row per target parameter and one
column per naming scheme, `TRANSFORMS` says how a PyTorch tensor becomes ours
(`Linear` weights are `[out, in]`, our kernels `[in, out]`; the 16x16
convolution is `[D, 1, freq, time]`, our patch kernel `[freq·time, D]`
frequency-major, which is the order both PyTorch models flatten patches and the
position grid in, since both transpose their `[time, freq]` input to
`[freq, time]` before the convolution). `LAYOUTS` names each source layout's
column, prefixes and defaults; `SIGNATURES` tells the layouts apart by key name.

Every transform also says how to undo it (`invert`), so the same table writes our
parameters back out as a PyTorch state dict (`eval.export_transformers`) instead of
a second, hand-written mapping that could drift from this one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

SOURCES = ("transformers", "ast", "ssast")


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one source tensor becomes (a part of) one target array.

  `shape` is the expected source shape in symbols (D width, M mlp_dim, P patch
  size, P2 = P², N free); `part_axis` is where the parts of a multi-source target
  (q/k/v into qkv, [CLS]/distillation into `tokens`) are stacked.
  """

  shape: tuple[str, ...]
  apply: Callable[[np.ndarray, Dims], np.ndarray]
  # Our (part of a) target array -> the source tensor: `invert(apply(w)) == w`. The
  # position table feeds two targets (pos_tokens, pos_grid); their inverses are its
  # rows `[1, n, D]`, to be joined along axis 1 in rule order (tokens first).
  invert: Callable[[np.ndarray, Dims], np.ndarray]
  part_axis: int = 0
  hint: str = ""


@dataclasses.dataclass(frozen=True)
class Dims:
  """The config's sizes that the symbols of `Transform.shape` stand for."""

  width: int
  heads: int
  mlp: int
  patch: int
  num_tokens: int
  grid: tuple[int, int]

  def resolve(self, symbol: str) -> int | None:
    return {"D": self.width, "3D": 3 * self.width, "M": self.mlp, "P": self.patch,
            "P2": self.patch ** 2, "1": 1, "N": None}[symbol]

  @property
  def head_dim(self) -> int:
    return self.width // self.heads


TRANSFORMS: dict[str, Transform] = {
    "vector": Transform(("D",), lambda w, d: w, lambda w, d: w),
    "mlp_vector": Transform(("M",), lambda w, d: w, lambda w, d: w),
    "patch_vector": Transform(("P2",), lambda w, d: w, lambda w, d: w),
    # nn.Linear weights are [out, in]; our kernels [in, out].
    "fc1": Transform(("M", "D"), lambda w, d: w.T, lambda w, d: w.T),
    "fc2": Transform(("D", "M"), lambda w, d: w.T, lambda w, d: w.T),
    "square": Transform(("D", "D"), lambda w, d: w.T, lambda w, d: w.T),
    "to_patch": Transform(("P2", "D"), lambda w, d: w.T, lambda w, d: w.T),
    # Heads are the major half of the projection's output index (h * K + k), as
    # in both PyTorch models' `.view(..., H, K)`.
    "heads_in": Transform(("D", "D"), lambda w, d: w.T.reshape(d.width, d.heads, d.head_dim),
                           lambda w, d: w.reshape(d.width, d.width).T, part_axis=1),
    "heads_bias": Transform(("D",), lambda w, d: w.reshape(d.heads, d.head_dim),
                             lambda w, d: w.reshape(d.width)),
    # timm's fused projection: output index s * D + h * K + k, s = q, k, v.
    "fused_qkv": Transform(("3D", "D"),
                            lambda w, d: w.T.reshape(d.width, 3, d.heads, d.head_dim),
                            lambda w, d: w.reshape(d.width, 3 * d.width).T),
    "fused_qkv_bias": Transform(("3D",), lambda w, d: w.reshape(3, d.heads, d.head_dim),
                                 lambda w, d: w.reshape(3 * d.width)),
    "heads_out": Transform(("D", "D"), lambda w, d: w.T.reshape(d.heads, d.head_dim, d.width),
                            lambda w, d: w.reshape(d.width, d.width).T),
    # Conv2d weight [D, 1, freq, time] -> [freq·time, D], frequency-major.
    "conv": Transform(("D", "1", "P", "P"), lambda w, d: w.reshape(d.width, -1).T,
                       lambda w, d: w.T.reshape(d.width, 1, d.patch, d.patch),
                       hint="our encoder takes one input channel and square patches (SSAST's "
                            "frame-based 128x2 checkpoints do not fit)"),
    "token": Transform(("1", "1", "D"), lambda w, d: w.reshape(d.width),
                        lambda w, d: w.reshape(1, 1, d.width)),
    # One [1, tokens + F'·T', D] table feeds two targets.
    "pos_tokens": Transform(("1", "N", "D"), lambda w, d: w[0, :d.num_tokens],
                             lambda w, d: w.reshape(1, d.num_tokens, d.width)),
    "pos_grid": Transform(("1", "N", "D"),
                           lambda w, d: w[0, d.num_tokens:].reshape(*d.grid, d.width),
                           lambda w, d: w.reshape(1, -1, d.width)),
}

# Columns of the tables below: one source name per naming scheme.
_HF5, _HF4, _TIMM = 0, 1, 2

# target               transform   part  transformers 5.x / 4.x / timm (AST, SSAST)
EMBEDDING_RULES = (
    ("patch_embed/kernel", "conv", None, ("embeddings.patch_embeddings.projection.weight",
                                          "embeddings.patch_embeddings.projection.weight",
                                          "v.patch_embed.proj.weight")),
    ("patch_embed/bias", "vector", None, ("embeddings.patch_embeddings.projection.bias",
                                          "embeddings.patch_embeddings.projection.bias",
                                          "v.patch_embed.proj.bias")),
    ("tokens", "token", 0, ("embeddings.cls_token", "embeddings.cls_token", "v.cls_token")),
    ("tokens", "token", 1, ("embeddings.distillation_token", "embeddings.distillation_token",
                            "v.dist_token")),
    ("token_pos_embed", "pos_tokens", None, ("embeddings.position_embeddings",
                                             "embeddings.position_embeddings", "v.pos_embed")),
    ("pos_embed", "pos_grid", None, ("embeddings.position_embeddings",
                                     "embeddings.position_embeddings", "v.pos_embed")),
    ("norm/scale", "vector", None, ("layernorm.weight", "layernorm.weight", "v.norm.weight")),
    ("norm/bias", "vector", None, ("layernorm.bias", "layernorm.bias", "v.norm.bias")),
)

# Per layer, relative to the layer prefix; targets under `blocks/`, stacked on layers.
BLOCK_RULES = (
    ("norm1/scale", "vector", None, ("layernorm_before.weight", "layernorm_before.weight",
                                     "norm1.weight")),
    ("norm1/bias", "vector", None, ("layernorm_before.bias", "layernorm_before.bias",
                                    "norm1.bias")),
    ("attn/qkv/kernel", "heads_in", 0, ("attention.q_proj.weight",
                                        "attention.attention.query.weight", None)),
    ("attn/qkv/kernel", "heads_in", 1, ("attention.k_proj.weight",
                                        "attention.attention.key.weight", None)),
    ("attn/qkv/kernel", "heads_in", 2, ("attention.v_proj.weight",
                                        "attention.attention.value.weight", None)),
    ("attn/qkv/bias", "heads_bias", 0, ("attention.q_proj.bias",
                                        "attention.attention.query.bias", None)),
    ("attn/qkv/bias", "heads_bias", 1, ("attention.k_proj.bias",
                                        "attention.attention.key.bias", None)),
    ("attn/qkv/bias", "heads_bias", 2, ("attention.v_proj.bias",
                                        "attention.attention.value.bias", None)),
    ("attn/qkv/kernel", "fused_qkv", None, (None, None, "attn.qkv.weight")),
    ("attn/qkv/bias", "fused_qkv_bias", None, (None, None, "attn.qkv.bias")),
    ("attn/out/kernel", "heads_out", None, ("attention.o_proj.weight",
                                            "attention.output.dense.weight", "attn.proj.weight")),
    ("attn/out/bias", "vector", None, ("attention.o_proj.bias", "attention.output.dense.bias",
                                       "attn.proj.bias")),
    ("norm2/scale", "vector", None, ("layernorm_after.weight", "layernorm_after.weight",
                                     "norm2.weight")),
    ("norm2/bias", "vector", None, ("layernorm_after.bias", "layernorm_after.bias", "norm2.bias")),
    ("mlp/fc1/kernel", "fc1", None, ("mlp.fc1.weight", "intermediate.dense.weight",
                                     "mlp.fc1.weight")),
    ("mlp/fc1/bias", "mlp_vector", None, ("mlp.fc1.bias", "intermediate.dense.bias",
                                          "mlp.fc1.bias")),
    ("mlp/fc2/kernel", "fc2", None, ("mlp.fc2.weight", "output.dense.weight", "mlp.fc2.weight")),
    ("mlp/fc2/bias", "vector", None, ("mlp.fc2.bias", "output.dense.bias", "mlp.fc2.bias")),
)

# SSAST's parameters beside the encoder (Linear-ReLU-Linear heads, D -> D -> 256 = 16²).
_SSAST_RULES = (
    ("encoder/mask_embed", "token", None, "mask_embed"),
    ("discriminative/fc1/kernel", "square", None, "cpredlayer.0.weight"),
    ("discriminative/fc1/bias", "vector", None, "cpredlayer.0.bias"),
    ("discriminative/fc2/kernel", "to_patch", None, "cpredlayer.2.weight"),
    ("discriminative/fc2/bias", "patch_vector", None, "cpredlayer.2.bias"),
    ("generative/fc1/kernel", "square", None, "gpredlayer.0.weight"),
    ("generative/fc1/bias", "vector", None, "gpredlayer.0.bias"),
    ("generative/fc2/kernel", "to_patch", None, "gpredlayer.2.weight"),
    ("generative/fc2/bias", "patch_vector", None, "gpredlayer.2.bias"),
)


@dataclasses.dataclass(frozen=True)
class Layout:
  """One source layout: which column of the rules it reads, and where its keys and ours sit."""

  source: str
  naming: str
  column: int
  layer_prefix: str  # "{i}" = layer index
  key_prefix: str  # optional per-key prefix to strip (the task model's base model)
  encoder_prefix: str  # where the encoder lands in our tree
  extra_rules: tuple = ()
  # SSAST stores its pre-training input size; with stride = patch it fixes the grid.
  input_size_keys: tuple[str, str] | None = None
  layer_norm_eps: float = 1e-6  # the source's LayerNorm epsilon (not stored in the weights)


LAYOUTS = {
    "transformers-5": Layout("transformers", "transformers 5.x", _HF5, "layers.{i}.",
                             "audio_spectrogram_transformer.", "", layer_norm_eps=1e-12),
    "transformers-4": Layout("transformers", "transformers 4.x", _HF4, "encoder.layer.{i}.",
                             "audio_spectrogram_transformer.", "", layer_norm_eps=1e-12),
    "ast": Layout("ast", "timm (AST)", _TIMM, "v.blocks.{i}.", "", "",
                  input_size_keys=("p_input_fdim", "p_input_tdim")),
    "ssast": Layout("ssast", "timm (SSAST)", _TIMM, "v.blocks.{i}.", "", "encoder/",
                    extra_rules=_SSAST_RULES, input_size_keys=("p_input_fdim", "p_input_tdim")),
}

# Detection: a key that only layout has, checked in order.
SIGNATURES = (
    ("ssast", re.compile(r"^(mask_embed$|cpredlayer\.|gpredlayer\.)")),
    ("ast", re.compile(r"^v\.patch_embed\.proj\.weight$")),
    ("transformers-4", re.compile(r"^(audio_spectrogram_transformer\.)?encoder\.layer\.\d+\.")),
    ("transformers-5", re.compile(r"^(audio_spectrogram_transformer\.)?layers\.\d+\.")),
)
