"""Converted arrays into an initialised parameter tree, keeping its boxes.

`merge_into` keeps each `nn.LogicallyPartitioned` box (so the trainer can still
derive shardings) and says which paths or shapes disagree. With identical
structures, `flax.linen.meta.replace_boxed(variables["params"], converted)` does
the same without the checks, and `flax.linen.meta.unbox(params)` drops the
boxes. SSAST's `mask_embed` only exists in a tree initialised with a
`patch_mask`. The placement itself is `model.params.merge`, which the trainer's
warm start shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model import params as params_lib
from model.convert.errors import StructureMismatchError

_SHOWN = 20  # problems listed in the error; a wrong depth would otherwise list hundreds


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
  merged, problems = params_lib.merge(initialised, converted, strict=strict)
  if problems:
    shown = "\n  ".join(problems[:_SHOWN])
    more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise StructureMismatchError(f"converted parameters do not fit the initialised tree:\n  "
                                 f"{shown}{more}")
  return merged
