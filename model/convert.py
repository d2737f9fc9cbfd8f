"""Import PyTorch AST / SSAST weights into `model.ast` parameters.

Why: the encoder is only worth fine-tuning on PercePiano's ~1200 clips if it
starts from weights that already hear audio: AudioSet-trained AST (the
`MIT/ast-finetuned-audioset-*` hub checkpoints, or the original repository's
`.pth` files) or SSAST self-supervised checkpoints. All are PyTorch; this module
maps their state dicts onto the parameter tree that `model/ast.py`'s docstring
fixes, so a converted checkpoint computes the same function in Flax (the tests
compare against `transformers.ASTModel` to 1e-4).

Source layouts (detected from the key names, or named with `source=`):

  transformers  `ASTModel` / `ASTForAudioClassification` (prefix
                `audio_spectrogram_transformer.`, `classifier.*` unused), with
                either the 5.x names (`layers.{i}.attention.q_proj`, ...) or
                the 4.x names that hub checkpoints still carry
                (`encoder.layer.{i}.attention.attention.query`, ...).
  ast           github.com/YuanGongND/ast: timm DeiT names under `module.v.`
                (fused `attn.qkv`), `module.mlp_head.*` unused.
  ssast         github.com/YuanGongND/ssast: the same encoder names plus
                `module.mask_embed` and the pre-training heads `cpredlayer`
                (discriminative) and `gpredlayer` (generative); converted to
                `{"encoder": ..., "discriminative": ..., "generative": ...}`,
                the tree of `model.ssast.SSAST`.

The mapping is data: `_EMBEDDING_RULES` and `_BLOCK_RULES` hold one row per
target parameter and one column per naming scheme, `_TRANSFORMS` says how a
PyTorch tensor becomes ours (`Linear` weights are `[out, in]`, our kernels
`[in, out]`; the 16x16 convolution is `[D, 1, freq, time]`, our patch kernel
`[freq·time, D]` frequency-major, which is the order both PyTorch models
flatten patches and the position grid in, since both transpose their
`[time, freq]` input to `[freq, time]` before the convolution).

What the weights cannot say comes from the `ast.EncoderConfig`: the number of
heads (a `[D, D]` projection splits into any divisor of D), and which patch grid
the position embeddings are laid out in when their length does not match the
config's grid. Everything the weights do say (width, depth, MLP size, patch
size, token count) is checked against the config, and a mismatch raises a
`ConversionError` naming the key. A position embedding for a different grid is
returned at its own grid (`report.pos_embed_grid`) for the caller to resize
(`model.posemb.resize_grid`).

Safety: `load_state_dict` reads safetensors, or pickles only through
`torch.load(weights_only=True)`; a pickle that needs anything beyond tensors is
refused, never executed.

Typical use:

  state = convert.load_state_dict("ast-audioset.safetensors")
  config = convert.infer_config(state, heads=12)  # or an EncoderConfig of your own
  converted, report = convert.convert(state, config)
  variables = ast.Encoder(config).init(rng, features)
  params = convert.merge_into(variables["params"], converted)  # keeps the boxes

`merge_into` keeps each `nn.LogicallyPartitioned` box (so the trainer can still
derive shardings) and says which paths or shapes disagree. With identical
structures, `flax.linen.meta.replace_boxed(variables["params"], converted)` does
the same without the checks, and `flax.linen.meta.unbox(params)` drops the
boxes. SSAST's `mask_embed` only exists in a tree initialised with a
`patch_mask`. Command line:

  python -m model.convert --input FILE --output DIR --heads 12 \
      [--source auto|transformers|ast|ssast]
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from model import ast

SOURCES = ("transformers", "ast", "ssast")

_SAFETENSORS_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Keys under which training scripts nest the state dict in a checkpoint.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")


class ConversionError(ValueError):
  """Base class: the weights cannot be turned into our parameters."""


class CheckpointNotFoundError(ConversionError, FileNotFoundError):
  """The checkpoint file does not exist."""


class UnknownFormatError(ConversionError):
  """The file extension, or the key layout of the state dict, is not one we read."""


class UnsafeCheckpointError(ConversionError):
  """The pickle holds Python objects or code besides tensors; we refuse to unpickle it."""


class CorruptCheckpointError(ConversionError):
  """The file has a supported extension but cannot be decoded."""


class ShapeMismatchError(ConversionError):
  """A tensor's shape does not match what the config implies."""


class ConfigMismatchError(ConversionError):
  """A property of the weights (depth, token count, grid) contradicts the config."""


class MissingWeightsError(ConversionError):
  """Target parameters have no source tensor (raised when `strict=True`)."""


class StructureMismatchError(ConversionError):
  """`merge_into`: the converted tree does not fit the initialised one."""


# --------------------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` or PyTorch (`.bin`, `.pt`, `.pth`) file into numpy arrays.

  Pickles go through `torch.load(weights_only=True)` only: PyTorch's restricted
  unpickler rebuilds tensors and plain containers and refuses any other global,
  so a checkpoint cannot run code here. `{"state_dict": ...}` / `{"model": ...}`
  wrappers are unwrapped; a DataParallel `module.` prefix is left for the
  mapping to strip. bfloat16 tensors become float32.

  Raises:
    CheckpointNotFoundError, UnknownFormatError, UnsafeCheckpointError,
    CorruptCheckpointError.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
  if path.is_dir():
    raise UnknownFormatError(f"{path} is a directory; pass the weights file inside it "
                             "(e.g. model.safetensors or pytorch_model.bin)")
  suffix = path.suffix.lower()
  if suffix in _SAFETENSORS_SUFFIXES:
    raw = _load_safetensors(path)
  elif suffix in _PICKLE_SUFFIXES:
    raw = _unwrap(_load_pickle(path), path)
  else:
    raise UnknownFormatError(
        f"{path}: unknown checkpoint extension {path.suffix!r}; expected one of "
        f"{', '.join(_SAFETENSORS_SUFFIXES + _PICKLE_SUFFIXES)}")
  return {key: _to_numpy(value, key) for key, value in raw.items()}


def _load_safetensors(path: pathlib.Path) -> Mapping[str, Any]:
  try:
    import safetensors.numpy
  except ImportError as e:
    raise ConversionError(f"{path}: reading .safetensors needs the `safetensors` package") from e
  try:
    return safetensors.numpy.load_file(str(path))
  except TypeError:
    # numpy cannot represent bfloat16; torch can, then `_to_numpy` upcasts.
    import safetensors.torch
    return safetensors.torch.load_file(str(path))
  except Exception as e:  # safetensors raises its own SafetensorError (no public base class)
    raise CorruptCheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _load_pickle(path: pathlib.Path) -> Any:
  try:
    import torch
  except ImportError as e:
    raise ConversionError(f"{path}: reading PyTorch pickles needs `torch`; "
                          "or convert the file to .safetensors elsewhere") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # The restricted unpickler cannot tell a hostile pickle from a foreign one
    # (e.g. protocol-4 `pickle.dump` output): both hold more than torch.save writes.
    raise UnsafeCheckpointError(
        f"{path}: the file contains Python objects or code besides tensors (or is not a "
        "torch.save checkpoint), and we refuse to unpickle it: torch.load with "
        f"weights_only=True refused it ({_unpickler_reason(e)}). Re-save the weights as "
        ".safetensors, or as a plain tensor state dict, where you trust the file.") from e
  except Exception as e:  # torch raises KeyError, EOFError, RuntimeError... for damaged files
    raise CorruptCheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                 f"({type(e).__name__}: {e})") from e


def _unpickler_reason(error: Exception) -> str:
  """The part of torch's long refusal message that says what was refused."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  marker = "WeightsUnpickler error:"
  for i, line in enumerate(lines):
    if marker in line:
      reason = line.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
      if reason:
        return reason.split(". ")[0].rstrip(".")
  return lines[0] if lines else type(error).__name__


def _is_tensor(value: Any) -> bool:
  return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _unwrap(obj: Any, path: pathlib.Path) -> Mapping[str, Any]:
  while (isinstance(obj, Mapping) and not all(_is_tensor(v) for v in obj.values())
         and any(isinstance(obj.get(k), Mapping) for k in _CONTAINER_KEYS)):
    obj = next(obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping))
  if not isinstance(obj, Mapping):
    raise UnknownFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  others = [k for k, v in obj.items() if not _is_tensor(v)]
  if others:
    raise UnknownFormatError(f"{path}: not a state dict of tensors; non-tensor entries: "
                             f"{others[:5]}")
  return obj


def _to_numpy(value: Any, key: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    # safetensors.numpy yields ml_dtypes' bfloat16 when JAX has registered it;
    # numpy's own routines do not treat it as floating point.
    if not np.issubdtype(value.dtype, np.floating) and jnp.issubdtype(value.dtype, jnp.floating):
      return value.astype(np.float32)
    return value
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point() and str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  try:
    return np.asarray(value)
  except Exception as e:
    raise ConversionError(f"{key}: cannot read a {type(value).__name__} as an array") from e


# --------------------------------------------------------------------------- mapping tables


@dataclasses.dataclass(frozen=True)
class _Transform:
  """How one source tensor becomes (a part of) one target array.

  `shape` is the expected source shape in symbols (D width, M mlp_dim, P patch
  size, P2 = P², N free); `part_axis` is where the parts of a multi-source target
  (q/k/v into qkv, [CLS]/distillation into `tokens`) are stacked.
  """

  shape: tuple[str, ...]
  apply: Callable[[np.ndarray, _Dims], np.ndarray]
  part_axis: int = 0
  hint: str = ""


@dataclasses.dataclass(frozen=True)
class _Dims:
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


_TRANSFORMS: dict[str, _Transform] = {
    "vector": _Transform(("D",), lambda w, d: w),
    "mlp_vector": _Transform(("M",), lambda w, d: w),
    "patch_vector": _Transform(("P2",), lambda w, d: w),
    # nn.Linear weights are [out, in]; our kernels [in, out].
    "fc1": _Transform(("M", "D"), lambda w, d: w.T),
    "fc2": _Transform(("D", "M"), lambda w, d: w.T),
    "square": _Transform(("D", "D"), lambda w, d: w.T),
    "to_patch": _Transform(("P2", "D"), lambda w, d: w.T),
    # Heads are the major half of the projection's output index (h * K + k), as
    # in both PyTorch models' `.view(..., H, K)`.
    "heads_in": _Transform(("D", "D"), lambda w, d: w.T.reshape(d.width, d.heads, d.head_dim),
                           part_axis=1),
    "heads_bias": _Transform(("D",), lambda w, d: w.reshape(d.heads, d.head_dim)),
    # timm's fused projection: output index s * D + h * K + k, s = q, k, v.
    "fused_qkv": _Transform(("3D", "D"),
                            lambda w, d: w.T.reshape(d.width, 3, d.heads, d.head_dim)),
    "fused_qkv_bias": _Transform(("3D",), lambda w, d: w.reshape(3, d.heads, d.head_dim)),
    "heads_out": _Transform(("D", "D"), lambda w, d: w.T.reshape(d.heads, d.head_dim, d.width)),
    # Conv2d weight [D, 1, freq, time] -> [freq·time, D], frequency-major.
    "conv": _Transform(("D", "1", "P", "P"), lambda w, d: w.reshape(d.width, -1).T,
                       hint="our encoder takes one input channel and square patches (SSAST's "
                            "frame-based 128x2 checkpoints do not fit)"),
    "token": _Transform(("1", "1", "D"), lambda w, d: w.reshape(d.width)),
    # One [1, tokens + F'·T', D] table feeds two targets.
    "pos_tokens": _Transform(("1", "N", "D"), lambda w, d: w[0, :d.num_tokens]),
    "pos_grid": _Transform(("1", "N", "D"),
                           lambda w, d: w[0, d.num_tokens:].reshape(*d.grid, d.width)),
}

# Columns of the tables below: one source name per naming scheme.
_HF5, _HF4, _TIMM = 0, 1, 2

# target               transform   part  transformers 5.x / 4.x / timm (AST, SSAST)
_EMBEDDING_RULES = (
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
_BLOCK_RULES = (
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
class _Layout:
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


_LAYOUTS = {
    "transformers-5": _Layout("transformers", "transformers 5.x", _HF5, "layers.{i}.",
                              "audio_spectrogram_transformer.", "", layer_norm_eps=1e-12),
    "transformers-4": _Layout("transformers", "transformers 4.x", _HF4, "encoder.layer.{i}.",
                              "audio_spectrogram_transformer.", "", layer_norm_eps=1e-12),
    "ast": _Layout("ast", "timm (AST)", _TIMM, "v.blocks.{i}.", "", "",
                   input_size_keys=("p_input_fdim", "p_input_tdim")),
    "ssast": _Layout("ssast", "timm (SSAST)", _TIMM, "v.blocks.{i}.", "", "encoder/",
                     extra_rules=_SSAST_RULES, input_size_keys=("p_input_fdim", "p_input_tdim")),
}

# Detection: a key that only layout has, checked in order.
_SIGNATURES = (
    ("ssast", re.compile(r"^(mask_embed$|cpredlayer\.|gpredlayer\.)")),
    ("ast", re.compile(r"^v\.patch_embed\.proj\.weight$")),
    ("transformers-4", re.compile(r"^(audio_spectrogram_transformer\.)?encoder\.layer\.\d+\.")),
    ("transformers-5", re.compile(r"^(audio_spectrogram_transformer\.)?layers\.\d+\.")),
)


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
  """What `convert` did. Source names are as in the given state dict.

  `missing` maps each target path that could not be built to the source names
  it needed (after the `module.` / `audio_spectrogram_transformer.` prefixes are
  stripped); such targets are absent from the returned tree.
  """

  source: str
  naming: str
  loaded: list[str]
  unused: list[str]
  missing: dict[str, list[str]]
  num_tokens: int
  pos_embed_grid: tuple[int, int] | None
  config_grid: tuple[int, int]
  notes: list[str]

  @property
  def resize_needed(self) -> bool:
    """True when `pos_embed` is not at the config's grid (resize before merging)."""
    return self.pos_embed_grid is not None and tuple(self.pos_embed_grid) != tuple(self.config_grid)

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "resize_needed": self.resize_needed}


# --------------------------------------------------------------------------- conversion


def detect_source(state_dict: Mapping[str, Any]) -> str:
  """`"transformers"`, `"ast"` or `"ssast"`, from the key names."""
  return _LAYOUTS[_detect_layout(_strip_module(state_dict))].source


def convert(state_dict: Mapping[str, Any], config: ast.EncoderConfig, source: str | None = None,
            *, pos_grid: tuple[int, int] | None = None,
            strict: bool = False) -> tuple[dict[str, Any], Report]:
  """Converts a PyTorch AST/SSAST state dict to our parameters (float32 numpy).

  Args:
    state_dict: name -> tensor (torch or numpy), e.g. from `load_state_dict`.
    config: our encoder config; `heads` is taken from it, the rest is checked.
    source: "transformers", "ast" or "ssast"; None detects it from the names.
    pos_grid: the (F', T') layout of the position embeddings, when they are
      neither at the config's grid nor at the same frequency extent.
    strict: raise `MissingWeightsError` instead of reporting missing targets.

  Returns:
    `(params, report)`: the encoder tree (for "ssast": `{"encoder",
    "discriminative", "generative"}`), and a `Report`.
  """
  stripped = _strip_module(state_dict)
  return _convert(state_dict, stripped, config, _select_layout(stripped, source), pos_grid,
                  strict)


def from_transformers(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """`transformers` ASTModel / ASTForAudioClassification, 4.x or 5.x names."""
  return convert(state_dict, config, "transformers", **kwargs)


def from_ast(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """The original AST repository's checkpoints (`module.v.*`)."""
  return convert(state_dict, config, "ast", **kwargs)


def from_ssast(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """SSAST pre-training checkpoints: encoder, mask embedding and both heads."""
  return convert(state_dict, config, "ssast", **kwargs)


def _strip_module(state_dict: Mapping[str, Any]) -> dict[str, str]:
  """normalised name -> original name, without DataParallel's `module.` prefix."""
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    return {k[len("module."):]: k for k in keys}
  return {k: k for k in keys}


def _select_layout(stripped: Mapping[str, str], source: str | None) -> _Layout:
  """The layout `source` names, checked against the keys (None: detected)."""
  detected = _LAYOUTS[_detect_layout(stripped)]
  if source is None:
    return detected
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES} or None, got {source!r}")
  # AST and SSAST share the encoder names: either reading of the other is allowed
  # (SSAST's heads are then unused, or reported missing).
  if (source == "transformers") != (detected.source == "transformers"):
    raise UnknownFormatError(f"source={source!r} but the keys are in the {detected.naming} "
                             "layout")
  return detected if source == "transformers" else _LAYOUTS[source]


def _detect_layout(names: Mapping[str, str]) -> str:
  for layout, signature in _SIGNATURES:
    if any(signature.search(n) for n in names):
      return layout
  sample = sorted(names)[:8]
  raise UnknownFormatError("state dict is not in a layout we know (transformers AST, original "
                           f"AST, SSAST); first keys: {sample}")


def _normalise(stripped: Mapping[str, str], layout: _Layout) -> dict[str, str]:
  """Also strips the task model's base-model prefix (ASTForAudioClassification)."""
  if not layout.key_prefix:
    return dict(stripped)
  out: dict[str, str] = {}
  for name, original in stripped.items():
    short = name[len(layout.key_prefix):] if name.startswith(layout.key_prefix) else name
    if short in out:
      raise ConversionError(f"ambiguous state dict: both {out[short]!r} and {original!r} "
                            f"name {short!r}")
    out[short] = original
  return out


def _count_layers(names: Mapping[str, str], layout: _Layout) -> int:
  before, after = layout.layer_prefix.split("{i}")
  pattern = re.compile(f"^{re.escape(before)}(\\d+){re.escape(after)}")
  indices = {int(m.group(1)) for n in names if (m := pattern.match(n))}
  return max(indices) + 1 if indices else 0


def _expanded_rules(layout: _Layout, depth: int, tokens: int):
  """(target, transform, part, layer | None, source name) over the whole model."""
  for target, transform, part, names in _EMBEDDING_RULES:
    if (target == "tokens" and part >= tokens) or (target == "token_pos_embed" and not tokens):
      continue  # token rows the checkpoint (and config) do not have
    if names[layout.column] is not None:
      yield layout.encoder_prefix + target, transform, part, None, names[layout.column]
  for i in range(depth):
    prefix = layout.layer_prefix.format(i=i)
    for target, transform, part, names in _BLOCK_RULES:
      if names[layout.column] is not None:
        yield (layout.encoder_prefix + "blocks/" + target, transform, part, i,
               prefix + names[layout.column])
  for target, transform, part, name in layout.extra_rules:
    yield target, transform, part, None, name


def _source_name(rules, target: str, layout: _Layout, part: int | None = None) -> str:
  """The table entry for `target` in `layout`'s naming (block rules: layer 0)."""
  for t, _, p, names in rules:
    if t == target and p == part and names[layout.column] is not None:
      prefix = layout.layer_prefix.format(i=0) if rules is _BLOCK_RULES else ""
      return prefix + names[layout.column]
  raise KeyError(target)


def _token_names(layout: _Layout) -> tuple[str, str, str]:
  """Source names of the [CLS] token, distillation token and position table."""
  return (_source_name(_EMBEDDING_RULES, "tokens", layout, 0),
          _source_name(_EMBEDDING_RULES, "tokens", layout, 1),
          _source_name(_EMBEDDING_RULES, "pos_embed", layout))


def _grid_patches(grid: tuple[int, int]) -> int:
  return grid[0] * grid[1]


def _input_size_grid(state_dict, names, layout: _Layout) -> tuple[int, int] | None:
  """SSAST's pre-training grid: input size with stride = kernel (no overlap)."""
  if layout.input_size_keys is None or not all(k in names for k in layout.input_size_keys):
    return None
  conv = names.get(_source_name(_EMBEDDING_RULES, "patch_embed/kernel", layout))
  if conv is None or np.ndim(state_dict[conv]) != 4:
    return None
  kf, kt = np.shape(state_dict[conv])[2:]
  fdim, tdim = (int(np.asarray(_to_numpy(state_dict[names[k]], k))) for k in layout.input_size_keys)
  return (ast.grid_size(fdim, kf, kf), ast.grid_size(tdim, kt, kt))


def _tokens_and_grid(
    state_dict, names, layout: _Layout, config: ast.EncoderConfig,
    pos_grid: tuple[int, int] | None) -> tuple[int, tuple[int, int] | None, list[str]]:
  """Extra-token count and position grid, from which token parameters exist and the
  position table's length (tokens + F'·T')."""
  cls_name, dist_name, pos_name = _token_names(layout)
  has_cls, has_dist = cls_name in names, dist_name in names
  if has_dist and not has_cls:
    raise ConfigMismatchError(f"{names[dist_name]} exists without a [CLS] token ({cls_name})")
  tokens = int(has_cls) + int(has_dist)
  token_keys = [names[n] for n in (cls_name, dist_name) if n in names]
  if pos_name not in names:
    return tokens, None, []
  key = names[pos_name]
  shape = np.shape(state_dict[key])
  if len(shape) != 3 or shape[0] != 1 or shape[2] != config.width:
    raise ShapeMismatchError(f"{key}: shape {tuple(shape)}, expected (1, tokens + F'·T', width) "
                             f"= (1, N, {config.width})")
  length = shape[1]
  if pos_grid is not None:
    pos_grid = tuple(int(g) for g in pos_grid)
    if length - _grid_patches(pos_grid) != tokens:
      raise ConfigMismatchError(
          f"{key} has {length} rows; pos_grid {pos_grid[0]}x{pos_grid[1]} with the "
          f"{tokens} token(s) {token_keys} needs {tokens + _grid_patches(pos_grid)}")
    return tokens, pos_grid, []
  hint = _input_size_grid(state_dict, names, layout)
  for label, grid in (("the config", config.grid), ("the pre-training input size", hint)):
    if grid is not None and length - _grid_patches(grid) == tokens:
      notes = [] if label == "the config" else [
          f"position grid {grid[0]}x{grid[1]} taken from {label} "
          f"({', '.join(names[k] for k in layout.input_size_keys)})"]
      return tokens, grid, notes
  patches = length - tokens
  if patches > 0 and patches % config.grid[0] == 0:
    grid = (config.grid[0], patches // config.grid[0])
    return tokens, grid, [f"{key}: {patches} patches laid out as {grid[0]}x{grid[1]}, assuming "
                          f"the config's {config.grid[0]} frequency rows (pass pos_grid= "
                          "otherwise)"]
  config_tokens = length - config.num_patches
  if 0 <= config_tokens <= 2:
    raise ConfigMismatchError(
        f"{key} has {length} rows: the config grid {config.grid[0]}x{config.grid[1]} "
        f"({config.num_patches} patches) leaves {config_tokens} token row(s), but the "
        f"checkpoint has {tokens} token parameter(s) {token_keys}")
  raise ConfigMismatchError(
      f"{key} has {length} rows ({tokens} token(s) + {patches} patches), which fit neither "
      f"the config grid {config.grid[0]}x{config.grid[1]} nor {config.grid[0]} frequency rows; "
      "pass pos_grid=(F', T')")


def _convert(state_dict, stripped, config: ast.EncoderConfig, layout: _Layout, pos_grid,
             strict: bool) -> tuple[dict[str, Any], Report]:
  names = _normalise(stripped, layout)
  depth = _count_layers(names, layout)
  if depth != config.depth:
    raise ConfigMismatchError(f"the checkpoint has {depth} layers "
                              f"({layout.layer_prefix.format(i='N')}*), config.depth is "
                              f"{config.depth}")
  # The patch embedding first: its shape names width and patch size together.
  conv_name = _source_name(_EMBEDDING_RULES, "patch_embed/kernel", layout)
  if conv_name in names:
    _check_shape(names[conv_name], _to_numpy(state_dict[names[conv_name]], conv_name),
                 _TRANSFORMS["conv"], _Dims(config.width, config.heads, config.mlp_dim,
                                            config.patch_size, 0, config.grid))
  tokens, grid, notes = _tokens_and_grid(state_dict, names, layout, config, pos_grid)
  if tokens != config.num_tokens:
    raise ConfigMismatchError(
        f"the checkpoint has {tokens} extra token(s) ([CLS]"
        f"{' + distillation' if tokens == 2 else ''}); config.num_tokens is "
        f"{config.num_tokens}: use num_tokens={tokens}")
  if grid is not None and grid != config.grid:
    notes.append(f"pos_embed is returned at the checkpoint's grid {grid[0]}x{grid[1]}; the "
                 f"config's grid is {config.grid[0]}x{config.grid[1]}: resize it "
                 "(model.posemb.resize_grid) before merging")
  dims = _Dims(config.width, config.heads, config.mlp_dim, config.patch_size, tokens,
               grid or config.grid)

  pieces: dict[str, dict[tuple[int | None, int | None], np.ndarray]] = {}
  part_axes: dict[str, int] = {}
  missing: dict[str, list[str]] = {}
  used: set[str] = set()
  for target, transform_name, part, layer, name in _expanded_rules(layout, depth, tokens):
    transform = _TRANSFORMS[transform_name]
    slots = pieces.setdefault(target, {})
    part_axes[target] = transform.part_axis
    if name not in names:
      missing.setdefault(target, []).append(name)
      continue
    key = names[name]
    value = _to_numpy(state_dict[key], key)
    _check_shape(key, value, transform, dims)
    slots[(layer, part)] = transform.apply(value.astype(np.float32), dims)
    used.add(key)

  params: dict[str, Any] = {}
  for target, slots in pieces.items():
    if target in missing:
      continue
    _set(params, target, _assemble(slots, part_axes[target]))
  if strict and missing:
    raise MissingWeightsError(f"no source tensor for {len(missing)} target(s): "
                              f"{_describe_missing(missing)}")
  report = Report(
      source=layout.source, naming=layout.naming, loaded=sorted(used),
      unused=sorted(k for k in state_dict if k not in used), missing=missing,
      num_tokens=tokens, pos_embed_grid=None if grid is None else tuple(grid),
      config_grid=tuple(config.grid), notes=notes)
  return params, report


def _check_shape(key: str, value: np.ndarray, transform: _Transform, dims: _Dims) -> None:
  if not np.issubdtype(value.dtype, np.floating):
    raise ShapeMismatchError(f"{key}: dtype {value.dtype}, expected floating point")
  expected = tuple(dims.resolve(s) for s in transform.shape)
  if len(value.shape) != len(expected) or any(
      e is not None and e != s for e, s in zip(expected, value.shape)):
    shown = tuple("N" if e is None else e for e in expected)
    symbols = {"D": "width", "3D": "3·width", "M": "mlp_dim", "P": "patch_size",
               "P2": "patch_size²", "1": "1", "N": "N"}
    raise ShapeMismatchError(
        f"{key}: shape {tuple(value.shape)}, expected "
        f"({', '.join(symbols[s] for s in transform.shape)}) = {shown} from the config"
        + (f"; {transform.hint}" if transform.hint else ""))


def _assemble(slots: dict[tuple[int | None, int | None], np.ndarray], part_axis: int) -> np.ndarray:
  layers = sorted({layer for layer, _ in slots}, key=lambda x: -1 if x is None else x)
  parts = sorted({part for _, part in slots}, key=lambda x: -1 if x is None else x)

  def one_layer(layer):
    if parts == [None]:
      return slots[layer, None]
    return np.stack([slots[layer, p] for p in parts], axis=part_axis)

  value = one_layer(None) if layers == [None] else np.stack([one_layer(i) for i in layers])
  return np.ascontiguousarray(value, dtype=np.float32)


def _set(tree: dict[str, Any], path: str, value: np.ndarray) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _describe_missing(missing: Mapping[str, list[str]], limit: int = 8) -> str:
  items = [f"{t} (needs {', '.join(s[:3])}{', ...' if len(s) > 3 else ''})"
           for t, s in list(missing.items())[:limit]]
  return "; ".join(items) + ("; ..." if len(missing) > limit else "")


# --------------------------------------------------------------------------- config inference


def infer_config(state_dict: Mapping[str, Any], heads: int, source: str | None = None,
                 **overrides) -> ast.EncoderConfig:
  """The `EncoderConfig` the weights describe, for the command line.

  Width, depth, MLP size, patch size and token count come from the shapes; the
  strides from the position grid (SSAST: its pre-training input size, where
  stride = patch) for `num_mel_bins` x `num_frames` input (overridable, default
  128 x 1024); the LayerNorm epsilon is the source's default (transformers
  1e-12, timm 1e-6) since it is not stored. `heads` cannot be inferred. Any
  `EncoderConfig` field in `overrides` wins.
  """
  stripped = _strip_module(state_dict)
  layout = _select_layout(stripped, source)
  names = _normalise(stripped, layout)
  conv_name = _source_name(_EMBEDDING_RULES, "patch_embed/kernel", layout)
  fc1_name = _source_name(_BLOCK_RULES, "mlp/fc1/kernel", layout)
  for needed in (conv_name, fc1_name):
    if needed not in names:
      raise MissingWeightsError(f"cannot infer the config without {needed}")
  conv = np.shape(state_dict[names[conv_name]])
  if len(conv) != 4 or conv[1] != 1 or conv[2] != conv[3]:
    raise ShapeMismatchError(f"{names[conv_name]}: shape {tuple(conv)}, expected (width, 1, "
                             f"patch_size, patch_size); {_TRANSFORMS['conv'].hint}")
  width, patch = conv[0], conv[2]
  fields: dict[str, Any] = dict(
      width=width, heads=heads, depth=_count_layers(names, layout),
      mlp_dim=np.shape(state_dict[names[fc1_name]])[0], patch_size=patch,
      layer_norm_eps=layout.layer_norm_eps)
  cls_name, dist_name, pos_name = _token_names(layout)
  tokens = int(cls_name in names) + int(dist_name in names)
  fields.update(num_tokens=tokens, pooling="tokens" if tokens else "patches")
  if layout.source == "ssast":
    fields["pooling"] = "patches"  # SSAST's fine-tuning default: mean of the patch tokens
  fields.update(overrides)
  mel = fields.setdefault("num_mel_bins", 128)
  frames = fields.setdefault("num_frames", 1024)
  if ("freq_stride" not in overrides or "time_stride" not in overrides) and pos_name in names:
    if _input_size_grid(state_dict, names, layout) is not None:
      strides = (patch, patch)
    else:
      strides = _infer_strides(np.shape(state_dict[names[pos_name]])[1] - tokens, mel, frames,
                               patch)
    fields.setdefault("freq_stride", strides[0])
    fields.setdefault("time_stride", strides[1])
  return ast.EncoderConfig(**{k: (int(v) if isinstance(v, np.integer) else v)
                              for k, v in fields.items()})


def _infer_strides(patches: int, mel: int, frames: int, patch: int) -> tuple[int, int]:
  """Strides whose grid over `mel` x `frames` has `patches` patches.

  Several strides can give the same grid ((128 - 16) // s + 1 = 8 for s = 15
  and 16); equal strides are preferred, then the largest (least overlap).
  """
  count = lambda size, s: ast.grid_size(size, patch, s)
  found = [(f, t) for f in range(1, patch + 1) for t in range(1, patch + 1)
           if count(mel, f) * count(frames, t) == patches]
  equal = [c for c in found if c[0] == c[1]]
  for candidates in (equal, found):
    grids = {(count(mel, f), count(frames, t)) for f, t in candidates}
    if len(grids) == 1:
      return max(candidates)
  raise ConfigMismatchError(
      f"cannot infer the strides: {patches} patches over {mel}x{frames} input fit "
      f"{len(found)} stride pair(s) {found[:6]}; pass freq_stride/time_stride")


# --------------------------------------------------------------------------- merging


def merge_into(initialised: Mapping[str, Any], converted: Mapping[str, Any], *,
               strict: bool = True) -> dict[str, Any]:
  """Puts converted arrays into an initialised parameter tree, keeping its boxes.

  Each `nn.LogicallyPartitioned` (or other `AxisMetadata`) box keeps its axis
  names with the new value inside, cast to the initialised dtype and, for a
  `jax.Array` leaf, placed with its sharding. Every converted leaf must exist
  with the same shape; with `strict`, every initialised leaf must be converted
  (`strict=False` keeps the initial values of the rest, e.g. a fresh head).

    variables = ast.Encoder(config).init(rng, features)
    params = merge_into(variables["params"], converted)
    ast.Encoder(config).apply({"params": params}, features)

  Raises:
    StructureMismatchError listing every path that does not fit.
  """
  problems: list[str] = []
  merged = _merge(initialised, converted, "", strict, problems)
  if problems:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise StructureMismatchError(f"converted parameters do not fit the initialised tree:\n  "
                                 f"{shown}{more}")
  return merged


def _merge(init: Any, conv: Any, path: str, strict: bool, problems: list[str]) -> Any:
  if isinstance(init, Mapping):
    if not isinstance(conv, Mapping):
      problems.append(f"{path or '/'}: initialised is a subtree, converted is an array")
      return init
    for k in sorted(set(conv) - set(init)):
      problems.append(f"{path}/{k}: converted but absent from the initialised tree")
    out = {}
    for k, v in init.items():
      if k in conv:
        out[k] = _merge(v, conv[k], f"{path}/{k}", strict, problems)
      else:
        if strict:
          problems.append(f"{path}/{k}: initialised but not converted")
        out[k] = v
    return out
  if isinstance(conv, Mapping):
    problems.append(f"{path}: initialised is an array, converted is a subtree")
    return init
  box = init if isinstance(init, nn.meta.AxisMetadata) else None
  if isinstance(box, nn.Partitioned):
    value = box.value
  else:
    value = box.unbox() if box is not None else init
  if tuple(value.shape) != tuple(np.shape(conv)):
    hint = " (resize the position grid first)" if path.endswith("pos_embed") else ""
    problems.append(f"{path}: converted shape {tuple(np.shape(conv))}, initialised "
                    f"{tuple(value.shape)}{hint}")
    return init
  new = jnp.asarray(conv, dtype=value.dtype)
  sharding = getattr(value, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    new = jax.device_put(new, sharding)
  return box.replace_boxed(new) if box is not None else new


# --------------------------------------------------------------------------- command line


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string("input", None, "Checkpoint: .safetensors, .bin, .pt or .pth.",
                      required=True)
  flags.DEFINE_string("output", None, "Directory for params/ (Orbax) and convert.json.",
                      required=True)
  flags.DEFINE_integer("heads", None, "Attention heads (not recoverable from the weights).",
                       required=True)
  flags.DEFINE_enum("source", "auto", ["auto", *SOURCES], "Source layout; auto = from key names.")
  flags.DEFINE_integer("num_mel_bins", 128, "Input mel bins of our encoder.")
  flags.DEFINE_integer("num_frames", 1024, "Input frames of our encoder.")
  flags.DEFINE_integer("freq_stride", None, "Default: inferred from the position grid.")
  flags.DEFINE_integer("time_stride", None, "Default: inferred from the position grid.")
  flags.DEFINE_float("layer_norm_eps", None,
                     "Default: the source's (transformers 1e-12, AST/SSAST 1e-6).")
  flags.DEFINE_bool("allow_missing", False, "Write even if some target parameters are missing.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing DIR/params.")


def main(argv: list[str]) -> None:
  # Only the command line writes checkpoints: the library needs no orbax.
  import orbax.checkpoint as ocp

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  source = None if f.source == "auto" else f.source
  overrides = {name: getattr(f, name) for name in
               ("num_mel_bins", "num_frames", "freq_stride", "time_stride", "layer_norm_eps")
               if getattr(f, name) is not None}
  output = pathlib.Path(f.output).absolute()
  target = output / "params"
  try:
    if target.exists() and not f.overwrite:
      raise ConversionError(f"{target} exists; pass --overwrite to replace it")
    state = load_state_dict(f.input)
    config = infer_config(state, f.heads, source, **overrides)
    params, report = convert(state, config, source, strict=not f.allow_missing)
  except ConversionError as e:
    sys.exit(f"error: {e}")
  output.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target, params, force=f.overwrite)
  summary = {"input": str(pathlib.Path(f.input).absolute()), "params": str(target),
             "config": dataclasses.asdict(config), "report": report.to_dict()}
  (output / "convert.json").write_text(json.dumps(summary, indent=2) + "\n")
  logging.info("converted %d tensors (%s); %d unused, %d missing -> %s", len(report.loaded),
               report.naming, len(report.unused), len(report.missing), target)
  for note in report.notes:
    logging.warning("%s", note)


if __name__ == "__main__":
  define_flags()
  app.run(main)
