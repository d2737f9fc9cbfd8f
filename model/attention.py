"""Multi-head dot-product attention kernels, `[batch, length, heads, head_dim]` in and out.

  plain    materialises the `[batch, heads, q, k]` probabilities: the reference,
           and the kernel that returns them (attention maps, cross-task heads).
  blocked  memory-efficient self-attention for the encoder (measured choices in
           BUILD_NOTES.md, "Attention on CPU"):
           * q, k, v go heads-first once (`[B, H, N, D]`, a cheap N·D transpose),
             so no `[N, N]`-sized transpose or copy appears in the HLO (plain
             einsum attention makes XLA transpose the probabilities for P·V).
           * queries are processed in balanced blocks of ~`block_size` rows, one
             example, `heads_per_step` heads (default one) and one block per loop
             step: the `[heads_per_step, Q, N]` score block stays in cache. Larger
             blocks were slower: batching examples into the block made it B times
             larger and 3x slower at B = 8, and all heads in one step (before
             2026-12-04) ran fwd+bwd 1.2-1.7x slower than one head a step at
             N = 1214, 6 and 12 heads. XLA:CPU fuses dot + max + sub + exp on it.
           * the block loops are unrolled when one step's scores, all its blocks
             together, fit in `UNROLL_MAX_SCORE_BYTES` (one bound forward, one
             backward): at N = 514 (stride 16) the straight-line blocks ran fwd+bwd
             1.2-1.4x faster than the loop; at N = 1214 (stride 10) the forward
             alone 1.1-1.2x faster, fwd+bwd up to 1.3x slower (the backward's
             blocks, each with its dk/dv update, no longer stay in cache). Measured:
             BUILD_NOTES.md, "Attention on CPU".
           * a custom VJP saves only the output and the per-row log-sum-exp and
             recomputes each block's probabilities in the backward pass
             (flash-attention style), so training memory is O(B·H·N·D) instead
             of O(B·H·N²) per layer (2.2 GB -> 0.17 GB per layer at B = 8,
             N = 1214).
           * the backward works on the *transposed* score block Sᵀ = K·q_blkᵀ so
             every dot contracts its left operand's minor dimension: XLA:CPU
             keeps such bf16 x bf16 -> f32 dots in bf16 but silently upcasts
             dots with a transposed left operand to f32.
  fused    `jax.nn.dot_product_attention`: one batched kernel over all examples and
           heads, the `[B, H, N, N]` probabilities materialised per layer. On a GPU or
           TPU it beats `blocked`, whose loops run B x heads x blocks small steps one
           after the other on a chip built for one large one (BUILD_NOTES.md,
           "Model benchmark", the H200 figures). Rematerialised, so only one
           layer's probabilities (2.3 GB in f32 at B = 32, N = 1214) are alive at a
           time.

`resolve(name)` turns the config's "auto" into `blocked` on a CPU and `fused` elsewhere.

All take an optional key mask `[batch, k]` (True = attend); masked keys get a
large negative logit, so a query never attends to padding. Softmax and
accumulation are always float32; with bf16 inputs the matmul operands are bf16
(probabilities rounded to bf16 before P·V, as PyTorch's bf16 SDPA does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
_NEG = -1e30  # finite: exp underflows to 0 without producing NaN for all-masked rows


def _mm(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum accumulated in float32; bf16 operands stay bf16."""
  return jnp.einsum(spec, a, b, preferred_element_type=_F32)


def plain(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
          *, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Returns `(out [B, q, H, D] in dtype, probabilities [B, H, q, k] float32)`."""
  scale = q.shape[-1] ** -0.5
  logits = _mm("bqhd,bkhd->bhqk", (q * scale).astype(dtype), k.astype(dtype))
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1)
  out = _mm("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype))
  return out.astype(dtype), probs


def _plan_blocks(n: int, block_size: int) -> tuple[int, int]:
  """`(number of blocks, block length)`, balanced and a multiple of 8 so padding is small
  (N = 514 -> 5 x 104, N = 1214 -> 10 x 128 at block_size 128)."""
  nb = max(1, -(-n // block_size))
  q = -(-n // nb)
  return nb, -(-q // 8) * 8


def _to_blocks(x: jax.Array, q: int) -> jax.Array:
  """`[H, nb·Q, X] -> [nb, H, Q, X]`."""
  h, n, d = x.shape
  return x.reshape(h, n // q, q, d).transpose(1, 0, 2, 3)


def _from_blocks(x: jax.Array) -> jax.Array:
  """`[nb, H, Q, X] -> [H, nb·Q, X]`."""
  nb, h, q, d = x.shape
  return x.transpose(1, 0, 2, 3).reshape(h, nb * q, d)


def _forward_one(qh, kh, vh, bias, q_blk, unroll):
  """One loop step (an example's head group): qh `[H, Np, D]` (pre-scaled), kh/vh `[H, N, D]`,
  bias `[1, 1, N]` -> out `[H, Np, D]`, log-sum-exp `[H, Np, 1]`."""
  dt = qh.dtype

  def block(_, qb):  # [H, Q, D]
    s = _mm("hqd,hkd->hqk", qb, kh) + bias  # [H, Q, N] float32
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    l = jnp.sum(e, axis=-1, keepdims=True)
    o = _mm("hqk,hkd->hqd", e.astype(dt), vh) / l  # normalise the small output, not the block
    return None, (o.astype(dt), m + jnp.log(l))

  _, (o, lse) = lax.scan(block, None, _to_blocks(qh, q_blk), unroll=unroll)
  return _from_blocks(o), _from_blocks(lse)


def _backward_one(qh, kh, vh, bias, o, lse, do, q_blk, unroll):
  """One loop step's flash-style backward, one query block per scan step (see module doc)."""
  dt = qh.dtype
  delta = jnp.sum(do.astype(_F32) * o.astype(_F32), axis=-1, keepdims=True)  # sum_j P_ij dP_ij
  do = do.astype(dt)
  bias_t = jnp.swapaxes(bias, -1, -2)  # [1, N, 1]
  k_t = jnp.swapaxes(kh, -1, -2)  # [H, D, N], once

  def step(carry, xs):
    dk, dv = carry
    qb, dob, lseb, deltab = xs  # lseb, deltab: [H, 1, Q]
    pt = jnp.exp(_mm("hkd,hqd->hkq", kh, qb) + bias_t - lseb)  # Pᵀ, float32
    dv = dv + _mm("hkq,hqd->hkd", pt.astype(dt), dob)
    dst = (pt * (_mm("hkd,hqd->hkq", vh, dob) - deltab)).astype(dt)  # dSᵀ
    dk = dk + _mm("hkq,hqd->hkd", dst, qb)
    dq_t = _mm("hdk,hkq->hdq", k_t, dst)  # [H, D, Q]
    # Without the barrier XLA folds the small transpose below into the dot, giving a
    # layout YNNPACK rejects; the fallback has no bf16 x bf16 -> f32 kernel and fails
    # at run time ("Unsupported element type for DotThunk::Execute").
    dq_t = lax.optimization_barrier(dq_t)
    return (dk, dv), jnp.swapaxes(dq_t, -1, -2)

  blk = lambda x: _to_blocks(x, q_blk)
  zeros = jnp.zeros(kh.shape, _F32)
  xs = (blk(qh), blk(do), jnp.swapaxes(blk(lse), -1, -2), jnp.swapaxes(blk(delta), -1, -2))
  (dk, dv), dq = lax.scan(step, (zeros, zeros), xs, unroll=unroll)
  return _from_blocks(dq).astype(dt), dk.astype(dt), dv.astype(dt)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_core(qh, kh, vh, bias, q_blk, unroll):
  """qh `[S, H, Np, D]` pre-scaled, kh/vh `[S, H, N, D]`, bias `[S, 1, 1, N]` -> `[S, H, Np, D]`
  (S loop steps: examples x head groups); `unroll`: (forward, backward) block loops unrolled."""
  return _blocked_fwd(qh, kh, vh, bias, q_blk, unroll)[0]


def _blocked_fwd(qh, kh, vh, bias, q_blk, unroll):
  # One (example, head group) a step.
  o, lse = lax.map(lambda x: _forward_one(*x, q_blk, unroll[0]), (qh, kh, vh, bias))
  return o, (qh, kh, vh, bias, o, lse)


def _blocked_bwd(q_blk, unroll, res, do):
  qh, kh, vh, bias, o, lse = res
  dq, dk, dv = lax.map(lambda x: _backward_one(*x, q_blk, unroll[1]),
                       (qh, kh, vh, bias, o, lse, do))
  return dq, dk, dv, jnp.zeros_like(bias)


_blocked_core.defvjp(_blocked_fwd, _blocked_bwd)


# One loop step's float32 scores, all its query blocks, up to which the block loop is
# unrolled, forward and backward: one head at N = 1214 (5.9 MB) is unrolled forward, not
# backward; at N = 514 (1.1 MB) both are.
UNROLL_MAX_SCORE_BYTES = {"forward": 8 * 2**20, "backward": 2 * 2**20}


def blocked(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
            *, dtype=jnp.float32, block_size: int = 128, heads_per_step: int | None = 1,
            unroll: bool | None = None) -> jax.Array:
  """Memory-efficient attention; equals `plain(...)[0]` to float rounding. Returns `[B, q, H, D]`.

  `heads_per_step`: heads computed together in one loop step (a divisor of the head count;
  None: all). `unroll`: the query-block loops (forward and backward) as straight-line code;
  None decides each by the step's scores' size (`UNROLL_MAX_SCORE_BYTES`). Both: module doc."""
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  b, n, h, d = q.shape
  hs = h if heads_per_step is None else heads_per_step
  if hs < 1 or h % hs:
    raise ValueError(f"heads_per_step must divide the {h} heads, got {heads_per_step}")
  if unroll is None:
    scores = 4 * hs * n * k.shape[1]
    loops = tuple(scores <= UNROLL_MAX_SCORE_BYTES[p] for p in ("forward", "backward"))
  else:
    loops = (bool(unroll), bool(unroll))
  q = (q * d ** -0.5).astype(dtype)
  k, v = k.astype(dtype), v.astype(dtype)
  nb, q_blk = _plan_blocks(n, block_size)
  if nb * q_blk != n:  # pad queries only: keys are never padded, so padding needs no mask
    q = jnp.pad(q, ((0, 0), (0, nb * q_blk - n), (0, 0), (0, 0)))
  qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  if key_mask is None:
    bias = jnp.zeros((b, 1, 1, k.shape[1]), _F32)
  else:
    bias = jnp.where(key_mask, 0.0, _NEG).astype(_F32)[:, None, None, :]
  # [B, H, ., .] -> [B·H/hs, hs, ., .] (free: heads are the major axis after the transpose),
  # so the loop over examples is a loop over (example, head group).
  qh, kh, vh = (x.reshape(b * (h // hs), hs, *x.shape[2:]) for x in (qh, kh, vh))
  bias = jnp.repeat(bias, h // hs, axis=0)
  out = _blocked_core(qh, kh, vh, lax.stop_gradient(bias), q_blk, loops)
  return out.reshape(b, h, *out.shape[2:]).transpose(0, 2, 1, 3)[:, :n]


# Rematerialised: the backward recomputes the probabilities from q, k and v instead of
# keeping them for every layer (as flash attention and PyTorch's SDPA do). Kept, they took
# 95 GB at base, stride 10, B = 32, f32 on an H200 and ran out of memory.
@jax.checkpoint
def _fused_core(q, k, v, mask):
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


def fused(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
          *, dtype=jnp.float32) -> jax.Array:
  """`jax.nn.dot_product_attention` (XLA): equals `plain(...)[0]`. Returns `[B, q, H, D]`."""
  mask = None if key_mask is None else key_mask[:, None, None, :]
  return _fused_core(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask).astype(dtype)


KERNELS = ("auto", "blocked", "plain", "fused")


def resolve(name: str) -> str:
  """The kernel a config's `attention` runs on the default backend: "auto" is "blocked" on a
  CPU (memory-efficient, measured fastest there) and "fused" on a GPU or TPU."""
  if name not in KERNELS:
    raise ValueError(f"attention must be one of {KERNELS}, got {name!r}")
  if name != "auto":
    return name
  return "blocked" if jax.default_backend() == "cpu" else "fused"
