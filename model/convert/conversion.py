"""PyTorch AST / SSAST state dicts onto the parameter tree of `model.ast`.

This maps their state dicts onto the parameter tree that `model/ast.py`'s
docstring fixes, so a converted checkpoint computes the same function in Flax
(the tests compare against `transformers.ASTModel` to 1e-4). The mapping
itself is data, in `rules`.

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

What the weights cannot say comes from the `ast.EncoderConfig`: the number of
heads (a `[D, D]` projection splits into any divisor of D), and which patch grid
the position embeddings are laid out in when their length does not match the
config's grid. Everything the weights do say (width, depth, MLP size, patch
size, token count) is checked against the config, and a mismatch raises a
`ConversionError` naming the key. A position embedding for a different grid is
returned at its own grid (`report.pos_embed_grid`) for the caller to resize
(`model.posemb.resize_grid`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from model import ast
from model import params as params_lib
from model.convert import keys, rules
from model.convert.errors import ConfigMismatchError, MissingWeightsError, ShapeMismatchError
from model.convert.loading import to_numpy

# target path -> (layer | None, part | None) -> the transformed source tensor
_Pieces = dict[str, dict[tuple[int | None, int | None], np.ndarray]]


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


def detect_source(state_dict: Mapping[str, Any]) -> str:
  """`"transformers"`, `"ast"` or `"ssast"`, from the key names."""
  return rules.LAYOUTS[keys.detect_layout(keys.strip_module(state_dict))].source


def convert(state_dict: Mapping[str, Any], config: ast.EncoderConfig, source: str | None = None,
            *, pos_grid: tuple[int, int] | None = None,
            strict: bool = False) -> tuple[dict[str, Any], Report]:
  """Converts a PyTorch AST/SSAST state dict to our parameters (float32 numpy).

  Args:
    state_dict: name -> tensor (torch or numpy), e.g. from `loading.load_state_dict`.
    config: our encoder config; `heads` is taken from it, the rest is checked.
    source: "transformers", "ast" or "ssast"; None detects it from the names.
    pos_grid: the (F', T') layout of the position embeddings, when they are
      neither at the config's grid nor at the same frequency extent.
    strict: raise `MissingWeightsError` instead of reporting missing targets.

  Returns:
    `(params, report)`: the encoder tree (for "ssast": `{"encoder",
    "discriminative", "generative"}`), and a `Report`.
  """
  stripped = keys.strip_module(state_dict)
  layout = keys.select_layout(stripped, source)
  return _convert(state_dict, keys.normalise(stripped, layout), config, layout, pos_grid, strict)


def from_transformers(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """`transformers` ASTModel / ASTForAudioClassification, 4.x or 5.x names."""
  return convert(state_dict, config, "transformers", **kwargs)


def from_ast(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """The original AST repository's checkpoints (`module.v.*`)."""
  return convert(state_dict, config, "ast", **kwargs)


def from_ssast(state_dict, config, **kwargs) -> tuple[dict[str, Any], Report]:
  """SSAST pre-training checkpoints: encoder, mask embedding and both heads."""
  return convert(state_dict, config, "ssast", **kwargs)


# --------------------------------------------------------------------------- the conversion


def _convert(state_dict, names, config: ast.EncoderConfig, layout: rules.Layout, pos_grid,
             strict: bool) -> tuple[dict[str, Any], Report]:
  depth, tokens, grid, notes = _check_config(state_dict, names, config, layout, pos_grid)
  dims = rules.Dims(config.width, config.heads, config.mlp_dim, config.patch_size, tokens,
                    grid or config.grid)
  pieces, part_axes, missing, used = _gather(state_dict, names, layout, depth, tokens, dims)
  params: dict[str, Any] = {}
  for target, slots in pieces.items():
    if target in missing:
      continue
    params_lib.set_path(params, target, _assemble(slots, part_axes[target]))
  if strict and missing:
    raise MissingWeightsError(f"no source tensor for {len(missing)} target(s): "
                              f"{_describe_missing(missing)}")
  report = Report(
      source=layout.source, naming=layout.naming, loaded=sorted(used),
      unused=sorted(k for k in state_dict if k not in used), missing=missing,
      num_tokens=tokens, pos_embed_grid=None if grid is None else tuple(grid),
      config_grid=tuple(config.grid), notes=notes)
  return params, report


def _check_config(state_dict, names, config: ast.EncoderConfig, layout: rules.Layout,
                  pos_grid) -> tuple[int, int, tuple[int, int] | None, list[str]]:
  """What the weights say against the config: (depth, tokens, position grid, notes).

  Raises the first contradiction, before any tensor is transformed.
  """
  depth = keys.count_layers(names, layout)
  if depth != config.depth:
    raise ConfigMismatchError(f"the checkpoint has {depth} layers "
                              f"({layout.layer_prefix.format(i='N')}*), config.depth is "
                              f"{config.depth}")
  # The patch embedding first: its shape names width and patch size together.
  conv_name = keys.source_name(rules.EMBEDDING_RULES, "patch_embed/kernel", layout)
  if conv_name in names:
    _check_shape(names[conv_name], to_numpy(state_dict[names[conv_name]], conv_name),
                 rules.TRANSFORMS["conv"], rules.Dims(config.width, config.heads, config.mlp_dim,
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
  return depth, tokens, grid, notes


def _gather(state_dict, names, layout: rules.Layout, depth: int, tokens: int,
            dims: rules.Dims) -> tuple[_Pieces, dict[str, int], dict[str, list[str]], set[str]]:
  """Every rule's source tensor, checked and transformed.

  Returns (pieces, part axis per target, target -> missing source names, keys used).
  """
  pieces: _Pieces = {}
  part_axes: dict[str, int] = {}
  missing: dict[str, list[str]] = {}
  used: set[str] = set()
  for target, transform_name, part, layer, name in keys.expanded_rules(layout, depth, tokens):
    transform = rules.TRANSFORMS[transform_name]
    slots = pieces.setdefault(target, {})
    part_axes[target] = transform.part_axis
    if name not in names:
      missing.setdefault(target, []).append(name)
      continue
    key = names[name]
    value = to_numpy(state_dict[key], key)
    _check_shape(key, value, transform, dims)
    slots[(layer, part)] = transform.apply(value.astype(np.float32), dims)
    used.add(key)
  return pieces, part_axes, missing, used


def _check_shape(key: str, value: np.ndarray, transform: rules.Transform,
                 dims: rules.Dims) -> None:
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
  """One target array: parts stacked on `part_axis`, then layers on a leading axis."""
  layers = sorted({layer for layer, _ in slots}, key=lambda x: -1 if x is None else x)
  parts = sorted({part for _, part in slots}, key=lambda x: -1 if x is None else x)

  def one_layer(layer):
    if parts == [None]:
      return slots[layer, None]
    return np.stack([slots[layer, p] for p in parts], axis=part_axis)

  value = one_layer(None) if layers == [None] else np.stack([one_layer(i) for i in layers])
  return np.ascontiguousarray(value, dtype=np.float32)


def _describe_missing(missing: Mapping[str, list[str]], limit: int = 8) -> str:
  items = [f"{t} (needs {', '.join(s[:3])}{', ...' if len(s) > 3 else ''})"
           for t, s in list(missing.items())[:limit]]
  return "; ".join(items) + ("; ..." if len(missing) > limit else "")


# --------------------------------------------------------------------------- tokens and grid


def _tokens_and_grid(
    state_dict, names, layout: rules.Layout, config: ast.EncoderConfig,
    pos_grid: tuple[int, int] | None) -> tuple[int, tuple[int, int] | None, list[str]]:
  """Extra-token count and position grid, from which token parameters exist and the
  position table's length (tokens + F'·T')."""
  cls_name, dist_name, pos_name = keys.token_names(layout)
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
  grid, notes = _infer_grid(state_dict, names, layout, config, key, length, tokens, token_keys)
  return tokens, grid, notes


def _infer_grid(state_dict, names, layout: rules.Layout, config: ast.EncoderConfig, key: str,
                length: int, tokens: int,
                token_keys: list[str]) -> tuple[tuple[int, int], list[str]]:
  """The grid of a `length`-row position table without a `pos_grid=`: the config's, the
  pre-training input size's (SSAST), or the config's frequency rows, in that order."""
  hint = keys.input_size_grid(state_dict, names, layout)
  for label, grid in (("the config", config.grid), ("the pre-training input size", hint)):
    if grid is not None and length - _grid_patches(grid) == tokens:
      notes = [] if label == "the config" else [
          f"position grid {grid[0]}x{grid[1]} taken from {label} "
          f"({', '.join(names[k] for k in layout.input_size_keys)})"]
      return grid, notes
  patches = length - tokens
  if patches > 0 and patches % config.grid[0] == 0:
    grid = (config.grid[0], patches // config.grid[0])
    return grid, [f"{key}: {patches} patches laid out as {grid[0]}x{grid[1]}, assuming "
                  f"the config's {config.grid[0]} frequency rows (pass pos_grid= "
                  "otherwise)"]
  # No grid fits: say whether the token count is what disagrees with the config.
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


def _grid_patches(grid: tuple[int, int]) -> int:
  return grid[0] * grid[1]
