"""Regression heads over a shared encoder: task-grouped with cross-task attention, or flat.

GroupedHeads (design). The 19 dimensions fall into task groups (Timing;
Dynamics = articulation, pedal, timbre, dynamic; Expression = music making,
emotion, interpretation), read from the taxonomy as `((name, dims), ...)`. Each
group owns a learned query token. `depth` cross-task attention layers follow,
each pre-LayerNorm:

    keys/values = [encoder tokens ; the group tokens]      (group tokens last)
    group tokens += Attention(LN(group tokens), LN(keys/values))
    group tokens += MLP(LN(group tokens))

so every group pools the time-frequency evidence it needs (timing lives in onset
patterns across time, timbre in the spectral envelope) *and* reads the other
groups' current summaries: expression ratings lean on timing and dynamics, which
the group tokens expose to each other instead of through a shared bottleneck.
Padding tokens of the encoder are masked out as keys. Each group token then goes
through its own LayerNorm -> Dense -> GELU -> Dense to its dimensions, and the
outputs are scattered back to label order `[B, 19]`. With `cross_task=False`
the group tokens see only the encoder (an ablation).

The attention probabilities, `[B, heads, groups, N + groups]` per layer, are sown
as intermediates ("cross_attention") for eval.attention.

FlatHead: LayerNorm -> Dense on the pooled embedding, all dimensions at once (the
"one flat head" ablation, and AST's own classifier shape).

Parameter tree (GroupedHeads): `queries [G, D]`, `layer_{i}/{norm_q,norm_kv,q,kv,out,
norm_mlp,fc1,fc2}`, `{group}_norm`, `{group}_fc1`,
`{group}_fc2` (e.g. `timing_fc2`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from model import attention, linear
from pipelines.datasets import taxonomy

Groups = tuple[tuple[str, tuple[int, ...]], ...]

DEFAULT_GROUPS: Groups = tuple((name, dims) for name, dims in taxonomy.GROUPS.items())


def check_groups(groups: Sequence[tuple[str, Sequence[int]]], num_outputs: int) -> Groups:
  """Groups must cover 0..num_outputs-1 exactly once."""
  groups = tuple((str(name), tuple(int(d) for d in dims)) for name, dims in groups)
  covered = sorted(d for _, dims in groups for d in dims)
  if covered != list(range(num_outputs)):
    raise ValueError(f"task groups must cover dimensions 0..{num_outputs - 1} exactly once; "
                     f"got {groups}")
  if len({name for name, _ in groups}) != len(groups):
    raise ValueError(f"task group names must be unique; got {[n for n, _ in groups]}")
  return groups


class CrossTaskLayer(nn.Module):
  heads: int
  mlp_dim: int
  dropout: float = 0.1
  layer_norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, queries, tokens, key_mask, *, deterministic: bool):
    d = queries.shape[-1]
    head_dim = d // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: linear.layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)
    q_in = norm("norm_q")(queries)
    kv_in = jnp.concatenate([norm("norm_kv")(tokens), q_in], axis=1)
    mask = jnp.concatenate([key_mask, jnp.ones(queries.shape[:2], bool)], axis=1)
    q = linear.Dense((self.heads, head_dim), ("embed",), ("heads", "kv"), name="q", **kw)(q_in)
    kv = linear.Dense((2, self.heads, head_dim), ("embed",), (None, "heads", "kv"), name="kv",
                      **kw)(kv_in)
    out, probs = attention.plain(q, kv[:, :, 0], kv[:, :, 1], mask, dtype=self.dtype)
    self.sow("intermediates", "cross_attention", probs)
    out = linear.Dense(d, ("heads", "kv"), ("embed",), name="out", **kw)(out)
    queries = queries + nn.Dropout(self.dropout)(out, deterministic=deterministic)
    y = linear.Dense(self.mlp_dim, ("embed",), ("mlp",), name="fc1", **kw)(norm("norm_mlp")(queries))
    y = linear.Dense(d, ("mlp",), ("embed",), name="fc2", **kw)(nn.gelu(y, approximate=False))
    return queries + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class GroupedHeads(nn.Module):
  """`(tokens [B, N, D], token_mask [B, N]) -> predictions [B, num_outputs]` in label order."""

  groups: Groups = DEFAULT_GROUPS
  num_outputs: int = taxonomy.NUM_DIMENSIONS
  heads: int = 4
  depth: int = 1
  mlp_ratio: int = 2
  hidden: int = 256
  cross_task: bool = True
  dropout: float = 0.1
  layer_norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens, token_mask, *, train: bool = False):
    groups = check_groups(self.groups, self.num_outputs)
    if self.depth < 1:
      raise ValueError(f"depth must be >= 1 (with 0 the predictions ignore the input), got {self.depth}")
    b, _, d = tokens.shape
    if d % self.heads:
      raise ValueError(f"head width {d} is not divisible by {self.heads} heads")
    g = len(groups)
    queries = self.param("queries", nn.with_logical_partitioning(
        nn.initializers.truncated_normal(0.02), (None, "embed")), (g, d), self.param_dtype)
    x = jnp.broadcast_to(queries.astype(self.dtype), (b, g, d))
    for i in range(self.depth):
      layer = CrossTaskLayer(self.heads, self.mlp_ratio * d, self.dropout, self.layer_norm_eps,
                             self.dtype, self.param_dtype, name=f"layer_{i}")
      if self.cross_task:
        x = layer(x, tokens, token_mask, deterministic=not train)
      else:
        # Each group token attends over the encoder alone: fold groups into the batch.
        xs = x.reshape(b * g, 1, d)
        ts = jnp.repeat(tokens, g, axis=0)
        ms = jnp.repeat(token_mask, g, axis=0)
        x = layer(xs, ts, ms, deterministic=not train).reshape(b, g, d)
    outputs = []
    for j, (name, dims) in enumerate(groups):
      y = linear.layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, f"{name}_norm")(x[:, j])
      y = linear.Dense(self.hidden, ("embed",), ("mlp",), dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"{name}_fc1")(y)
      y = nn.Dropout(self.dropout)(nn.gelu(y, approximate=False), deterministic=not train)
      outputs.append(linear.Dense(len(dims), ("mlp",), (None,), dtype=self.dtype,
                                  param_dtype=self.param_dtype, name=f"{name}_fc2")(y))
    order = np.argsort(np.concatenate([np.asarray(dims) for _, dims in groups]))
    return jnp.concatenate(outputs, axis=-1)[:, order].astype(jnp.float32)


class FlatHead(nn.Module):
  """`pooled [B, D] -> predictions [B, num_outputs]`."""

  num_outputs: int = taxonomy.NUM_DIMENSIONS
  layer_norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, pooled, *, train: bool = False):
    del train
    y = linear.layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "norm")(pooled)
    y = linear.Dense(self.num_outputs, ("embed",), (None,), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="out")(y)
    return y.astype(jnp.float32)

