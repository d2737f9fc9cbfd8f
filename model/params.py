"""Placing arrays into a nested parameter tree by path, with shape checks.

Two callers put arrays from somewhere else into a tree `init` built: the
converter (`model.convert.merging.merge_into`: PyTorch weights into an
initialised encoder) and the trainer's warm start (`train.warm_start.apply`:
a pre-training run's or converted encoder into the fine-tuning model). Both
address leaves by "/"-joined paths ("blocks/attn/qkv/kernel"), require the
new array to have the initialised leaf's shape, and must keep what the
initialised leaf carries besides its values: its dtype, its sharding (a
`jax.Array` placed across devices stays placed the same way) and its
`nn.LogicallyPartitioned` box (the axis names the trainer derives shardings
from). This module does that once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

SEP = "/"


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """path -> leaf ("/"-joined keys); boxes count as leaves."""
  return traverse_util.flatten_dict(tree, sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The nested tree of `flatten`'s output."""
  return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
  """`tree[a][b][c] = value` for `path` "a/b/c", creating the missing subtrees."""
  *parents, leaf = path.split(SEP)
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def unbox(leaf: Any) -> Any:
  """The array (or `ShapeDtypeStruct`) inside an `AxisMetadata` box, or `leaf` itself."""
  if isinstance(leaf, nn.Partitioned):
    return leaf.value
  return leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf


def place(new: Any, like: Any) -> Any:
  """`new` as a leaf that can replace `like`: `like`'s dtype, sharding and box.

  The shape is the caller's to check (`merge` does). A `like` without a
  `jax.sharding.Sharding` (numpy, or a `ShapeDtypeStruct` without one) leaves
  `new` on the default device.
  """
  value = unbox(like)
  array = jnp.asarray(new, dtype=value.dtype)
  sharding = getattr(value, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    array = jax.device_put(array, sharding)
  return like.replace_boxed(array) if isinstance(like, nn.meta.AxisMetadata) else array


def merge(initialised: Mapping[str, Any], updates: Mapping[str, Any], *,
          strict: bool) -> tuple[dict[str, Any], list[str]]:
  """`initialised` with the leaves of `updates` put in (`place`), and what did not fit.

  Every leaf of `updates` must exist in `initialised` with the same shape; with
  `strict`, every initialised leaf must also be updated. Leaves that are not
  updated (or do not fit) keep their initialised value, the same object.

  Returns:
    `(merged, problems)`: the new tree (plain dicts) and one line per path that
    does not fit, for the caller to raise its own error with.
  """
  problems: list[str] = []
  return _merge(initialised, updates, "", strict, problems), problems


def _merge(init: Any, new: Any, path: str, strict: bool, problems: list[str]) -> Any:
  if isinstance(init, Mapping):
    if not isinstance(new, Mapping):
      problems.append(f"{path or '/'}: initialised is a subtree, converted is an array")
      return init
    for k in sorted(set(new) - set(init)):
      problems.append(f"{path}/{k}: converted but absent from the initialised tree")
    out = {}
    for k, v in init.items():
      if k in new:
        out[k] = _merge(v, new[k], f"{path}/{k}", strict, problems)
      else:
        if strict:
          problems.append(f"{path}/{k}: initialised but not converted")
        out[k] = v
    return out
  if isinstance(new, Mapping):
    problems.append(f"{path}: initialised is an array, converted is a subtree")
    return init
  shape = tuple(unbox(init).shape)
  if shape != tuple(np.shape(new)):
    hint = " (resize the position grid first)" if path.endswith("pos_embed") else ""
    problems.append(f"{path}: converted shape {tuple(np.shape(new))}, initialised "
                    f"{shape}{hint}")
    return init
  return place(new, init)
