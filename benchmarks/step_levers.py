"""Where the Flax training step loses to PyTorch on a CPU: the step's levers, one run.

  python benchmarks/step_levers.py [--cases tiny/16,small/16,small/10] [--reps 6]
      [--levers shipped,"all heads"] [--step train|forward] [--json reports/speed/step_levers.json]

For each (variant, stride), f32, batch 1 (what `benchmarks/model_speed.py` times on a
CPU), the training step of `model_speed` (forward + backward + AdamW on a 19-output head,
state donated) for the shipped encoder and for one change at a time, with PyTorch's step
(transformers ASTModel, SDPA) in the same interleaved blocks:

  shipped         the encoder as configured (hashed dropout, attention "auto")
  threefry        dropout masks from flax.linen.Dropout (JAX's threefry PRNG), as before
                  model/dropout.py
  no dropout      dropout 0: what masks cost at all
  unrolled        scan_unroll = depth: the layers as straight-line code
  all heads       the attention kernel as it was before 2026-12-04: all of an example's heads
                  in one loop step, the query-block loop never unrolled (the shipped kernel
                  takes one head a step and unrolls the blocks where their scores are small)
  fused           jax.nn.dot_product_attention instead of the blocked kernel
  block 128, block 512
                  the blocked kernel's query blocks of ~128 or ~512 rows instead of the
                  configured ~256 (`attention_block_size`)
  bwd unroll 2    the backward's query-block loop unrolled two blocks a step where the
                  shipped rule loops it (one head's scores over 2 MiB: stride 10), a
                  partial unroll between the looped and the straight-line forms
  no attention    attention replaced by its values (out = v): NOT a model, the bound on
                  what any attention kernel could give; with it, the rest of the step
                  against PyTorch's whole step
  trainer         train.trainer's own jitted step (benchmarks/train_speed.flax_step: the
                  fine-tuning config with this encoder, batch 1, flat head; clipping, AdamW
                  with its decay mask, the schedule, the mesh, donated state): how far the
                  trainer is from the bare step (`shipped`)

`threefry`, `all heads`, `bwd unroll 2` and `no attention` swap a module function while their step is
traced and restore it at once; every other row uses the real model. Ratio = PyTorch seconds / Flax seconds
(> 1: Flax faster). `--levers` times a subset (PyTorch always): fewer rows a rep leave room
for more reps where two levers differ by less than the run's noise. `--step forward` times the
forward pass instead (what `eval.predict` runs; every lever but `trainer`). Results:
BUILD_NOTES.md, "CPU training step: profile and levers".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import model_speed  # noqa: E402

from model import ast, attention, dropout  # noqa: E402


@contextlib.contextmanager
def _swapped(module, name, value):
  """`module.name = value` while a step is traced (ablations only)."""
  old = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, old)


def _values_only(q, k, v, key_mask=None, *, dtype=None, block_size=None):
  del q, k, key_mask, block_size
  return v.astype(dtype or v.dtype)


def _traced_step(c: ast.EncoderConfig, step: str):
  """model_speed's Flax training step or forward pass, compiled and run once now (so a swap
  is seen)."""
  run_forward, run_train, _, _, _ = model_speed._flax_fns(c, 1)
  run = run_train if step == "train" else run_forward
  run()
  return run


LEVERS = ("shipped", "threefry", "no dropout", "unrolled", "all heads", "fused", "block 128",
          "block 512", "bwd unroll 2", "no attention", "trainer")


def _backward_unrolled_by_two(core):
  """`attention._blocked_core` with its backward block loop unrolled two blocks a step where
  the shipped rule would loop it (full unrolls stay as they are)."""
  def swapped(qh, kh, vh, bias, q_blk, unroll):
    return core(qh, kh, vh, bias, q_blk, (unroll[0], True if unroll[1] else 2))
  return swapped


def _lever_step(c: ast.EncoderConfig, lever: str, step: str = "train"):
  traced = functools.partial(_traced_step, step=step)
  if lever == "shipped":
    return traced(c)
  if lever == "threefry":
    with _swapped(dropout, "Dropout", nn.Dropout):
      return traced(c)
  if lever == "no dropout":
    return traced(c.replace(dropout=0.0))
  if lever == "unrolled":
    return traced(c.replace(scan_unroll=c.depth))
  if lever == "all heads":
    every_head = functools.partial(attention.blocked, heads_per_step=None, unroll=False)
    with _swapped(attention, "blocked", every_head):
      return traced(c)
  if lever == "fused":
    return traced(c.replace(attention="fused"))
  if lever.startswith("block "):
    return traced(c.replace(attention_block_size=int(lever.split()[1])))
  if lever == "bwd unroll 2":
    with _swapped(attention, "_blocked_core", _backward_unrolled_by_two(attention._blocked_core)):
      return traced(c)
  if lever == "trainer":
    return _trainer_step(c)
  assert lever == "no attention", lever
  with _swapped(attention, "blocked", _values_only):
    return traced(c)


def _trainer_step(c: ast.EncoderConfig):
  import train_speed  # imports the trainer (and torch) only where this lever runs

  from train.configs import finetune
  config = finetune.get_config("tiny")  # every encoder field is replaced by c's below
  config.model.encoder.update(dataclasses.asdict(c))
  config.batch_size = config.microbatch_size = 1
  run, _ = train_speed.flax_step(config, train_speed.FlatHeadTask(config))
  run()
  return run


def steps(c: ast.EncoderConfig, levers=LEVERS, step: str = "train") -> dict:
  fns = {lever: _lever_step(c, lever, step) for lever in levers}
  torch_forward, torch_train = model_speed._torch_fns(c, 1, "float32")
  fns["pytorch"] = torch_train if step == "train" else torch_forward
  return fns


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="tiny/16,small/16,small/10")
  parser.add_argument("--reps", type=int, default=6)
  parser.add_argument("--pause_s", type=float, default=0.3)
  parser.add_argument("--levers", default=",".join(LEVERS))
  parser.add_argument("--step", choices=("train", "forward"), default="train")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  levers = tuple(args.levers.split(","))
  if unknown := set(levers) - set(LEVERS):
    parser.error(f"--levers: unknown {sorted(unknown)}; choose from {', '.join(LEVERS)}")
  if args.step == "forward" and "trainer" in levers:
    parser.error("--levers: trainer is a training step; drop it with --step forward")
  import torch
  torch.set_num_threads(os.cpu_count())
  print(f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} cores, f32, batch 1, "
        f"{args.step} step")
  print(f"{'case':<10}" + "".join(f"{k:>14}" for k in (*levers, "pytorch")) + "   (s; ratio below)")
  rows = []
  for case in args.cases.split(","):
    variant, stride = case.split("/")
    c = ast.variant(variant, freq_stride=int(stride), time_stride=int(stride))
    fns = steps(c, levers, args.step)
    for fn in fns.values():
      fn()
    times = {k: [] for k in fns}
    for _ in range(args.reps):  # interleaved rep by rep, a pause before each
      for k, fn in fns.items():
        time.sleep(args.pause_s)
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: med["pytorch"] / v for k, v in med.items()}
    rows.append(dict(case=case, seconds=med, ratio=ratio))
    print(f"{case:<10}" + "".join(f"{med[k]:>14.4f}" for k in (*levers, "pytorch")))
    print(f"{'  ratio':<10}" + "".join(f"{ratio[k]:>14.3f}" for k in (*levers, "pytorch")),
          flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {"jax": jax.__version__, "torch": torch.__version__, "cores": os.cpu_count(),
         "reps": args.reps, "levers": list(levers), "step": args.step, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
