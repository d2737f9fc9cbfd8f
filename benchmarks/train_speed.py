"""Trainer speed: our jitted train step against a PyTorch training loop of the same model.

  python benchmarks/train_speed.py [--variants tiny,small,base] [--dtypes float32,bfloat16]
      [--reps 4] [--json reports/speed/train_speed.json]

For each variant of `train/configs/finetune.py` (AST at stride 10, 10.24 s
windows, the config's microbatch as the batch, the config's remat setting):

  flax   the trainer's own step (train.trainer.build: AdamW with selective decay,
         clipping, warm-up + cosine, the mesh and logical rules, donated state)
         on the fine-tuning model with a flat head (encoder + LayerNorm + Linear),
  torch  transformers.ASTModel (SDPA) + nn.Linear + torch.optim.AdamW, bf16 as
         torch.autocast; torch.set_num_threads = the cores JAX uses.

Timings alternate between the frameworks in blocks (median after warm-up); the
ratio is torch seconds / flax seconds (> 1: ours faster). MFU = model FLOPs
(3x the forward's matmul FLOPs) per second / the matmul peak measured in this
run for that framework and dtype. Memory: XLA's compiled-step estimate
(arguments + temporaries) for the configs' microbatches, fine-tuning (stride 10)
and pre-training (stride 16), at every size.
PyTorch bf16 is skipped unless `--torch_bf16` (no bf16 hardware path on AVX2 CPUs:
~1 GFLOP/s); its ratio column is then empty and the Flax bf16 row stands alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import torch

sys.path.insert(0, os.path.dirname(__file__))
import model_speed  # noqa: E402  (the shared FLOP count, peaks and PyTorch model)

from model import ast, multitask, ssast  # noqa: E402
from train import sharding, tasks, trainer  # noqa: E402
from train.configs import finetune, pretrain  # noqa: E402


class FlatHeadTask:
  """The fine-tuning model with the flat head, on synthetic batches (what PyTorch runs)."""

  def __init__(self, config):
    self.model_config = multitask.MultiTaskConfig(
        encoder=ast.EncoderConfig(**config.model.encoder.to_dict()), head="flat",
        adaptive_weighting=False)
    self.model = multitask.MultiTaskModel(self.model_config)
    self.depth = self.model_config.encoder.depth
    self.config = config

  def example_input(self):
    return tasks.window_input(self.config)

  def init(self, rng, features):
    return self.model.init({"params": rng}, features)

  def loss_fn(self, params, batch, rng, train):
    out = self.model.apply({"params": params}, batch["features"], train=train,
                           rngs={"dropout": rng})
    return multitask.loss(out, batch["labels"], batch["label_mask"], None, self.model_config)


class SSASTTask:
  def __init__(self, config):
    m = config.model
    self.model = ssast.SSAST(ssast.SSASTConfig(
        encoder=ast.EncoderConfig(**m.encoder.to_dict()), num_masked=m.num_masked))
    self.depth = m.encoder.depth
    self.config = config

  def example_input(self):
    return tasks.window_input(self.config)

  def init(self, rng, features):
    return self.model.init({"params": rng, "masking": rng}, features)

  def loss_fn(self, params, batch, rng, train):
    out = self.model.apply({"params": params}, batch["features"], train=train,
                           rngs={"dropout": rng, "masking": rng})
    return out["loss"], {"loss": out["loss"]}


def _batch(config, labelled: bool) -> dict:
  e = config.model.encoder
  b = config.microbatch_size
  out = {"features": jax.random.normal(jax.random.key(0), (b, e.num_mel_bins, e.num_frames))}
  if labelled:
    out.update(labels=jnp.zeros((b, 19)), label_mask=jnp.ones((b, 19), bool))
  return out


def flax_step(config, task, labelled: bool = True):
  """(run one step, compiled memory in GiB) for the trainer's step on one device."""
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    built = trainer.build(task, config, mesh, total_steps=1000)
    step = built.train_step(accumulation=1)
    batch = _batch(config, labelled)
    compiled = step.lower(built.abstract_state, batch).compile()
    gib = model_speed.compiled_mib(compiled) / 2 ** 10
    holder = {"state": built.state_from(built.init_params())}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    metrics["loss"].block_until_ready()
  return run, gib


def memory_only(config, task, labelled: bool) -> float:
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    built = trainer.build(task, config, mesh, total_steps=1000)
    batch = jax.eval_shape(lambda: _batch(config, labelled))
    compiled = built.train_step(1).lower(built.abstract_state, batch).compile()
  return model_speed.compiled_mib(compiled) / 2 ** 10


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--reps", type=int, default=4)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--pause_s", type=float, default=0.5)
  parser.add_argument("--torch_bf16", action="store_true",
                      help="also time PyTorch bf16 (only sensible where the CPU has bf16 units)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  peaks = model_speed.matmul_peaks()
  print(f"devices: {jax.devices()}, torch threads {torch.get_num_threads()}")
  print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()))

  memory_rows = []
  for variant in args.variants.split(","):
    for name, get, task_cls, labelled in (("finetune", finetune.get_config, FlatHeadTask, True),
                                          ("pretrain", pretrain.get_config, SSASTTask, False)):
      config = get(variant)
      gib = memory_only(config, task_cls(config), labelled)
      e = config.model.encoder
      memory_rows.append(dict(config=f"{name}:{variant}", stride=e.freq_stride,
                              microbatch=config.microbatch_size, remat=e.remat,
                              compiled_gib=round(gib, 2)))
      print(f"memory {name}:{variant} stride {e.freq_stride} microbatch "
            f"{config.microbatch_size} remat {e.remat}: {gib:.2f} GiB", flush=True)

  print(f"{'variant':<7}{'dtype':>10}{'batch':>6}{'flax s/step':>12}{'torch s/step':>13}"
        f"{'ratio':>7}{'flax steps/s':>13}{'flax MFU %':>11}{'torch MFU %':>12}")
  rows = []
  for variant in args.variants.split(","):
    for dtype in args.dtypes.split(","):
      config = finetune.get_config(variant)
      config.model.encoder.dtype = dtype
      c = ast.EncoderConfig(**config.model.encoder.to_dict())
      batch = config.microbatch_size
      flops = 3 * model_speed.flops_per_window(c) * batch
      flax_run, gib = flax_step(config, FlatHeadTask(config))
      # PyTorch bf16 has no hardware path on AVX2-only CPUs (~1 GFLOP/s: a tiny batch-16
      # step would take ~7 min); --torch_bf16 runs it anyway on machines with AMX/AVX-512.
      skip_torch = dtype == "bfloat16" and not args.torch_bf16
      torch_run = None if skip_torch else model_speed._torch_fns(c, batch, dtype)[1]
      reps = args.reps if variant != "base" else max(2, args.reps // 2)
      flax_run()  # compile happened above; warm up
      if torch_run:
        torch_run()
      times = {"flax": [], "torch": []}
      for _ in range(2):
        for name, fn in (("flax", flax_run), ("torch", torch_run)):
          if fn is None:
            continue
          time.sleep(args.pause_s)
          times[name] += model_speed._times(fn, -(-reps // 2))
      med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
      row = dict(variant=variant, dtype=dtype, batch=batch, remat=c.remat,
                 flax_s=med["flax"], torch_s=med["torch"], ratio=med["torch"] / med["flax"],
                 flax_steps_per_s=1 / med["flax"],
                 flax_mfu_pct=100 * flops / med["flax"] / peaks[f"flax/{dtype}"],
                 torch_mfu_pct=100 * flops / med["torch"] / peaks[f"torch/{dtype}"],
                 flax_compiled_gib=round(gib, 2))
      rows.append(row)
      print(f"{variant:<7}{dtype:>10}{batch:>6}{med['flax']:>12.3f}{med['torch']:>13.3f}"
            f"{row['ratio']:>7.2f}{row['flax_steps_per_s']:>13.3f}{row['flax_mfu_pct']:>11.1f}"
            f"{row['torch_mfu_pct']:>12.1f}", flush=True)
  end = model_speed.matmul_peaks()
  print("matmul peak GFLOP/s at the end: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in end.items()))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
                 "end_peaks_gflops": {k: v / 1e9 for k, v in end.items()}, "rows": rows,
                 "memory": memory_rows, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
  main()
