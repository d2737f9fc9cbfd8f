"""Config overrides that size the models for 2 CPU cores, shared by the demo and the benchmark.

Both run the tiny AST on short windows with non-overlapping 16 x 16 patches, and a
CNN baseline scaled down to about the same compute, so the baseline comparison
is between models of similar cost rather than a 20x bigger CNN. SpecAugment's
time mask is scaled to the short windows too.
"""

from __future__ import annotations


def encoder(num_frames: int) -> list[str]:
  """The encoder at `num_frames` frames per window, patches 16 x 16 without overlap."""
  return [f"--config.model.encoder.num_frames={num_frames}",
          "--config.model.encoder.freq_stride=16", "--config.model.encoder.time_stride=16"]


# AST's AudioSet time mask, up to 192 of 1024 frames (the input config's default). The
# mask is a width in frames of the window, so on a 256-frame window the default would
# blank up to 75 % of it.
AST_TIME_MASK, AST_FRAMES = 192, 1024


def spec_augment(num_frames: int) -> list[str]:
  """SpecAugment's time mask at AST's ratio for `num_frames`-frame windows."""
  return [f"--config.input.time_mask={round(AST_TIME_MASK * num_frames / AST_FRAMES)}"]


# Steps of 32 examples, checkpointed every 100 steps (~5 min on 2 cores), so a cut
# run loses little. The tiny AST tolerates higher peak rates than the base size's
# 1e-4 over the few hundred steps these runs have.
TRAINING = ["--config.batch_size=32", "--config.eval_batch_size=32",
            "--config.checkpoint.every_steps=100"]
PRETRAIN = [*TRAINING, "--config.optimizer.peak_lr=5e-4"]


def finetune(num_frames: int) -> list[str]:
  """Fine-tuning at `num_frames` frames: evaluated once, at the end (no mid-run
  evaluation on the held-out set, which would also let checkpoint selection see it)."""
  return [*TRAINING, "--config.optimizer.peak_lr=3e-4", "--config.eval_every_steps=0",
          *spec_augment(num_frames)]


# The default CNN (32..256 channels) costs ~400 GFLOP per step of 32 at 256 frames (~13 s
# on 2 cores); this one ~20 (about the tiny AST's). Microbatches of 16: the convolutions
# ran 0.77 steps/s as 2 x 16, 0.41 as 1 x 32 (cache).
SMALL_CNN = ["--config.model.cnn.channels=(8, 16, 32, 64, 128)", "--config.model.cnn.width=128",
             "--config.microbatch_size=16"]


# The feed-forward model on the ridge's clip statistics (backbone clip_stats), the trainer's
# sanity check against the closed-form ridge: evaluated every epoch, stopped after 20
# evaluations without gain, under a 200-epoch ceiling. Its recipe is the best of the
# variants `experiments/ffn_recipe.py` measured on the real piece split (BUILD_NOTES,
# "Training recipe"): the flat head, peak LR 3e-4, dropout 0.3 on the hidden layers and 0.2
# on the statistics, weight decay 0.05, mixup Beta(0.4, 0.4). About 15 s a fold on 2 cores.
STATS_FFN_COMMON = ["--config=train/configs/finetune.py:tiny", "--config.model.backbone=clip_stats",
                    "--config.input.augmented=False", "--config.batch_size=32",
                    "--config.microbatch_size=32", "--config.eval_batch_size=32",
                    "--config.num_epochs=200", "--config.eval_every_epochs=1",
                    "--config.early_stopping.patience=20", "--config.log_every_steps=25"]
STATS_FFN_RECIPE = ["--config.optimizer.peak_lr=3e-4", "--config.model.pooled_stats.dropout=0.3",
                    "--config.model.pooled_stats.input_dropout=0.2",
                    "--config.optimizer.weight_decay=0.05", "--config.model.head=flat",
                    "--config.input.mixup_alpha=0.4"]
STATS_FFN = [*STATS_FFN_COMMON, *STATS_FFN_RECIPE]



# Notes-aware pre-training for the notes path: the transcription head alone (no SSAST
# masking: one encoder pass a step), batch 16 as the pilot (0.9 s a step on 2 cores
# at 512 frames), checkpointed every 500 steps and every checkpoint kept, so
# `eval.transcription_report` can draw F1 against steps.
NOTES_PRETRAIN = ["--config=train/configs/pretrain.py:tiny", "--config.model.ssast_weight=0",
                  "--config.model.transcription_weight=1", "--config.batch_size=16",
                  "--config.microbatch_size=16", "--config.eval_batch_size=16",
                  "--config.eval_every_steps=0", "--config.checkpoint.every_steps=500",
                  "--config.checkpoint.keep=100", "--config.optimizer.peak_lr=5e-4",
                  "--config.log_every_steps=25"]
