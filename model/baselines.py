"""Baseline backbones with the AST encoder's interface, so the same heads and targets apply.

Each maps normalised log-mel `[B, mel, frames]` (+ optional `valid_frames [B]`)
to `{"tokens": [B, N, D], "pooled": [B, D], "token_mask": [B, N]}`:

  CNN         a standard 5-block convolutional net on the log-mel (VGG/PANNs
              style: per block two 3x3 conv + GroupNorm + ReLU, then 2x2 max
              pooling; channels 32-64-128-256-256). The final `[mel/32, frames/32]`
              map is projected to D and read as tokens; GroupNorm rather than
              BatchNorm keeps the model stateless, so the trainer treats every
              backbone alike.
  PooledStats a feed-forward network on clip-level statistics of the log-mel:
              per mel bin the mean and standard deviation over the valid
              frames and the mean absolute frame-to-frame difference (a cheap
              onset/temporal-variation cue); 3 x mel inputs -> MLP -> one token.
              It sees no temporal order at all, which is what makes it a useful
              floor: what it scores, the spectral envelope alone explains.
  ClipStats   the same MLP on one vector per performance: the clip statistics the
              closed-form ridge fits (pipelines.audio.clip_statistics), standardised.
              Input `[B, F]`, not a log-mel; the trainer's sanity check against the ridge.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from model import linear


@dataclasses.dataclass(frozen=True)
class CNNConfig:
  channels: tuple[int, ...] = (32, 64, 128, 256, 256)
  width: int = 256  # token width handed to the heads
  groups: int = 8  # GroupNorm groups
  dropout: float = 0.1
  dtype: str = "float32"
  param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class PooledStatsConfig:
  hidden: int = 512
  depth: int = 2
  width: int = 256
  dropout: float = 0.1
  input_dropout: float = 0.0  # on the statistics themselves (clip_stats: 276 of them)
  dtype: str = "float32"
  param_dtype: str = "float32"


def _valid_frame_mask(valid_frames, b: int, n_frames: int):
  if valid_frames is None:
    return jnp.ones((b, n_frames), bool)
  return jnp.arange(n_frames)[None, :] < valid_frames[:, None]


class CNN(nn.Module):
  config: CNNConfig = CNNConfig()

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None):
    c = self.config
    b, n_mel, n_frames = features.shape
    scale = 2 ** len(c.channels)
    if n_mel % scale or n_frames % scale:
      raise ValueError(f"CNN with {len(c.channels)} blocks needs mel and frames divisible by "
                       f"{scale}, got {features.shape}")
    # Convolutions and GroupNorm statistics reach across the clip boundary, so frames past
    # `valid_frames` are zeroed first: what the padding holds can then never matter.
    frame_mask = _valid_frame_mask(valid_frames, b, n_frames)
    x = jnp.where(frame_mask[:, None, :], features, 0.0)[..., None].astype(c.dtype)
    for i, ch in enumerate(c.channels):
      for j in range(2):
        x = nn.Conv(ch, (3, 3), padding="SAME", use_bias=False, dtype=c.dtype,
                    param_dtype=c.param_dtype, name=f"block{i}_conv{j}")(x)
        x = nn.GroupNorm(min(c.groups, ch), dtype=c.dtype, param_dtype=c.param_dtype,
                         name=f"block{i}_norm{j}")(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), (2, 2))
    gf, gt = x.shape[1], x.shape[2]
    x = nn.Dropout(c.dropout)(x, deterministic=not train)
    tokens = linear.Dense(c.width, (None,), ("embed",), dtype=c.dtype, param_dtype=c.param_dtype,
                          name="project")(x.reshape(b, gf * gt, -1))
    # A token is valid when its time span starts inside the real frames.
    valid_t = frame_mask[:, ::scale]  # [B, T'']
    token_mask = jnp.broadcast_to(valid_t[:, None, :], (b, gf, gt)).reshape(b, gf * gt)
    w = token_mask[..., None].astype(tokens.dtype)
    pooled = (tokens * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1)
    return {"tokens": tokens, "pooled": pooled, "token_mask": token_mask}


def pooled_statistics(features, valid_frames=None):
  """`[B, mel, frames]` -> `[B, 3·mel]`: mean, std and mean |delta| per bin over valid frames."""
  b, _, n_frames = features.shape
  m = _valid_frame_mask(valid_frames, b, n_frames)[:, None, :].astype(jnp.float32)
  x = features.astype(jnp.float32)
  n = jnp.maximum(m.sum(axis=-1), 1.0)
  mean = (x * m).sum(axis=-1) / n
  std = jnp.sqrt(((x - mean[..., None]) ** 2 * m).sum(axis=-1) / n + 1e-8)
  dm = m[..., 1:] * m[..., :-1]
  delta = (jnp.abs(jnp.diff(x, axis=-1)) * dm).sum(axis=-1) / jnp.maximum(dm.sum(axis=-1), 1.0)
  return jnp.concatenate([mean, std, delta], axis=-1)


def _feed_forward(x, c: PooledStatsConfig, train: bool, batch: int) -> dict:
  """The MLP both feed-forward backbones share, built inside the calling module (so its
  layers are that module's own `fc<i>` / `project` parameters)."""
  x = nn.Dropout(c.input_dropout)(x, deterministic=not train)
  for i in range(c.depth):
    x = linear.Dense(c.hidden, (None,), ("mlp",), dtype=c.dtype, param_dtype=c.param_dtype,
                     name=f"fc{i}")(x)
    x = nn.Dropout(c.dropout)(nn.gelu(x, approximate=False), deterministic=not train)
  pooled = linear.Dense(c.width, ("mlp",), ("embed",), dtype=c.dtype,
                        param_dtype=c.param_dtype, name="project")(x)
  return {"tokens": pooled[:, None], "pooled": pooled, "token_mask": jnp.ones((batch, 1), bool)}


class PooledStats(nn.Module):
  config: PooledStatsConfig = PooledStatsConfig()

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None):
    return _feed_forward(pooled_statistics(features, valid_frames), self.config, train,
                         features.shape[0])


class ClipStats(nn.Module):
  """The feed-forward network on a clip-level statistics vector `[B, F]` (standardised by
  the task): the trainer's model on exactly what the closed-form ridge sees, so the two
  can be compared and a gap between them points at the training recipe, not the inputs."""

  config: PooledStatsConfig = PooledStatsConfig()

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None):
    del valid_frames  # a vector per clip: nothing is padded
    if features.ndim != 2:
      raise ValueError(f"clip_stats takes [batch, statistics], got shape {features.shape}")
    return _feed_forward(features.astype(jnp.float32), self.config, train, features.shape[0])
