"""Grain input pipeline throughput, schema 3 (tf.train.Example) against schema 2 (PPTR).

  python benchmarks/input_speed.py --shard_dir /tmp/real/percepiano [--windows 1024]

`--shard_dir` is a job's output (schema 3). The same windows are rewritten as schema-2
records (`pipelines.shards.legacy_records`, the layout before the Interop issue) into a
temporary copy of the directory, so both schemas are read from identical content in one run.
For each: a plain loop that reads the ArrayRecord shards record by record, decodes and
normalises each window and stacks batches (the work the pipeline does, minus shuffling and
augmentation); then `finetuning()` with SpecAugment and mixup, with 0, 1 and 2 worker
processes. Reported: windows/s after one warm-up batch (worker start-up separately), and
schema 3 / schema 2.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import tempfile
import time

import numpy as np
from array_record.python import array_record_module

from pipelines import input_pipeline as ip
from pipelines.shards import layout, legacy_records, records


def _as_schema_2(shard_dir: pathlib.Path, out: pathlib.Path) -> None:
  """A copy of the job's window shards with every record rewritten in schema 2."""
  meta = json.loads((shard_dir / layout.METADATA).read_text())
  out.mkdir()
  for row in meta["shards"]:
    if row["kind"] != "windows" or row["format"] != "array_record":
      continue
    writer = array_record_module.ArrayRecordWriter(str(out / row["file"]),
                                                   layout.ARRAY_RECORD_OPTIONS)
    for data in layout.read_array_record(str(shard_dir / row["file"])):
      writer.write(legacy_records.encode_window(*records.decode(data)))
    writer.close()
    row["bytes"] = (out / row["file"]).stat().st_size
  (out / layout.METADATA).write_text(json.dumps(meta))


def _loop(shard_dir: pathlib.Path, windows: int, batch_size: int) -> float:
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


def _grain(shard_dir: pathlib.Path, windows: int, batch_size: int,
           workers: int) -> tuple[float, float]:
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
  parser.add_argument("--shard_dir", required=True, type=pathlib.Path)
  parser.add_argument("--windows", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3,
                      help="Interleaved rounds; the best of each reader is reported.")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory(prefix="schema2-") as scratch:
    legacy = pathlib.Path(scratch) / "shards"
    _as_schema_2(args.shard_dir, legacy)
    dirs = {3: args.shard_dir, 2: legacy}
    readers = [("plain loop (read, decode, normalise, stack)", None),
               *((f"Grain finetuning(), {w} worker processes", w) for w in (0, 1, 2))]
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.repeats):  # interleaved: both schemas see the same machine load
      for name, workers in readers:
        for schema, root in dirs.items():
          if workers is None:
            result = (_loop(root, args.windows, args.batch_size), 0.0)
          else:
            result = _grain(root, args.windows, args.batch_size, workers)
          if result[0] > best.get((name, schema), (0.0,))[0]:
            best[name, schema] = result
    shutil.rmtree(legacy)
  print(f"{args.windows} windows, batch {args.batch_size}, best of {args.repeats}, "
        f"{platform.processor() or platform.machine()}")
  print(f"{'reader':<44}{'schema 3 w/s':>13}{'schema 2 w/s':>13}{'3 / 2':>7}{'start-up s':>11}")
  for name, _ in readers:
    (new, startup), (old, _) = best[name, 3], best[name, 2]
    print(f"{name:<44}{new:>13.0f}{old:>13.0f}{new / old:>7.2f}{startup:>11.1f}")


if __name__ == "__main__":
  main()
