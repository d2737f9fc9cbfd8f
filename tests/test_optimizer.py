"""train.optimizer: which parameters decay, the schedule, layer-wise LR decay, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import ast, multitask, ssast
from train import optimizer, sharding
from train.configs import finetune


def _params(model, features):
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  return sharding.strip_boxes(jax.eval_shape(lambda: model.init(rngs, features))["params"])


ENCODER = ast.variant("tiny", depth=2, num_frames=64, num_tokens=1, pooling="patches",
                      freq_stride=16, time_stride=16)
FEATURES = jnp.zeros((1, 128, 64))


def _paths(tree, value):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(k.key) for k in path) for path, v in flat if v == value}


def test_no_decay_on_biases_norms_embeddings_tokens_queries_and_log_variances():
  ssast_params = _params(ssast.SSAST(ssast.SSASTConfig(encoder=ENCODER, num_masked=8)), FEATURES)
  ft_params = _params(multitask.MultiTaskModel(multitask.MultiTaskConfig(
      encoder=ENCODER.replace(freq_stride=10, time_stride=10))), FEATURES)
  no_decay = _paths(optimizer.decays(ssast_params), False) | _paths(
      optimizer.decays(ft_params), False)
  decay = _paths(optimizer.decays(ssast_params), True) | _paths(optimizer.decays(ft_params), True)
  for name in ("encoder/pos_embed", "encoder/token_pos_embed", "encoder/tokens",
               "encoder/mask_embed", "encoder/norm/scale", "encoder/norm/bias",
               "encoder/blocks/norm1/scale", "encoder/blocks/attn/qkv/bias",
               "encoder/patch_embed/bias", "heads/queries", "loss_log_variances"):
    assert name in no_decay, name
  for name in ("encoder/patch_embed/kernel", "encoder/blocks/attn/qkv/kernel",
               "encoder/blocks/mlp/fc1/kernel", "discriminative/fc1/kernel",
               "generative/fc2/kernel"):
    assert name in decay, name
  assert all(n.endswith("kernel") for n in decay)


def test_weight_decay_shrinks_only_decayed_parameters():
  config = finetune.get_config("tiny").optimizer
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            "pos_embed": jnp.ones((2, 2))}
  tx, lr = optimizer.make(config, params, total_steps=10)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  for step in range(3):
    updates, state = tx.update(zero, state, params)
    params = optax.apply_updates(params, updates)
  expected = np.prod([1 - float(lr(s)) * config.weight_decay for s in range(3)])
  np.testing.assert_allclose(params["dense"]["kernel"], expected, rtol=1e-6)
  np.testing.assert_array_equal(params["dense"]["bias"], 1.0)
  np.testing.assert_array_equal(params["pos_embed"], 1.0)
  assert expected < 1.0


def test_schedule_warms_up_for_ten_percent_then_cosine_to_the_end():
  config = finetune.get_config("base").optimizer
  lr = optimizer.schedule(config, 1000)
  assert float(lr(0)) == 0.0
  assert float(lr(50)) == pytest.approx(0.5e-4)
  assert float(lr(100)) == pytest.approx(1e-4)
  assert float(lr(550)) == pytest.approx(0.5e-4, rel=1e-4)  # cosine midpoint
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-12)
  values = [float(lr(s)) for s in range(100, 1001, 50)]
  assert values == sorted(values, reverse=True)


def test_layer_wise_decay_scales_each_block_and_the_embeddings():
  params = _params(multitask.MultiTaskModel(multitask.MultiTaskConfig(encoder=ENCODER)), FEATURES)
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)
  grads = jax.tree.map(jnp.ones_like, params)
  config = finetune.get_config("tiny").optimizer
  config.weight_decay = 0.0
  config.warmup_fraction = 0.0  # the first update at the peak rate

  def first_update(decay):
    config.layer_decay = decay
    tx, _ = optimizer.make(config, params, total_steps=10, depth=2)
    return jax.jit(lambda g: tx.update(g, tx.init(params), params)[0])(grads)

  plain, decayed = first_update(1.0), first_update(0.5)
  ratio = jax.tree.map(lambda a, b: np.asarray(b) / np.asarray(a), plain, decayed)
  # Block i of L=2 gets 0.5 ** (2 - i); embeddings 0.5 ** 3; the rest 1.
  np.testing.assert_allclose(ratio["encoder"]["blocks"]["mlp"]["fc1"]["kernel"][:, 0, 0],
                             [0.25, 0.5], rtol=1e-6)
  np.testing.assert_allclose(ratio["encoder"]["patch_embed"]["kernel"], 0.125, rtol=1e-6)
  np.testing.assert_allclose(ratio["encoder"]["pos_embed"], 0.125, rtol=1e-6)
  np.testing.assert_allclose(ratio["encoder"]["norm"]["scale"], 1.0, rtol=1e-6)
  for leaf in jax.tree.leaves(ratio["heads"]):
    np.testing.assert_allclose(leaf, 1.0, rtol=1e-6)


def test_layer_decay_needs_an_encoder():
  config = finetune.get_config("tiny").optimizer
  config.layer_decay = 0.75
  with pytest.raises(ValueError, match="needs an AST encoder"):
    optimizer.make(config, {"cnn": {"kernel": jnp.ones((2, 2))}}, total_steps=10)


def test_gradients_are_clipped_to_the_global_norm():
  config = finetune.get_config("tiny").optimizer  # grad_clip_norm 1.0
  params = {"w": jnp.zeros((4,))}
  tx, _ = optimizer.make(config, params, total_steps=10)
  _, state = tx.update({"w": jnp.full((4,), 50.0)}, tx.init(params), params)
  mu = state[1][0].mu["w"]  # Adam's first moment saw the clipped gradient: (1 - b1) * g
  np.testing.assert_allclose(np.linalg.norm(mu), (1 - config.b1) * 1.0, rtol=1e-6)
