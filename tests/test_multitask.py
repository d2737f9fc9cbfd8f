"""model.multitask: every backbone x head trains on a learnable toy task; SSAST weights load by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import ast, baselines, multitask, posemb, ssast

ENC = ast.variant("tiny", depth=2, num_mel_bins=32, num_frames=64, dropout=0.0)
CNN = baselines.CNNConfig(channels=(8, 16, 32, 32, 64), width=64)  # the 5-block net, narrower


def _toy(b=8, seed=0):
  """Labels that the spectrogram determines: dimension d is the mean level of a mel band."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  levels = jax.random.normal(k1, (b, 19))
  band_of = jnp.arange(32) % 19
  x = levels[:, band_of][:, :, None] + 0.3 * jax.random.normal(k2, (b, 32, 64))
  return x, levels, jnp.ones((b, 19), bool)


# The AST combinations and the cheapest baseline run by default; the other
# baseline combinations (~90 s of compiling) run with the slow checks.
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("backbone,head", [
    ("ast", "grouped"), pytest.param("ast", "flat", marks=_SLOW), pytest.param("cnn", "grouped", marks=_SLOW),
    pytest.param("cnn", "flat", marks=_SLOW), pytest.param("pooled_stats", "grouped", marks=_SLOW),
    ("pooled_stats", "flat")])
def test_every_backbone_and_head_learns_the_toy_task(backbone, head):
  cfg = multitask.MultiTaskConfig(backbone=backbone, head=head, encoder=ENC, cnn=CNN)
  model = multitask.MultiTaskModel(cfg)
  x, y, mask = _toy()
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  tx = optax.adamw(3e-3)
  opt = tx.init(params)

  def loss_fn(p):
    out = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
    return multitask.loss(out, y, mask, None, cfg)

  @jax.jit
  def step(params, opt):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, metrics

  out = jax.jit(model.apply)({"params": params}, x)
  assert out["predictions"].shape == (8, 19) and out["log_variances"].shape == (3,)
  start = None
  for _ in range(60):
    params, opt, metrics = step(params, opt)
    start = start or {k: float(v) for k, v in metrics.items()}
  assert set(metrics) == {"loss", "mse/timing", "mse/dynamics", "mse/expression",
                          "weight/timing", "weight/dynamics", "weight/expression"}
  for g in ("timing", "dynamics", "expression"):
    assert float(metrics[f"mse/{g}"]) < 0.5 * start[f"mse/{g}"], (g, start, metrics)


def test_fixed_weighting_has_no_learned_parameters():
  cfg = multitask.MultiTaskConfig(encoder=ENC, adaptive_weighting=False,
                                  loss_weights=(("timing", 2.0),))
  model = multitask.MultiTaskModel(cfg)
  x, y, mask = _toy(2)
  v = jax.jit(model.init)(jax.random.key(0), x)
  assert "loss_log_variances" not in v["params"]
  out = jax.jit(model.apply)(v, x)
  total, metrics = multitask.loss(out, y, mask, None, cfg)
  assert float(metrics["weight/timing"]) == 2.0
  want = 2.0 * metrics["mse/timing"] + metrics["mse/dynamics"] + metrics["mse/expression"]
  assert float(total) == pytest.approx(float(want), rel=1e-6)


def test_same_seed_same_model():
  cfg = multitask.MultiTaskConfig(encoder=ENC)
  model = multitask.MultiTaskModel(cfg)
  x, _, _ = _toy(2)
  a = jax.jit(model.init)(jax.random.key(4), x)
  b = jax.jit(model.init)(jax.random.key(4), x)
  for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(p, q)


def test_ssast_encoder_weights_load_by_name_after_a_stride_change():
  """Pre-train at stride 16 with one token, fine-tune at stride 10: same names, resized grid."""
  pre_enc = ENC.replace(freq_stride=16, time_stride=16, num_tokens=1, pooling="patches")
  pre = ssast.SSAST(ssast.SSASTConfig(encoder=pre_enc, num_masked=4))
  x, _, _ = _toy(2)
  pre_params = nn.meta.unbox(jax.jit(pre.init)({"params": jax.random.key(0),
                                                "masking": jax.random.key(1)}, x)["params"])
  cfg = multitask.MultiTaskConfig(encoder=ENC.replace(num_tokens=1, pooling="patches"))
  model = multitask.MultiTaskModel(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(2), x)["params"])
  source = dict(pre_params["encoder"])
  source.pop("mask_embed")
  source["pos_embed"] = posemb.resize_grid(source["pos_embed"], ENC.grid)
  target = params["encoder"]
  assert jax.tree.structure(source) == jax.tree.structure(target)
  for a, b in zip(jax.tree.leaves(source), jax.tree.leaves(target)):
    assert a.shape == b.shape
  params = {**params, "encoder": source}
  out = jax.jit(model.apply)({"params": params}, x)
  assert np.isfinite(np.asarray(out["predictions"])).all()


@pytest.mark.parametrize("kwargs,match", [(dict(backbone="rnn"), "backbone"), (dict(head="deep"), "head"),
                                          (dict(groups=(("a", (0, 1)),)), "exactly once"),
                                          (dict(loss_weights=(("timing", 2.0),)), "ignored"),
                                          (dict(head_depth=0), "head_depth")])
def test_bad_configs_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    multitask.MultiTaskConfig(**kwargs)
