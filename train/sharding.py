"""The device mesh and the one place where logical axis names meet mesh axes.

Mesh axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose
parameters and optimiser state are sharded, gathered layer by layer by XLA).
The batch is split over both; parameters shard their `embed` axis over `fsdp`.
A mesh axis is used at most once per array, so activations (`batch`, `length`,
`embed`) keep `embed` whole once `batch` has taken `fsdp` — the FSDP pattern:
weights are all-gathered, activations stay batch-sharded. A parameter axis that
the mesh axis does not divide is replicated instead (logged), so any width runs
on any mesh.

The same code runs on 1 CPU device, 8 forced host devices, a TPU v3-8 or a
multi-host pod slice: only the mesh shape changes.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("layers", None),
    ("length", None),
)


class MeshError(ValueError):
  """The configured mesh does not fit the devices or the batch."""


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  data, fsdp = int(config.data), int(config.fsdp)
  if (data == -1) + (fsdp == -1) > 1:
    raise MeshError("at most one mesh axis may be -1")
  if data == -1:
    data = num_devices // fsdp if fsdp > 0 else 0
  if fsdp == -1:
    fsdp = num_devices // data if data > 0 else 0
  if data < 1 or fsdp < 1 or data * fsdp != num_devices:
    raise MeshError(f"mesh data={config.data} x fsdp={config.fsdp} does not fit "
                    f"{num_devices} devices")
  return data, fsdp


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  # Auto axis types: the model relies on sharding propagation plus the logical
  # constraints, not on explicit-sharding types.
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _fit(spec: PartitionSpec, shape, mesh: jax.sharding.Mesh, path: str) -> PartitionSpec:
  """Drops mesh axes that do not divide the dimension they shard."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = math.prod(mesh.shape[a] for a in names)
    if size > 1 and dim % size:
      logging.info("%s: dimension %d is not divisible by mesh axes %s (%d); replicated",
                   path, dim, names, size)
      axes = None
    out.append(axes)
  return PartitionSpec(*out)


def strip_boxes(tree):
  """The values inside Flax's axis-metadata boxes, with no sharding constraint applied.

  (`nn.unbox` constrains each value to its sharding, which fails outside jit
  on abstract values.)
  """
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_shardings(boxed_abstract, mesh: jax.sharding.Mesh):
  """NamedShardings for an (abstract, logically boxed) parameter tree, unboxed."""
  logical = nn.get_partition_spec(boxed_abstract)
  mesh_specs = nn.logical_to_mesh(logical, LOGICAL_RULES)
  shapes = strip_boxes(boxed_abstract)

  def fit(path, spec, leaf):
    return NamedSharding(mesh, _fit(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))
  return jax.tree_util.tree_map_with_path(
      fit, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def global_batch(local: dict, mesh: jax.sharding.Mesh) -> dict:
  """This host's numpy batch (its slice of the global batch) as global jax Arrays."""
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    if v.dtype.kind in "US" or v.dtype == object:
      continue  # keys and other strings stay on the host
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
  return out


def check_batch(global_size: int, mesh: jax.sharding.Mesh, what: str) -> None:
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_size % shards:
    raise MeshError(f"{what} {global_size} is not divisible by the {shards} batch shards "
                    f"of mesh {dict(mesh.shape)}")
  if global_size % jax.process_count():
    raise MeshError(f"{what} {global_size} is not divisible by {jax.process_count()} hosts")
