"""model.attention: the blocked kernel equals the plain one (values and gradients), masks work."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import attention


def _qkv(seed, b, n, h, d, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (b, n, h, d), dtype) for k in ks]


def _naive(q, k, v, key_mask=None):
  """Loop-free numpy reference in float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if key_mask is not None:
    s = np.where(np.asarray(key_mask)[:, None, None, :], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 2), st.integers(1, 70), st.integers(1, 3), st.sampled_from([4, 8]),
       st.sampled_from([8, 16, 32]), st.integers(0, 2**16))
def test_blocked_equals_naive_for_any_length_and_block(b, n, h, d, block, seed):
  q, k, v = _qkv(seed, b, n, h, d)
  mask = jax.random.bernoulli(jax.random.key(seed + 1), 0.7, (b, n)).at[:, 0].set(True)
  for m in (None, mask):
    want = _naive(q, k, v, m)
    for heads, unroll in ((1, False), (1, True), (None, False)):  # all four: gradient test
      got = attention.blocked(q, k, v, m, block_size=block, heads_per_step=heads, unroll=unroll)
      np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(attention.plain(q, k, v, m)[0], want, atol=2e-5)
    np.testing.assert_allclose(attention.fused(q, k, v, m), want, atol=2e-5)


def test_blocked_gradients_equal_plain():
  q, k, v = _qkv(0, 2, 45, 4, 8)
  mask = jnp.arange(45)[None, :] < jnp.array([[45], [30]])
  ct = jax.random.normal(jax.random.key(9), q.shape)
  f_plain = lambda q, k, v: jnp.sum(attention.plain(q, k, v, mask)[0] * ct)
  f_block = lambda q, k, v, **kw: jnp.sum(attention.blocked(q, k, v, mask, block_size=16, **kw)
                                          * ct)
  f_fused = lambda q, k, v: jnp.sum(attention.fused(q, k, v, mask) * ct)
  g1 = jax.grad(f_plain, argnums=(0, 1, 2))(q, k, v)
  blocks = [functools.partial(f_block, heads_per_step=heads, unroll=unroll)
            for heads in (1, 2, None) for unroll in (False, True)]
  for f in (*blocks, f_fused):
    g2 = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g1, g2):
      np.testing.assert_allclose(a, b, atol=2e-5)


def test_masked_keys_get_no_weight_and_their_values_do_not_matter():
  q, k, v = _qkv(1, 1, 20, 2, 8)
  mask = jnp.arange(20)[None] < 12
  out, probs = attention.plain(q, k, v, mask)
  assert float(jnp.abs(probs[..., 12:]).max()) == 0.0
  v2 = v.at[:, 12:].set(1e3)
  k2 = k.at[:, 12:].set(-7.0)
  np.testing.assert_array_equal(attention.blocked(q, k2, v2, mask, block_size=8),
                                attention.blocked(q, k, v, mask, block_size=8))


def test_probabilities_sum_to_one():
  q, k, v = _qkv(2, 2, 33, 3, 4)
  _, probs = attention.plain(q, k, v)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kernel", ["blocked", "fused"])
def test_bf16_close_to_f32(kernel):
  q, k, v = _qkv(3, 1, 130, 2, 16)
  want = _naive(q, k, v)
  kwargs = dict(block_size=64) if kernel == "blocked" else {}
  bf16 = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  got = getattr(attention, kernel)(*bf16, dtype=jnp.bfloat16, **kwargs)
  assert got.dtype == jnp.bfloat16
  rel = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
  assert rel < 2e-2, rel


def test_auto_is_blocked_on_a_cpu_and_names_are_checked(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert attention.resolve("auto") == "blocked"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.resolve("auto") == "fused"
  assert attention.resolve("plain") == "plain"
  with pytest.raises(ValueError, match="attention must be one of"):
    attention.resolve("flash")


def test_blocked_keeps_memory_to_one_block():
  """The compiled backward pass must not hold all [B, H, N, N] probabilities at once."""
  b, n, h, d = 1, 1024, 4, 16
  q, k, v = _qkv(4, b, n, h, d)
  f = lambda fn: jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
  full = f(lambda q, k, v: attention.plain(q, k, v)[0]).lower(q, k, v).compile()
  blocked = f(lambda q, k, v: attention.blocked(q, k, v, block_size=128)).lower(q, k, v).compile()
  probs_bytes = b * h * n * n * 4
  block_bytes = b * h * 128 * n * 4
  full_temp = full.memory_analysis().temp_size_in_bytes
  blocked_temp = blocked.memory_analysis().temp_size_in_bytes
  assert full_temp >= probs_bytes
  # A few block-sized buffers (logits, probabilities and their cotangents), never all N rows.
  assert blocked_temp <= 6 * block_bytes < full_temp, (blocked_temp, block_bytes, full_temp)


def _loops(n, h, **kw) -> list[tuple[int, bool]]:
  """`(steps, unrolled)` of the blocked kernel's loops (forward and backward, one example):
  the loop over head groups, and inside it the loop over query blocks."""
  q, k, v = (jax.ShapeDtypeStruct((1, n, h, 64), jnp.float32) for _ in range(3))
  grad = jax.grad(lambda q, k, v: jnp.sum(attention.blocked(q, k, v, block_size=256, **kw)),
                  argnums=(0, 1, 2))
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "scan":
        found.append((eqn.params["length"], eqn.params["unroll"] >= eqn.params["length"] > 1))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(grad)(q, k, v).jaxpr)
  return found


def test_one_head_a_step_and_blocks_unrolled_only_where_the_scores_are_small():
  # Stride 16 (N = 514, 3 blocks): one head a step, its blocks unrolled (measured faster).
  assert _loops(514, 6) == [(6, False), (3, True)] * 2
  # Stride 10 (N = 1214, 5 blocks): forward unrolled, backward looped (each measured faster).
  assert _loops(1214, 3) == [(3, False), (5, True), (3, False), (5, False)]
  # All six heads in one step (6.3 MB of scores): small enough forward only.
  assert _loops(514, 6, heads_per_step=None) == [(1, False), (3, True), (1, False), (3, False)]
  assert _loops(514, 6, heads_per_step=2, unroll=True) == [(3, False), (3, True)] * 2
  assert _loops(1214, 3, unroll=False) == [(3, False), (5, False)] * 2
  bounds = attention.UNROLL_MAX_SCORE_BYTES
  assert 4 * 514 * 514 <= bounds["backward"] < 4 * 1214 * 1214 <= bounds["forward"]


@pytest.mark.parametrize("heads", [0, 4, -1])
def test_heads_per_step_must_divide_the_heads(heads):
  q, k, v = _qkv(5, 1, 8, 6, 4)
  with pytest.raises(ValueError, match="heads_per_step must divide the 6 heads"):
    attention.blocked(q, k, v, heads_per_step=heads)


@pytest.mark.parametrize("block", [0, -4])
def test_bad_block_size_is_refused(block):
  q, k, v = _qkv(5, 1, 8, 1, 4)
  with pytest.raises(ValueError, match="block_size"):
    attention.blocked(q, k, v, block_size=block)


@pytest.mark.parametrize("heads,unroll", [(1, False), (1, True), (None, False)])
def test_bf16_backward_runs_and_tracks_f32(heads, unroll):
  """The bf16 backward must compile and run (XLA:CPU has no fallback for some bf16 dot layouts)."""
  q, k, v = _qkv(6, 2, 70, 2, 16)
  ct = jax.random.normal(jax.random.key(1), q.shape)
  f = lambda dtype: jax.jit(jax.grad(lambda q, k, v: jnp.sum(
      attention.blocked(q, k, v, dtype=dtype, block_size=32, heads_per_step=heads,
                        unroll=unroll).astype(jnp.float32) * ct), argnums=(0, 1, 2)))
  g16 = f(jnp.bfloat16)(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
  g32 = f(jnp.float32)(q, k, v)
  for a, b in zip(g16, g32):
    assert a.dtype == jnp.bfloat16
    rel = float(jnp.abs(a.astype(jnp.float32) - b).max() / jnp.abs(b).max())
    assert rel < 3e-2, rel
