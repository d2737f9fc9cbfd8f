"""SSAST masked-patch pre-training on the MAESTRO job's shards (+ note transcription).

  python -m train.main --config=train/configs/pretrain.py:tiny --workdir=W \
      --config.data_dir=out/maestro-shards

`--config.model.transcription_weight=1` adds the transcription head on the windows'
note targets (`--config.model.ssast_weight=0`: transcription alone).
`base` is the paper setting (ViT-base at stride 16, 400 of 512 patches masked,
batch 128, 100 epochs); `tiny` and `small` are sized for 2 CPU cores.
"""

from __future__ import annotations

import ml_collections

from train.configs import defaults

_MICROBATCH = {"tiny": 16, "small": 16, "base": 16}
_LOGGING = {"tiny": 10, "small": 20, "base": 50}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  defaults.check_size(arg)
  c = defaults.trainer_config("pretrain", arg, batch_size=128, microbatch_size=_MICROBATCH[arg],
                              num_epochs=100)
  # SSAST: non-overlapping 16x16 patches, one [CLS] token, patch-mean pooling.
  c.model = ml_collections.ConfigDict(dict(
      encoder=defaults.encoder_config(arg, freq_stride=16, time_stride=16, num_tokens=1,
                                      pooling="patches", remat="dots" if arg == "base" else "none"),
      num_masked=400, masking="cluster", cluster_size=3, generative_weight=10.0,
      # Notes-aware pre-training (model.ssast, model.transcription): the transcription losses
      # on the windows' note targets, weighted against SSAST's; 0 / 1 is transcription alone.
      ssast_weight=1.0, transcription_weight=0.0, transcription_hidden=512,
      transcription_positive_weight=10.0, transcription_frame_features=True,
      transcription_velocity_weight=1.0,
  ))
  # SSAST pre-trains without SpecAugment (its masking is the augmentation), and masked
  # frames or bins would leave the transcription targets under them unhearable.
  c.input.spec_augment = False
  # Continue from an earlier pre-training run or a release (train.warm_start.continue_from):
  # the parameters both have, a fresh optimiser and schedule.
  c.init = ml_collections.ConfigDict(dict(checkpoint=""))
  c.train_split = "train"
  c.eval_split = "validation"
  c.checkpoint.best_metric = "val/loss"
  c.checkpoint.best_mode = "min"
  c.log_every_steps = _LOGGING[arg]
  return c
