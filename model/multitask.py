"""The fine-tuning model: a backbone (AST, CNN or a feed-forward net) + regression heads.

`MultiTaskModel(config).apply(variables, features, train=..., valid_frames=...)`
returns `{"predictions": [B, 19] (normalised target space, label order),
"pooled": [B, D]}` plus `"log_variances": [G]` when adaptive loss weighting is on
(learned parameters, so the optimiser trains them with the model). `loss()` turns
those outputs and a batch into the training objective and its metrics.

Parameter tree: `encoder/...` (model.ast; the same subtree as SSAST's, so a
pre-training checkpoint loads by name) or `cnn/...` or `pooled_stats/...` or
`clip_stats/...` (a `[B, F]` statistics vector per performance, not a log-mel), then
`heads/...` (model.heads) and `loss_log_variances [G]`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import ast, baselines, heads, losses
from pipelines.datasets import taxonomy

BACKBONES = ("ast", "cnn", "pooled_stats", "clip_stats")


@dataclasses.dataclass(frozen=True)
class MultiTaskConfig:
  backbone: str = "ast"
  encoder: ast.EncoderConfig = ast.EncoderConfig()
  cnn: baselines.CNNConfig = baselines.CNNConfig()
  pooled_stats: baselines.PooledStatsConfig = baselines.PooledStatsConfig()
  head: str = "grouped"  # or "flat"
  groups: heads.Groups = heads.DEFAULT_GROUPS
  num_outputs: int = taxonomy.NUM_DIMENSIONS
  head_heads: int = 4
  head_depth: int = 1
  head_hidden: int = 256
  cross_task: bool = True
  adaptive_weighting: bool = True  # homoscedastic-uncertainty weights; False: fixed
  loss_weights: tuple[tuple[str, float], ...] = ()  # fixed weights per group (default 1)

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
    if self.head not in ("grouped", "flat"):
      raise ValueError(f"head must be 'grouped' or 'flat', got {self.head!r}")
    heads.check_groups(self.groups, self.num_outputs)
    if self.adaptive_weighting and self.loss_weights:
      raise ValueError("loss_weights are fixed weights; they would be ignored with "
                       "adaptive_weighting=True (set it to False to use them)")
    if self.head_depth < 1:
      raise ValueError(f"head_depth must be >= 1, got {self.head_depth}")

  @property
  def backbone_config(self):
    return {"ast": self.encoder, "cnn": self.cnn, "pooled_stats": self.pooled_stats,
            "clip_stats": self.pooled_stats}[self.backbone]

  def replace(self, **changes) -> MultiTaskConfig:
    return dataclasses.replace(self, **changes)


class MultiTaskModel(nn.Module):
  config: MultiTaskConfig

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None):
    c = self.config
    if c.backbone == "ast":
      out = ast.Encoder(c.encoder, name="encoder")(features, train=train, valid_frames=valid_frames)
    elif c.backbone == "cnn":
      out = baselines.CNN(c.cnn, name="cnn")(features, train=train, valid_frames=valid_frames)
    elif c.backbone == "pooled_stats":
      out = baselines.PooledStats(c.pooled_stats, name="pooled_stats")(
          features, train=train, valid_frames=valid_frames)
    else:
      out = baselines.ClipStats(c.pooled_stats, name="clip_stats")(features, train=train)
    bc = c.backbone_config
    if c.head == "grouped":
      predictions = heads.GroupedHeads(
          c.groups, c.num_outputs, heads=c.head_heads, depth=c.head_depth, hidden=c.head_hidden,
          cross_task=c.cross_task, dropout=bc.dropout, dtype=bc.dtype, param_dtype=bc.param_dtype,
          name="heads")(out["tokens"], out["token_mask"], train=train)
    else:
      predictions = heads.FlatHead(c.num_outputs, dtype=bc.dtype, param_dtype=bc.param_dtype,
                                   name="heads")(out["pooled"], train=train)
    result = {"predictions": predictions, "pooled": out["pooled"]}
    if c.adaptive_weighting:
      result["log_variances"] = self.param(
          "loss_log_variances", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
          (len(c.groups),), jnp.float32)
    return result


def loss(outputs: dict, labels: jax.Array, label_mask: jax.Array, weights: jax.Array | None,
         config: MultiTaskConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Training objective from `MultiTaskModel` outputs and *normalised* labels.

  Metrics: `loss`, `mse/{group}` (per group, normalised space),
  `weight/{group}` (effective loss weight).
  """
  mse, count = losses.per_dimension_mse(outputs["predictions"], labels, label_mask, weights)
  per_group = losses.group_losses(mse, config.groups, count)
  total, group_weights = losses.combine(
      per_group, fixed_weights=dict(config.loss_weights),
      log_variances=outputs.get("log_variances") if config.adaptive_weighting else None,
      present=losses.group_presence(config.groups, count))
  metrics = {"loss": total}
  metrics.update({f"mse/{n}": v for n, v in per_group.items()})
  metrics.update({f"weight/{n}": v for n, v in group_weights.items()})
  return total, metrics
