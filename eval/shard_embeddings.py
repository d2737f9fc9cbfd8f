"""Frozen encoder embeddings of a job's performances: what the probes fit a ridge on.

  python -m eval.shard_embeddings --checkpoint=PRETRAIN_WORKDIR|RELEASE \
      --data_dir=out/benchmark/shards/percepiano --output=WORK/embeddings.npz [--random_init]

Each clean window (variant 0) of every performance goes through the encoder of a
pre-training run or release, frozen, without masking; the window's embedding is the
encoder's patch pooling over its valid frames, and a performance's row is the mean and
the standard deviation of its windows' embeddings (`[2 D]`). `--random_init` embeds with
a randomly initialised encoder of the same architecture (`--seed`): the probe's floor,
which says how much of a probe's score the architecture alone gives. The rows go to a
vector table (`train.statistics_table.save_vectors`) that `train.ridge --features=
embeddings --embeddings=FILE` fits (backbone "probe"). `--windows_output=FILE` also keeps
every window's embedding with its start and end in the recording
(`statistics_table.save_windows`): what `train.clip_head` learns to pool.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
from absl import flags, logging

from eval import loading, recording, shard_transcription
from model import ast
from pipelines import entry_point
from pipelines.shards import metadata, tiled_windows
from train import statistics_table

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A pre-training run or a release.", required=True)
  flags.DEFINE_string("step", "latest", "latest, best, or a step number.")
  flags.DEFINE_string("data_dir", None, "A job's output (window shards).", required=True)
  flags.DEFINE_string("output", None, "Where the embeddings go (.npz).", required=True)
  flags.DEFINE_bool("random_init", False, "Embed with a random encoder of the same shape.")
  flags.DEFINE_integer("seed", 0, "Seed of --random_init.")
  flags.DEFINE_integer("batch_size", 16, "Windows per forward pass.", lower_bound=1)
  flags.DEFINE_string("windows_output", None, "Also write every window's embedding (.npz).")


def random_encoder(encoder: ast.EncoderConfig, seed: int) -> dict:
  features = np.zeros((1, encoder.num_mel_bins, encoder.num_frames), np.float32)
  return ast.Encoder(encoder).init(jax.random.key(seed), features)["params"]


def embed(run: loading.PretrainedRun, windows: dict, *, batch_size: int = 16,
          params: dict | None = None, per_window: dict | None = None
          ) -> tuple[list[str], np.ndarray]:
  """(keys, `[P, 2 D]` mean and std of each performance's window embeddings); `params`
  replaces the run's encoder (a random one). `per_window`, a dict, receives each
  performance's `statistics_table.WindowVectors`."""
  model = ast.Encoder(ast.EncoderConfig(**run.config.model.encoder.to_dict()))
  apply = jax.jit(lambda p, f, v: model.apply({"params": p}, f, valid_frames=v)["pooled"])
  encoder = params if params is not None else run.params["encoder"]
  keys, rows = [], []
  for chunk in shard_transcription.filling_batches(windows, batch_size):
    inputs = [shard_transcription.model_inputs(run, key, ws) for key, ws in chunk]
    x, valid = (np.concatenate(parts) for parts in zip(*inputs))
    pooled = np.concatenate([np.asarray(apply(encoder, f, v))[:n] for f, v, n in
                             shard_transcription.padded_batches(x, valid, batch_size)])
    for (key, ws), each in zip(chunk, np.split(pooled, np.cumsum([len(w) for _, w in chunk])[:-1])):
      keys.append(key)
      rows.append(np.concatenate([each.mean(0), each.std(0)]))
      if per_window is not None:
        starts = np.array([w.header["start_s"] for w in ws])
        valid = np.array([w.header["valid_frames"] for w in ws])
        ends = starts + valid * tiled_windows.FRAME_S
        per_window[key] = statistics_table.WindowVectors(each, starts, ends)
  return keys, np.stack(rows)


def main(argv: list[str]) -> int:
  del argv
  try:
    run = loading.load_pretrained(FLAGS.checkpoint, recording.parse_step(FLAGS.step))
    windows = tiled_windows.read_windows(FLAGS.data_dir)
    e = ast.EncoderConfig(**run.config.model.encoder.to_dict())
    params = random_encoder(e, FLAGS.seed) if FLAGS.random_init else None
    per_window = {} if FLAGS.windows_output else None
    keys, x = embed(run, windows, batch_size=FLAGS.batch_size, params=params,
                    per_window=per_window)
  except (loading.RunError, FileNotFoundError, metadata.MetadataError, ValueError) as e:
    sys.exit(f"error: {e}")
  about = {"checkpoint": str(run.workdir), "step": None if FLAGS.random_init else run.step,
           "random_init": FLAGS.random_init, "seed": FLAGS.seed if FLAGS.random_init else None,
           "tiling": tiled_windows.TILING,
           "shards": str(pathlib.Path(FLAGS.data_dir).absolute()), "rows": "mean and std over "
           "the clean windows of the encoder's patch pooling"}
  statistics_table.save_vectors(pathlib.Path(FLAGS.output), keys, x, about)
  if per_window is not None:
    statistics_table.save_windows(pathlib.Path(FLAGS.windows_output), per_window,
                                  {**about, "rows": "each clean window's patch pooling"})
  logging.info("embedded %d performances", len(keys))
  print(f"{len(keys)} performances x {x.shape[1]} ("
        + ("random encoder" if FLAGS.random_init else f"step {run.step}") + f") -> {FLAGS.output}")
  return 0


def cli() -> None:
  """Console entry point (`ppt-embed-shards`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
