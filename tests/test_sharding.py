"""train.sharding: mesh arithmetic, and parameter shardings on 8 forced host devices."""

import subprocess
import sys
import textwrap

import ml_collections
import pytest

from train import sharding

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("data, fsdp, devices, expected", [
    (-1, 1, 8, (8, 1)), (-1, 2, 8, (4, 2)), (2, -1, 8, (2, 4)), (1, 1, 1, (1, 1))])
def test_mesh_shape_fills_the_minus_one_axis(data, fsdp, devices, expected):
  config = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp))
  assert sharding.mesh_shape(config, devices) == expected


@pytest.mark.parametrize("data, fsdp, devices", [(-1, -1, 8), (3, 1, 8), (-1, 3, 8), (2, 2, 8)])
def test_mesh_shapes_that_do_not_fit_are_refused(data, fsdp, devices):
  with pytest.raises(sharding.MeshError):
    sharding.mesh_shape(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)), devices)


def test_fsdp_shards_embed_axes_and_replicates_what_does_not_divide():
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, ml_collections, flax.linen as nn
      from model import ast, multitask
      from train import sharding
      mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=4)))
      model = multitask.MultiTaskModel(multitask.MultiTaskConfig(
          encoder=ast.variant("tiny", width=30, heads=3, depth=1, num_frames=64), head="flat"))
      boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 128, 64))))
      specs = sharding.param_shardings(boxed["params"], mesh)
      enc = specs["encoder"]
      print("qkv", tuple(enc["blocks"]["attn"]["qkv"]["kernel"].spec))
      print("fc1", tuple(enc["blocks"]["mlp"]["fc1"]["kernel"].spec))
      print("pos", tuple(enc["pos_embed"].spec))
      model = multitask.MultiTaskModel(multitask.MultiTaskConfig(
          encoder=ast.variant("tiny", width=64, heads=2, depth=1, num_frames=64)))
      boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((8, 128, 64))))
      enc = sharding.param_shardings(boxed["params"], mesh)["encoder"]
      print("qkv64", tuple(enc["blocks"]["attn"]["qkv"]["kernel"].spec))
      print("fc1_64", tuple(enc["blocks"]["mlp"]["fc1"]["kernel"].spec))
      print("batch", tuple(sharding.batch_sharding(mesh, 3).spec))
  """)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "PATH": "/usr/bin:/bin"}
  run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=env, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  lines = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())
  # width 30 is not divisible by fsdp=4: replicated; the layers axis is never sharded.
  assert lines["qkv"] == "(None, None, None, None, None)"
  assert lines["pos"] == "(None, None, None)"
  # width 64: the embed axis (dim 1 of [L, D, 3, H, K]; dim 1 of [L, D, mlp]) over fsdp.
  assert lines["qkv64"] == "(None, 'fsdp', None, None, None)"
  assert lines["fc1_64"] == "(None, 'fsdp', None)"
  assert lines["batch"] == "(('data', 'fsdp'), None, None)"
