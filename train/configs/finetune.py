"""Multi-task fine-tuning on the PercePiano job's shards (19 dimensions, grouped heads).

  python -m train.main --config=train/configs/finetune.py:tiny --workdir=W \
      --config.data_dir=out/percepiano-shards \
      [--config.init.checkpoint=PRETRAIN_WORKDIR | --config.init.converted=CONVERT_DIR]

`validation_fold=k` trains on the other cross-validation folds of the split
(`split=piece|performer`) and validates on fold k; -1 trains on every fold and
evaluates on the split's held-out test set.
`base` is the paper setting (AST base at stride 10, batch 32, 50 epochs).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from model import baselines
from train.configs import defaults

_MICROBATCH = {"tiny": 16, "small": 8, "base": 8}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  defaults.check_size(arg)
  c = defaults.trainer_config("finetune", arg, batch_size=32, microbatch_size=_MICROBATCH[arg],
                              num_epochs=50)
  c.model = ml_collections.ConfigDict(dict(
      # "cnn" / "pooled_stats" (log-mel windows) / "clip_stats" (the ridge's clip statistics):
      # the baselines, with the same heads and loss.
      backbone="ast",
      # AST's overlapping stride 10; one token and patch pooling as SSAST, so a
      # pre-training checkpoint loads without fresh tokens.
      encoder=defaults.encoder_config(arg, num_tokens=1, pooling="patches",
                                      remat="dots" if arg == "base" else "none"),
      cnn=ml_collections.ConfigDict(dataclasses.asdict(baselines.CNNConfig())),
      pooled_stats=ml_collections.ConfigDict(dataclasses.asdict(baselines.PooledStatsConfig())),
      head="grouped", head_heads=4, head_depth=1, head_hidden=256, cross_task=True,
      adaptive_weighting=True,
      loss_weights="",  # fixed weights "timing=1,dynamics=2" (needs adaptive_weighting=False)
  ))
  # Where the encoder starts: a pre-training work directory or checkpoint step
  # directory, or the output directory of `python -m model.convert`; both empty:
  # from scratch.
  c.init = ml_collections.ConfigDict(dict(checkpoint="", converted=""))
  # backbone=clip_stats reads one statistics vector per performance (train.statistics_table)
  # from this cache, computed from the shards' audio when missing or stale; "": the work
  # directory's clip_statistics.npz.
  c.clip_statistics_cache = ""
  c.validation_fold = 0
  # "piece" or "performer" (the PercePiano job writes both split tables into the
  # shards' metadata); "" takes the one the job was run with.
  c.split = ""
  c.checkpoint.best_metric = "val/pearson/mean"
  c.checkpoint.best_mode = "max"
  c.log_every_steps = 10
  c.eval_every_steps = 100
  return c
