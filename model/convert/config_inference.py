"""The `EncoderConfig` a state dict describes, for the command line.

The weights say the width, depth, MLP size, patch size and token count; the
strides follow from the position grid's size over an assumed input size. What
they cannot say (the number of heads) the caller passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from model import ast
from model.convert import keys, rules
from model.convert.errors import ConfigMismatchError, MissingWeightsError, ShapeMismatchError


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
  stripped = keys.strip_module(state_dict)
  layout = keys.select_layout(stripped, source)
  names = keys.normalise(stripped, layout)
  conv_name = keys.source_name(rules.EMBEDDING_RULES, "patch_embed/kernel", layout)
  fc1_name = keys.source_name(rules.BLOCK_RULES, "mlp/fc1/kernel", layout)
  for needed in (conv_name, fc1_name):
    if needed not in names:
      raise MissingWeightsError(f"cannot infer the config without {needed}")
  conv = np.shape(state_dict[names[conv_name]])
  if len(conv) != 4 or conv[1] != 1 or conv[2] != conv[3]:
    raise ShapeMismatchError(f"{names[conv_name]}: shape {tuple(conv)}, expected (width, 1, "
                             f"patch_size, patch_size); {rules.TRANSFORMS['conv'].hint}")
  width, patch = conv[0], conv[2]
  fields: dict[str, Any] = dict(
      width=width, heads=heads, depth=keys.count_layers(names, layout),
      mlp_dim=np.shape(state_dict[names[fc1_name]])[0], patch_size=patch,
      layer_norm_eps=layout.layer_norm_eps)
  cls_name, dist_name, pos_name = keys.token_names(layout)
  tokens = int(cls_name in names) + int(dist_name in names)
  fields.update(num_tokens=tokens, pooling="tokens" if tokens else "patches")
  if layout.source == "ssast":
    fields["pooling"] = "patches"  # SSAST's fine-tuning default: mean of the patch tokens
  fields.update(overrides)
  mel = fields.setdefault("num_mel_bins", 128)
  frames = fields.setdefault("num_frames", 1024)
  if ("freq_stride" not in overrides or "time_stride" not in overrides) and pos_name in names:
    if keys.input_size_grid(state_dict, names, layout) is not None:
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
