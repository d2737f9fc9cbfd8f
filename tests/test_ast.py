"""model.ast: sizes, patch layout, padding, determinism, precision and memory variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import ast

SMALL = dict(depth=2, num_mel_bins=32, num_frames=64)  # tiny width, 2 layers, 2 x 5 grid


def _params(config, batch=2, seed=0):
  x = jax.random.normal(jax.random.key(seed + 1), (batch, config.num_mel_bins, config.num_frames))
  return jax.jit(ast.Encoder(config).init)(jax.random.key(seed), x), x


def _apply(config, variables, x, **kwargs):
  """Jitted apply: one compilation instead of one per operation (eager Flax is slow on CPU)."""
  static = {k: v for k, v in kwargs.items() if k in ("train", "mutable")}
  dynamic = {k: v for k, v in kwargs.items() if k not in static}
  f = jax.jit(lambda v, x, d: ast.Encoder(config).apply(v, x, **static, **d))
  return f(variables, x, dynamic)


def test_base_has_the_published_parameter_count():
  for stride in (10, 16):
    c = ast.variant("base", freq_stride=stride, time_stride=stride)
    shapes = jax.eval_shape(lambda: ast.Encoder(c).init(
        jax.random.key(0), jnp.zeros((1, 128, 1024))))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert 85e6 < n < 88e6, n
  assert ast.variant("base").grid == (12, 101) and ast.variant("base").num_patches == 1212
  assert ast.variant("base", freq_stride=16, time_stride=16).num_patches == 512


def _naive_patches(x, p, fs, ts):
  b, f, t = x.shape
  gf, gt = (f - p) // fs + 1, (t - p) // ts + 1
  out = np.zeros((b, gf, gt, p * p), x.dtype)
  for i in range(gf):
    for j in range(gt):
      out[:, i, j] = x[:, i * fs:i * fs + p, j * ts:j * ts + p].reshape(b, -1)
  return out


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 2), st.integers(16, 40), st.integers(16, 70), st.integers(4, 16),
       st.integers(4, 16), st.integers(0, 1000))
def test_patchify_equals_a_sliding_window(b, f, t, fs, ts, seed):
  x = np.random.default_rng(seed).normal(size=(b, f, t)).astype(np.float32)
  np.testing.assert_array_equal(ast.patchify(jnp.asarray(x), 16, fs, ts), _naive_patches(x, 16, fs, ts))


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(32, 64), (16, 48), (48, 40)]), st.sampled_from([10, 16]),
       st.sampled_from([0, 1, 2]), st.sampled_from(["tokens", "patches"]))
def test_output_shapes_for_any_size(b, size, stride, tokens, pooling):
  if pooling == "tokens" and tokens == 0:
    return
  c = ast.variant("tiny", depth=1, num_mel_bins=size[0], num_frames=size[1], freq_stride=stride,
                  time_stride=stride, num_tokens=tokens, pooling=pooling)
  v, x = _params(c, b)
  out = _apply(c, v, x)
  assert out["tokens"].shape == (b, tokens + c.num_patches, c.width)
  assert out["pooled"].shape == (b, c.width)
  assert v["params"]["pos_embed"].value.shape == (*c.grid, c.width)


def test_same_seed_same_weights_and_outputs():
  c = ast.variant("tiny", **SMALL)
  (v1, x), (v2, _) = _params(c), _params(c)
  for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v2)):
    np.testing.assert_array_equal(a, b)
  v3, _ = _params(c, seed=5)
  assert not np.array_equal(v1["params"]["pos_embed"].value, v3["params"]["pos_embed"].value)
  np.testing.assert_array_equal(_apply(c, v1, x)["pooled"], _apply(c, v2, x)["pooled"])


def test_dropout_only_in_training_and_seeded():
  c = ast.variant("tiny", **SMALL)
  v, x = _params(c)
  run = lambda k: _apply(c, v, x, train=True, rngs={"dropout": jax.random.key(k)})["pooled"]
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.array_equal(run(1), run(2))
  assert not np.array_equal(run(1), _apply(c, v, x)["pooled"])


def test_padding_does_not_change_the_valid_part():
  """With valid_frames, what is written in the padding cannot reach the outputs."""
  c = ast.variant("tiny", **SMALL, pooling="patches", num_tokens=1)
  v, x = _params(c)
  valid = jnp.array([30, 64])  # clip 0: time patches at 0,10,20 start inside, 30,40 do not
  x_pad = x.at[0, :, 30:].set(0.0)
  x_junk = x.at[0, :, 46:].set(5.0)  # frames 46+ belong only to padded patches (starts 30, 40 > 29)
  a = _apply(c, v, x_pad, valid_frames=valid)
  b = _apply(c, v, x_junk.at[0, :, 30:46].set(0.0), valid_frames=valid)
  np.testing.assert_allclose(a["pooled"], b["pooled"], atol=1e-6)
  mask = np.asarray(a["token_mask"])
  assert mask[0].sum() == 1 + 2 * 3 and mask[1].all()
  # Without valid_frames the junk is attended to.
  assert not np.allclose(_apply(c, v, x_pad)["pooled"][0], _apply(c, v, x_junk)["pooled"][0])


def test_blocked_and_plain_attention_agree_and_plain_returns_maps():
  c = ast.variant("tiny", **SMALL, attention_block_size=4)
  v, x = _params(c)
  valid = jnp.array([64, 25])
  a = _apply(c, v, x, valid_frames=valid)
  b, state = _apply(c.replace(attention="plain"), v, x, valid_frames=valid,
                    mutable=("intermediates",))
  np.testing.assert_allclose(a["tokens"], b["tokens"], atol=1e-5)
  (maps,) = state["intermediates"]["blocks"]["attn"]["attention"]
  assert maps.shape == (c.depth, 2, c.heads, c.length, c.length)


@pytest.mark.slow  # ~20 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_remat_policies_do_not_change_values_or_gradients():
  c = ast.variant("tiny", **SMALL)
  v, x = _params(c)

  def grads(cfg):
    f = lambda p: jnp.sum(ast.Encoder(cfg).apply(p, x, train=True,
                                                 rngs={"dropout": jax.random.key(0)})["pooled"] ** 2)
    return jax.jit(jax.value_and_grad(f))(v)

  ref_loss, ref = grads(c)
  for policy in ("dots", "full"):
    loss, g = grads(c.replace(remat=policy))
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
      # Recomputation reorders float32 sums: equal to ~1e-6 of the gradient's scale.
      assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max()) + 1e-7


def test_bf16_residual_stream_stays_float32():
  c = ast.variant("tiny", **SMALL, dtype="bfloat16")
  v, x = _params(c)
  jaxpr = jax.make_jaxpr(lambda v, x: ast.Encoder(c).apply(v, x))(v, x)
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  assert scans, "layers are expected under one scan"
  carry = scans[0].outvars[0]  # the residual stream carried from layer to layer
  assert carry.aval.dtype == jnp.float32 and carry.aval.shape == (2, c.length, c.width)


def test_bf16_compute_keeps_f32_weights_and_tracks_f32():
  c = ast.variant("tiny", **SMALL, dropout=0.0)
  v, x = _params(c)
  c16 = c.replace(dtype="bfloat16")
  v16, _ = _params(c16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v16))
  out32 = _apply(c, v, x)["pooled"]
  out16 = _apply(c16, v, x)["pooled"]
  assert out16.dtype == jnp.bfloat16
  rel = float(jnp.abs(out16.astype(jnp.float32) - out32).max() / jnp.abs(out32).max())
  assert rel < 0.05, rel


def test_every_parameter_has_logical_axis_names_including_the_layer_axis():
  c = ast.variant("tiny", **SMALL, num_tokens=2)
  x = jnp.zeros((2, c.num_mel_bins, c.num_frames))
  v = jax.eval_shape(lambda: ast.Encoder(c).init(
      jax.random.key(0), x, patch_mask=jnp.zeros((2, c.num_patches), bool)))
  boxed = jax.tree.leaves(v["params"], is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(a, nn.LogicallyPartitioned) for a in boxed)
  for a in boxed:
    assert len(a.names) == a.value.ndim
  blocks = v["params"]["blocks"]
  assert blocks["attn"]["qkv"]["kernel"].names == ("layers", "embed", None, "heads", "kv")
  assert blocks["mlp"]["fc1"]["kernel"].value.shape == (c.depth, c.width, c.mlp_dim)
  # The names map to a mesh: FSDP over embed, tensor parallel over heads/mlp.
  rules = (("embed", "fsdp"), ("heads", "model"), ("mlp", "model"), ("layers", None), ("kv", None))
  specs = nn.get_partition_spec(v)
  spec = nn.logical_to_mesh_axes(specs["params"]["blocks"]["attn"]["qkv"]["kernel"], rules)
  assert tuple(spec) == (None, "fsdp", None, "model", None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=100, heads=3), "divisible"), (dict(num_tokens=3), "num_tokens"),
    (dict(pooling="max"), "pooling"), (dict(num_tokens=0), "pooling='tokens'"),
    (dict(attention="flash"), "attention"), (dict(remat="some"), "remat"),
    (dict(dtype="float16"), "dtype"), (dict(num_frames=8), "frames")])
def test_bad_configs_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ast.variant("tiny", **kwargs)


def test_wrong_input_shape_and_unknown_variant_are_refused():
  c = ast.variant("tiny", **SMALL)
  with pytest.raises(ValueError, match=r"\[batch, 32, 64\]"):
    ast.Encoder(c).init(jax.random.key(0), jnp.zeros((1, 64, 32)))
  with pytest.raises(ValueError, match="unknown encoder variant"):
    ast.variant("huge")


@pytest.mark.slow
def test_base_stride_10_forward_and_gradient_at_full_size():
  c = ast.variant("base", remat="dots")
  x = jax.random.normal(jax.random.key(0), (1, 128, 1024))
  v = jax.jit(ast.Encoder(c).init)(jax.random.key(1), x)
  f = jax.jit(jax.value_and_grad(lambda p: jnp.mean(ast.Encoder(c).apply(p, x)["pooled"] ** 2)))
  loss, g = f(v)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
