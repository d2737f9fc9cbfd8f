"""Grain input pipeline throughput against a plain Python loop over the same shards.

  python benchmarks/input_speed.py --shard_dir /tmp/real/percepiano [--windows 1024]

Baseline: a loop that reads the ArrayRecord shards record by record, decodes
and normalises each window and stacks batches (the work the pipeline does,
minus shuffling and augmentation). Then `finetuning()` with SpecAugment and
mixup, with 0, 1 and 2 worker processes. Reported: windows/s for each, after
one warm-up batch (worker start-up is reported separately).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipelines import input_pipeline as ip
from pipelines.shards import records


def _loop(shard_dir: str, windows: int, batch_size: int) -> float:
  shards = ip.ShardSet.open(shard_dir, ("train",))
  source = shards.source()
  t0 = time.perf_counter()
  batch = []
  for i in range(windows):
    _, arrays = records.decode(source[i % len(source)])
    batch.append((arrays["features"].astype(np.float32) - shards.mean) / (2 * shards.std))
    if len(batch) == batch_size:
      np.stack(batch)
      batch = []
  return windows / (time.perf_counter() - t0)


def _grain(shard_dir: str, windows: int, batch_size: int, workers: int) -> tuple[float, float]:
  config = ip.InputConfig(batch_size=batch_size, mixup_alpha=10.0, worker_processes=workers)
  t0 = time.perf_counter()
  it = iter(ip.finetuning(shard_dir, config))
  next(it)
  startup = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(windows // batch_size):
    next(it)
  return windows / (time.perf_counter() - t0), startup


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shard_dir", required=True)
  parser.add_argument("--windows", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args()

  loop = _loop(args.shard_dir, args.windows, args.batch_size)
  print(f"{args.windows} windows of [128, 1024], batch {args.batch_size}, 2 cores")
  print(f"{'reader':<44}{'windows/s':>10}{'vs loop':>9}{'start-up s':>12}")
  print(f"{'plain loop (read, decode, normalise, stack)':<44}{loop:>10.0f}{1.0:>9.2f}{'-':>12}")
  for workers in (0, 1, 2):
    rate, startup = _grain(args.shard_dir, args.windows, args.batch_size, workers)
    name = f"Grain finetuning(), {workers} worker processes"
    print(f"{name:<44}{rate:>10.0f}{rate / loop:>9.2f}{startup:>12.1f}")


if __name__ == "__main__":
  main()
