"""AdamW with a warm-up + cosine schedule, selective weight decay and layer-wise LR decay.

Weight decay (decoupled, as AdamW) applies to weight matrices and convolution
kernels only: biases, normalisation scales, position embeddings, the [CLS] /
distillation tokens, the SSAST mask embedding, the heads' group queries and the
loss's log-variances are not decayed (DeiT/AST exclude the same; decaying a
position table or a scale pulls it towards zero for no regularising benefit).

Layer-wise LR decay (BEiT/ViT fine-tuning) scales the update of encoder block
`i` of `L` by `decay ** (L - i)` and the embeddings by `decay ** (L + 1)`; the
final norm and the heads keep the full rate. The blocks are stacked on a leading
axis (`nn.scan`), so the scale is a vector over that axis, not a per-module value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Path components whose parameters are never weight-decayed.
NO_DECAY_LEAVES = frozenset({"bias", "scale"})
NO_DECAY_PARAMS = frozenset({"pos_embed", "token_pos_embed", "tokens", "mask_embed", "queries",
                             "loss_log_variances"})
# Encoder parameters that sit below the first block (layer id 0).
EMBEDDING_PARAMS = frozenset({"patch_embed", "pos_embed", "token_pos_embed", "tokens",
                              "mask_embed"})


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decays(params) -> Any:
  """A tree of bools like `params`: True where weight decay applies."""
  def rule(path, _):
    names = _names(path)
    return not (names[-1] in NO_DECAY_LEAVES or NO_DECAY_PARAMS.intersection(names))
  return jax.tree_util.tree_map_with_path(rule, params)


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr` over `warmup_fraction`, then cosine to `end_lr`."""
  warmup = int(round(config.warmup_fraction * total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.peak_lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=config.end_lr)


def layer_scales(params: Mapping[str, Any], decay: float, depth: int) -> Any:
  """Per-parameter LR multipliers for layer-wise decay (see the module docstring)."""
  def rule(path, leaf):
    names = _names(path)
    if names[0] != "encoder":
      return jnp.ones((), jnp.float32)
    if names[1] == "blocks":
      ids = jnp.arange(depth, dtype=jnp.float32)
      scale = decay ** (depth - ids)
      return scale.reshape((depth,) + (1,) * (leaf.ndim - 1))
    if names[1] in EMBEDDING_PARAMS:
      return jnp.asarray(decay ** (depth + 1), jnp.float32)
    return jnp.ones((), jnp.float32)
  return jax.tree_util.tree_map_with_path(rule, params)


def make(config: ml_collections.ConfigDict, params, total_steps: int,
         depth: int | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser for `params` (unboxed) and its learning-rate schedule.

  `depth` (encoder layers) is needed when `config.layer_decay < 1`.
  """
  lr = schedule(config, total_steps)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decays(params)))
  if config.layer_decay < 1.0:
    if "encoder" not in params or depth is None:
      raise ValueError("layer_decay < 1 needs an AST encoder (params['encoder']) and its depth")
    scales = layer_scales(params, config.layer_decay, depth)
    parts.append(optax.stateless(
        lambda updates, _: jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales)))
  return optax.chain(*parts), lr
