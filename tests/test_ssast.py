"""model.ssast: InfoNCE against a naive implementation, masked inputs hidden, the loss formula, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import ast, ssast

ENC = ast.variant("tiny", depth=2, num_mel_bins=32, num_frames=128, freq_stride=16, time_stride=16,
                  num_tokens=1, pooling="patches", dropout=0.0)  # grid 2 x 8 = 16 patches
CFG = ssast.SSASTConfig(encoder=ENC, num_masked=6)


def _naive_info_nce(pred, target, weights):
  pred, target, weights = (np.asarray(a, np.float64) for a in (pred, target, weights))
  losses, correct, total = 0.0, 0.0, 0.0
  for b in range(pred.shape[0]):
    valid = np.flatnonzero(weights[b] > 0)
    for i in valid:
      scores = np.array([pred[b, i] @ target[b, j] for j in valid])
      own = list(valid).index(i)
      m = scores.max()
      losses += -(scores[own] - m - np.log(np.exp(scores - m).sum()))
      correct += float(np.argmax(scores) == own)
      total += 1
  return losses / total, correct / total


def test_info_nce_matches_a_naive_loop():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  pred = jax.random.normal(k1, (3, 7, 10))
  target = pred + 0.8 * jax.random.normal(k2, (3, 7, 10))  # partly predictable
  weights = (jax.random.uniform(k3, (3, 7)) > 0.25).astype(jnp.float32).at[:, 0].set(1.0)
  for w in (jnp.ones((3, 7)), weights):
    loss, acc = ssast.info_nce(pred, target, w)
    want_loss, want_acc = _naive_info_nce(pred, target, w)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(acc) == pytest.approx(want_acc, abs=1e-6)
    assert 0 < want_acc < 1  # the check covers both outcomes


def test_perfect_predictions_score_full_accuracy():
  target = jax.random.normal(jax.random.key(1), (2, 9, 16)) * 5
  loss, acc = ssast.info_nce(target, target)
  assert float(acc) == 1.0 and float(loss) < 1e-3


def _init(seed=0, batch=2):
  x = jax.random.normal(jax.random.key(seed + 100), (batch, 32, 128))
  model = ssast.SSAST(CFG)
  variables = model.init({"params": jax.random.key(seed), "masking": jax.random.key(1)}, x)
  return model, variables, x


def test_outputs_loss_formula_and_mask_ratio():
  model, variables, x = _init()
  out = model.apply(variables, x, rngs={"masking": jax.random.key(3)})
  assert out["mask"].shape == (2, 16) and out["indices"].shape == (2, 6)
  np.testing.assert_array_equal(out["mask"].sum(1), 6)
  assert float(out["loss"]) == pytest.approx(float(out["info_nce"] + 10.0 * out["mse"]), rel=1e-6)
  assert 0.0 <= float(out["accuracy"]) <= 1.0
  assert variables["params"]["encoder"]["mask_embed"].value.shape == (ENC.width,)
  assert set(variables["params"]) == {"encoder", "discriminative", "generative"}


def test_encoder_never_sees_the_masked_patches():
  """Changing the spectrogram inside masked patches changes only the targets, not the encoder."""
  model, variables, x = _init()
  rngs = {"masking": jax.random.key(4)}
  out = model.apply(variables, x, rngs=rngs)
  mask = np.asarray(out["mask"]).reshape(2, 2, 8)
  pixel_mask = np.kron(mask, np.ones((16, 16))).astype(bool)  # [2, 32, 128]
  x2 = jnp.where(pixel_mask, x + 3.0, x)
  enc = ast.Encoder(ENC)
  enc_vars = {"params": variables["params"]["encoder"]}
  t1 = enc.apply(enc_vars, x, patch_mask=out["mask"])["tokens"]
  t2 = enc.apply(enc_vars, x2, patch_mask=out["mask"])["tokens"]
  np.testing.assert_array_equal(t1, t2)
  out2 = model.apply(variables, x2, rngs=rngs)
  assert float(out2["mse"]) != float(out["mse"])  # ...while the targets did change


def test_padded_patches_get_no_weight():
  model, variables, x = _init()
  # 40 valid frames -> 3 of 8 time patches (24..40 frames hold signal) -> 6 valid patches.
  out = model.apply(variables, x, valid_frames=jnp.array([40, 128]), rngs={"masking": jax.random.key(5)})
  valid = np.asarray(ast.patch_validity(jnp.array([40, 128]), ENC))
  assert valid[0].sum() == 6
  assert np.asarray(out["mask"])[0][valid[0]].all()  # the 6 valid patches are exactly the masked ones
  x2 = x.at[0, :, 48:].set(9.0)  # change only padding of clip 0
  out2 = model.apply(variables, x2, valid_frames=jnp.array([40, 128]), rngs={"masking": jax.random.key(5)})
  assert float(out2["loss"]) == pytest.approx(float(out["loss"]), rel=1e-6)


@pytest.mark.slow  # ~20 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_a_few_adam_steps_reduce_the_loss():
  """On spectrograms whose masked patches are predictable from context (a level per mel band
  plus a moving ripple), the reconstruction error must fall (1.03 -> 0.63 measured)."""
  model, variables, _ = _init(batch=4)
  k1, k2 = jax.random.split(jax.random.key(5))
  bands = jax.random.normal(k1, (4, 32, 1))
  phase = jax.random.uniform(k2, (4, 1, 1)) * 6.28
  x = bands + 0.5 * jnp.sin(jnp.arange(128)[None, None, :] / 9.0 + phase)
  params = variables["params"]
  tx = optax.adamw(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    loss_fn = lambda p: model.apply({"params": p}, x, train=True,
                                    rngs={"masking": key, "dropout": key})["loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  fixed = jax.random.key(11)
  start = model.apply({"params": params}, x, rngs={"masking": fixed})
  for i in range(40):
    params, opt, _ = step(params, opt, jax.random.fold_in(jax.random.key(0), i))
  end = model.apply({"params": params}, x, rngs={"masking": fixed})
  assert float(end["mse"]) < 0.8 * float(start["mse"]), (start["mse"], end["mse"])
  assert float(end["loss"]) < float(start["loss"])


def test_masking_rng_is_required():
  model, variables, x = _init()
  with pytest.raises(Exception, match="masking"):
    model.apply(variables, x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(encoder=ENC.replace(freq_stride=10, time_stride=10)), "non-overlapping"),
    (dict(encoder=ENC, num_masked=17), "num_masked"), (dict(encoder=ENC, num_masked=0), "num_masked")])
def test_configs_that_would_leak_or_overflow_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ssast.SSASTConfig(**kwargs)


def test_transcription_alone_ignores_the_mask_count():
  """Without SSAST's objective nothing is masked: a count that would not fit the window
  (the base config's 400 on a 256-patch window) is not an error; with SSAST it is."""
  e = ast.variant("tiny", num_frames=512, freq_stride=16, time_stride=16, num_tokens=1,
                  pooling="patches")
  ssast.SSASTConfig(encoder=e, num_masked=400, ssast_weight=0.0, transcription_weight=1.0)
  with pytest.raises(ValueError, match="num_masked"):
    ssast.SSASTConfig(encoder=e, num_masked=400)
