"""A state dict's key names, read through the layouts of `rules`.

The helpers work on `names`: normalised name -> the key in the given state dict,
so errors and the report can name the keys as the caller wrote them, while the
rules match one spelling per layout (without DataParallel's `module.` and the
task model's `audio_spectrogram_transformer.` prefixes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from model import ast
from model.convert import rules
from model.convert.errors import ConversionError, UnknownFormatError
from model.convert.loading import to_numpy


def strip_module(state_dict: Mapping[str, Any]) -> dict[str, str]:
  """normalised name -> original name, without DataParallel's `module.` prefix."""
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    return {k[len("module."):]: k for k in keys}
  return {k: k for k in keys}


def select_layout(stripped: Mapping[str, str], source: str | None) -> rules.Layout:
  """The layout `source` names, checked against the keys (None: detected)."""
  detected = rules.LAYOUTS[detect_layout(stripped)]
  if source is None:
    return detected
  if source not in rules.SOURCES:
    raise ValueError(f"source must be one of {rules.SOURCES} or None, got {source!r}")
  # AST and SSAST share the encoder names: either reading of the other is allowed
  # (SSAST's heads are then unused, or reported missing).
  if (source == "transformers") != (detected.source == "transformers"):
    raise UnknownFormatError(f"source={source!r} but the keys are in the {detected.naming} "
                             "layout")
  return detected if source == "transformers" else rules.LAYOUTS[source]


def detect_layout(names: Mapping[str, str]) -> str:
  """The key of `rules.LAYOUTS` whose signature one of `names` matches."""
  for layout, signature in rules.SIGNATURES:
    if any(signature.search(n) for n in names):
      return layout
  sample = sorted(names)[:8]
  raise UnknownFormatError("state dict is not in a layout we know (transformers AST, original "
                           f"AST, SSAST); first keys: {sample}")


def normalise(stripped: Mapping[str, str], layout: rules.Layout) -> dict[str, str]:
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


def count_layers(names: Mapping[str, str], layout: rules.Layout) -> int:
  """1 + the highest layer index under the layout's layer prefix (0 without layers)."""
  before, after = layout.layer_prefix.split("{i}")
  pattern = re.compile(f"^{re.escape(before)}(\\d+){re.escape(after)}")
  indices = {int(m.group(1)) for n in names if (m := pattern.match(n))}
  return max(indices) + 1 if indices else 0


def expanded_rules(layout: rules.Layout, depth: int, tokens: int):
  """(target, transform, part, layer | None, source name) over the whole model."""
  for target, transform, part, names in rules.EMBEDDING_RULES:
    if (target == "tokens" and part >= tokens) or (target == "token_pos_embed" and not tokens):
      continue  # token rows the checkpoint (and config) do not have
    if names[layout.column] is not None:
      yield layout.encoder_prefix + target, transform, part, None, names[layout.column]
  for i in range(depth):
    prefix = layout.layer_prefix.format(i=i)
    for target, transform, part, names in rules.BLOCK_RULES:
      if names[layout.column] is not None:
        yield (layout.encoder_prefix + "blocks/" + target, transform, part, i,
               prefix + names[layout.column])
  for target, transform, part, name in layout.extra_rules:
    yield target, transform, part, None, name


def source_name(table, target: str, layout: rules.Layout, part: int | None = None) -> str:
  """The entry of rules `table` for `target` in `layout`'s naming (block rules: layer 0)."""
  for t, _, p, names in table:
    if t == target and p == part and names[layout.column] is not None:
      prefix = layout.layer_prefix.format(i=0) if table is rules.BLOCK_RULES else ""
      return prefix + names[layout.column]
  raise KeyError(target)


def token_names(layout: rules.Layout) -> tuple[str, str, str]:
  """Source names of the [CLS] token, distillation token and position table."""
  return (source_name(rules.EMBEDDING_RULES, "tokens", layout, 0),
          source_name(rules.EMBEDDING_RULES, "tokens", layout, 1),
          source_name(rules.EMBEDDING_RULES, "pos_embed", layout))


def input_size_grid(state_dict, names, layout: rules.Layout) -> tuple[int, int] | None:
  """SSAST's pre-training grid: input size with stride = kernel (no overlap)."""
  if layout.input_size_keys is None or not all(k in names for k in layout.input_size_keys):
    return None
  conv = names.get(source_name(rules.EMBEDDING_RULES, "patch_embed/kernel", layout))
  if conv is None or np.ndim(state_dict[conv]) != 4:
    return None
  kf, kt = np.shape(state_dict[conv])[2:]
  fdim, tdim = (int(np.asarray(to_numpy(state_dict[names[k]], k))) for k in layout.input_size_keys)
  return (ast.grid_size(fdim, kf, kf), ast.grid_size(tdim, kt, kt))
