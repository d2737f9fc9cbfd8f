"""AST speed: our Flax encoder against `transformers`' PyTorch ASTModel, in one run.

  python benchmarks/model_speed.py [--variants tiny,small,base] [--strides 16,10]
      [--dtypes float32,bfloat16] [--batch 1] [--reps 5] [--json out.json]

For every (variant, patch stride, dtype): seconds per window for the forward
pass (inference) and for a training step (forward + backward + AdamW on a
19-output regression head over the pooled embedding), for

  flax   model.ast.Encoder (blocked attention; bf16 = bf16 compute, f32 master
         weights), jitted once, the train state donated (updated in place, as
         torch.optim does), results blocked on.
  torch  transformers.ASTModel with SDPA attention + nn.Linear + torch.optim.AdamW
         (bf16 = torch.autocast on CPU, the standard mixed-precision recipe),
         torch.set_num_threads = the cores JAX uses.

Timings alternate between the two frameworks in blocks of reps, twice, with a
pause before each block (median of `--reps` after warm-up); the ratio column is
torch time / flax time (> 1: Flax faster). FLOPs are the matmul-type FLOPs of
one window (2 per multiply-add; a training step counts 3x the forward); % peak
is against the matmul peak measured for each framework and dtype in the same
run (1024³ matmuls).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax
import torch
import transformers

from model import ast


def flops_per_window(c: ast.EncoderConfig) -> float:
  n, d = c.length, c.width
  per_layer = 2 * n * (4 * d * d + 2 * d * c.mlp_dim) + 4 * n * n * d
  return c.depth * per_layer + 2 * c.num_patches * c.patch_size ** 2 * d


def _times(fn, reps: int) -> list[float]:
  """Wall-clock seconds of each of `reps` calls of `fn`."""
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def matmul_peaks(reps: int = 20) -> dict[str, float]:
  """Best 1024³ matmul rate per framework and dtype (FLOP/s); the best of many reps, because
  a noisy neighbour only ever makes a rep slower."""
  n = 1024
  flops = 2 * n ** 3
  a = jax.random.normal(jax.random.key(0), (n, n))
  peaks = {}
  f32 = jax.jit(lambda a: a @ a)
  bf16 = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
  ab = a.astype(jnp.bfloat16)
  for name, fn, x in (("flax/float32", f32, a), ("flax/bfloat16", bf16, ab)):
    fn(x).block_until_ready()
    peaks[name] = flops / min(_times(lambda: fn(x).block_until_ready(), reps))
  t = torch.randn(n, n)
  tb = t.bfloat16()
  for name, x, n_reps in (("torch/float32", t, reps), ("torch/bfloat16", tb, 2)):
    x @ x  # bf16 has no fast path on AVX2-only CPUs (~2 s per matmul): few reps
    peaks[name] = flops / min(_times(lambda: x @ x, n_reps))
  return peaks


def _flax_fns(c: ast.EncoderConfig, batch: int):
  encoder = ast.Encoder(c)
  x = jax.random.normal(jax.random.key(0), (batch, c.num_mel_bins, c.num_frames))
  y = jnp.zeros((batch, 19))
  params = jax.jit(encoder.init)(jax.random.key(1), x)["params"]
  head = {"w": jnp.zeros((c.width, 19)), "b": jnp.zeros(19)}
  state = {"encoder": params, "head": head}
  tx = optax.adamw(1e-4, b1=0.9, b2=0.999, weight_decay=0.01)
  opt = tx.init(state)

  @jax.jit
  def forward(state, x):
    pooled = encoder.apply({"params": state["encoder"]}, x)["pooled"].astype(jnp.float32)
    return pooled @ state["head"]["w"] + state["head"]["b"]

  # Donated like the trainer does: the update reuses the parameter and optimiser
  # buffers in place, as torch.optim does, instead of allocating ~3x the model per step.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(state, opt, x, y, rng):
    def loss_fn(s):
      pooled = encoder.apply({"params": s["encoder"]}, x, train=True,
                             rngs={"dropout": rng})["pooled"].astype(jnp.float32)
      return jnp.mean((pooled @ s["head"]["w"] + s["head"]["b"] - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state)
    updates, opt = tx.update(grads, opt, state)
    return optax.apply_updates(state, updates), opt, loss

  holder = {"state": state, "opt": opt}

  def run_forward():
    forward(holder["state"], x).block_until_ready()

  def run_train():
    s, o, loss = train_step(holder["state"], holder["opt"], x, y, jax.random.key(2))
    loss.block_until_ready()
    holder["state"], holder["opt"] = s, o

  return run_forward, run_train


def _torch_fns(c: ast.EncoderConfig, batch: int, dtype: str):
  cfg = transformers.ASTConfig(
      hidden_size=c.width, num_hidden_layers=c.depth, num_attention_heads=c.heads,
      intermediate_size=c.mlp_dim, patch_size=c.patch_size, frequency_stride=c.freq_stride,
      time_stride=c.time_stride, num_mel_bins=c.num_mel_bins, max_length=c.num_frames,
      layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=c.dropout,
      attention_probs_dropout_prob=0.0)
  cfg._attn_implementation = "sdpa"
  torch.manual_seed(0)
  model = transformers.ASTModel(cfg)
  head = torch.nn.Linear(c.width, 19)
  params = list(model.parameters()) + list(head.parameters())
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)
  x = torch.randn(batch, c.num_frames, c.num_mel_bins)
  y = torch.zeros(batch, 19)
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else (
      lambda: torch.autocast("cpu", enabled=False))

  def run_forward():
    model.eval()
    with torch.inference_mode(), autocast():
      head(model(x).pooler_output)

  def run_train():
    model.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = torch.mean((head(model(x).pooler_output).float() - y) ** 2)
    loss.backward()
    opt.step()

  return run_forward, run_train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--strides", default="16,10")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--pause_s", type=float, default=0.5)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  peaks = matmul_peaks()
  print(f"devices: {jax.devices()}, torch threads {torch.get_num_threads()}, batch {args.batch}")
  print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()))
  header = (f"{'variant':<7}{'stride':>7}{'dtype':>10}{'GFLOP fwd':>10}"
            f"{'flax fwd s':>11}{'torch fwd s':>12}{'ratio':>7}"
            f"{'flax train s':>13}{'torch train s':>14}{'ratio':>7}"
            f"{'flax %pk fwd/train':>20}{'torch %pk fwd/train':>21}")
  print(header)
  rows = []
  for variant in args.variants.split(","):
    for stride in (int(s) for s in args.strides.split(",")):
      for dtype in args.dtypes.split(","):
        c = ast.variant(variant, freq_stride=stride, time_stride=stride, dtype=dtype)
        fl = flops_per_window(c)
        ff, ft = _flax_fns(c, args.batch)
        tf, tt = _torch_fns(c, args.batch, dtype)
        # PyTorch's bf16 path has no hardware support on AVX2-only CPUs and takes ~100 s
        # per base train step there: fewer repetitions for base.
        reps = args.reps if variant != "base" else max(3, args.reps // 2)
        t_compile = time.perf_counter()
        ff(), ft()  # compile + warm up
        t_compile = time.perf_counter() - t_compile
        tf(), tt()  # warm up
        times = {"flax_fwd": [], "torch_fwd": [], "flax_train": [], "torch_train": []}
        # Alternating blocks (flax, torch, flax, torch) so machine load hits both alike; a
        # pause before each block lets the other framework's spinning worker threads
        # (OpenMP, Eigen) go idle, so neither starts on a core the other still occupies.
        for _ in range(2):
          for name, fn in (("flax_fwd", ff), ("torch_fwd", tf), ("flax_train", ft),
                           ("torch_train", tt)):
            time.sleep(args.pause_s)
            times[name] += _times(fn, -(-reps // 2))
        med = {k: statistics.median(v) / args.batch for k, v in times.items()}
        pk_f, pk_t = peaks[f"flax/{dtype}"], peaks[f"torch/{dtype}"]
        row = dict(variant=variant, stride=stride, dtype=dtype, gflop_forward=fl / 1e9,
                   flax_compile_s=t_compile, **{f"{k}_s": v for k, v in med.items()},
                   forward_ratio=med["torch_fwd"] / med["flax_fwd"],
                   train_ratio=med["torch_train"] / med["flax_train"],
                   flax_peak_pct=(100 * fl / med["flax_fwd"] / pk_f,
                                  100 * 3 * fl / med["flax_train"] / pk_f),
                   torch_peak_pct=(100 * fl / med["torch_fwd"] / pk_t,
                                   100 * 3 * fl / med["torch_train"] / pk_t))
        rows.append(row)
        print(f"{variant:<7}{stride:>7}{dtype:>10}{fl / 1e9:>10.1f}"
              f"{med['flax_fwd']:>11.3f}{med['torch_fwd']:>12.3f}{row['forward_ratio']:>7.2f}"
              f"{med['flax_train']:>13.3f}{med['torch_train']:>14.3f}{row['train_ratio']:>7.2f}"
              f"{'%.0f / %.0f' % row['flax_peak_pct']:>20}{'%.0f / %.0f' % row['torch_peak_pct']:>21}",
              flush=True)
  end_peaks = matmul_peaks()
  print("matmul peak GFLOP/s at the end: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in end_peaks.items()))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"peaks_gflops": {k: v / 1e9 for k, v in peaks.items()}, "rows": rows,
                 "batch": args.batch, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
  main()
