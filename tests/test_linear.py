"""model.linear: the bf16 matmul's custom VJP (values, gradients, bf16 backward dots), Dense shapes and axis names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import linear


def _xw(seed=0, shape=(3, 5, 64), k_out=48):
  kx, kw = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, shape), jax.random.normal(kw, (shape[-1], k_out)) * 0.1


def test_f32_matmul_is_exact_matmul():
  x, w = _xw()
  np.testing.assert_allclose(linear.matmul(x, w, jnp.float32),
                             np.asarray(x, np.float64) @ np.asarray(w, np.float64), atol=1e-5)


def test_bf16_matmul_values_and_gradients_match_f32_within_bf16_rounding():
  x, w = _xw(1)
  ct = jax.random.normal(jax.random.key(2), (3, 5, 48))
  f = lambda dtype: (lambda x, w: jnp.sum(linear.matmul(x, w, dtype).astype(jnp.float32) * ct))
  y16 = linear.matmul(x, w, jnp.bfloat16)
  assert y16.dtype == jnp.bfloat16
  y32 = linear.matmul(x, w, jnp.float32)
  assert float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max()) < 1e-2
  g16 = jax.grad(f(jnp.bfloat16), argnums=(0, 1))(x, w)
  g32 = jax.grad(f(jnp.float32), argnums=(0, 1))(x, w)
  for a, b in zip(g16, g32):
    assert a.dtype == jnp.float32  # cotangents come back in the parameters' dtype
    assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 2e-2


def _dot_generals(jaxpr):
  """Every dot_general in a jaxpr, including those nested in sub-jaxprs (custom_vjp, pjit)."""
  for e in jaxpr.eqns:
    if e.primitive.name == "dot_general":
      yield e
    for p in e.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _dot_generals(inner)


def test_bf16_backward_matmuls_take_bf16_operands():
  """JAX's default transpose would multiply an f32 cotangent by a bf16 operand (an f32 matmul)."""
  x, w = _xw(3)
  grad = jax.grad(lambda x, w: jnp.sum(linear.matmul(x, w, jnp.bfloat16)), argnums=(0, 1))
  dots = list(_dot_generals(jax.make_jaxpr(grad)(x, w).jaxpr))
  assert len(dots) == 3  # forward (inside the custom_vjp call) + two backward
  for e in dots:
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), e
    assert e.params["preferred_element_type"] == jnp.float32


def test_dense_multi_dimensional_shapes_and_logical_names():
  m = linear.Dense((3, 4, 8), ("embed",), (None, "heads", "kv"))
  x = jnp.ones((2, 7, 16))
  v = m.init(jax.random.key(0), x)
  assert m.apply(v, x).shape == (2, 7, 3, 4, 8)
  assert v["params"]["kernel"].names == ("embed", None, "heads", "kv")
  assert v["params"]["bias"].names == (None, "heads", "kv")
  out = linear.Dense(16, ("heads", "kv"), ("embed",))
  y = jnp.ones((2, 7, 4, 8))
  vo = out.init(jax.random.key(0), y)
  assert vo["params"]["kernel"].value.shape == (4, 8, 16)
  # Contracting two dims equals a reshape + 2-D matmul.
  k = nn.meta.unbox(vo)["params"]["kernel"]
  np.testing.assert_allclose(out.apply(vo, y), y.reshape(2, 7, 32) @ k.reshape(32, 16), atol=1e-5)


def test_dense_rejects_mismatched_axis_names():
  with pytest.raises(ValueError, match="out_axes"):
    linear.Dense((3, 4), ("embed",), ("mlp",)).init(jax.random.key(0), jnp.ones((1, 8)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_outputs_are_named_for_the_remat_policy(dtype, capsys):
  """`remat="dots"` saves matmul outputs by name; the bf16 dot hides inside a custom VJP,
  where the dot-based policies would not see it."""
  policy = jax.checkpoint_policies.save_only_these_names(linear.MATMUL_NAME)
  x, w1, w2 = jnp.ones((4, 8)), jnp.ones((8, 8)), jnp.ones((8, 8))
  f = jax.checkpoint(lambda x, w1, w2: jnp.sum(jnp.tanh(linear.matmul(
      jnp.tanh(linear.matmul(x, w1, dtype)), w2, dtype))), policy=policy)
  jax.ad_checkpoint.print_saved_residuals(f, x, w1, w2)
  assert capsys.readouterr().out.count(f"named '{linear.MATMUL_NAME}'") == 2
