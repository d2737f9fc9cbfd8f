"""What the pre-training and fine-tuning configs share: optimiser, mesh, checkpoints, logging.

`pretrain.py` and `finetune.py` start from `trainer_config(...)` and set what
differs (task, data splits, batch, epochs, model head); the size variants
(`tiny`, `small`, `base`) change the encoder and the microbatch, never copy a
file. Every field can be overridden on the command line
(`--config.optimizer.peak_lr=3e-4`); the dict is locked, so a typo fails.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from model import ast

SIZES = ("tiny", "small", "base")


def encoder_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """The encoder's fields (model.ast.EncoderConfig) for a size, as a ConfigDict."""
  return ml_collections.ConfigDict(dataclasses.asdict(ast.variant(size, **overrides)))


def check_size(size: str) -> str:
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
  return size


def trainer_config(task: str, size: str, *, batch_size: int, microbatch_size: int,
                   num_epochs: int) -> ml_collections.ConfigDict:
  check_size(size)
  c = ml_collections.ConfigDict()
  c.task = task
  c.size = size
  c.seed = 0
  # The Beam job's output directory (metadata.json + ArrayRecord shards).
  c.data_dir = config_dict.placeholder(str)

  # The effective (global) batch of one optimiser update. Each update runs
  # batch_size / microbatch_size accumulation steps of microbatch_size examples,
  # so the effective batch stays what the paper used whatever fits in memory.
  c.batch_size = batch_size
  c.microbatch_size = microbatch_size
  c.num_epochs = num_epochs
  c.num_steps = 0  # > 0 overrides num_epochs (smoke runs, benchmarks)

  c.input = ml_collections.ConfigDict(dict(
      read_threads=2, worker_processes=0, prefetch_buffer_size=16,
      spec_augment=True, freq_mask=48, time_mask=192, mixup_alpha=0.0,
      gain_db=0.0, tilt_db=0.0, eq_db=0.0,  # random level, tilt, smooth EQ (input_pipeline); 0: off
      soundfonts="",  # names (comma-separated) of a job's SoundFonts to read; "": all
      augmented=True,  # False: train on the clean variant only (the augmentation ablation)
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
      warmup_fraction=0.1, end_lr=0.0, grad_clip_norm=1.0,
      layer_decay=1.0,  # < 1: layer-wise LR decay (fine-tuning), 1: off
  ))

  # Device mesh: `data` x `fsdp`; -1 takes the devices left over. With fsdp > 1
  # parameters and optimiser state are sharded over the fsdp axis (the `embed`
  # logical axis); the batch is split over both axes.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500, keep=3, async_save=True,
      best_metric="", best_mode="max",  # set by the task configs
  ))
  c.log_every_steps = 50
  c.eval_every_steps = 500  # also at the end; 0: only at the end
  c.eval_every_epochs = 0.0  # > 0: evaluate every this many epochs instead (at least 1 step)
  # Stop when `checkpoint.best_metric` has not improved by more than `min_delta` for
  # `patience` evaluations in a row (0: train to the end of the schedule). The learning-rate
  # schedule still spans `num_epochs`: stopping cuts it, it does not compress it.
  c.early_stopping = ml_collections.ConfigDict(dict(patience=0, min_delta=0.0))
  # > 0: end the run after this many epochs of the `num_epochs` schedule (how a
  # cross-validation's test run trains as long as its folds' chosen evaluations).
  c.stop_after_epochs = 0.0
  c.eval_batch_size = 16
  c.prng_impl = "threefry2x32"  # or "rbg" (faster dropout masks; not bitwise across devices)
  return c
