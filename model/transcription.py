"""A piano-transcription head on the AST encoder's patch tokens, and its onsets-and-frames loss.

Each time column of patch tokens (the `F'` tokens stacked over frequency at one time
step) covers `time_stride` 10 ms frames; the head reads the column (concatenated over
frequency) through one hidden layer and predicts, for every frame it covers, logits of:

  onset, offset, frame   [frames, 88]  the key starts / ends / is down in this frame
  velocity               [frames, 88]  velocity / 127 (sigmoid), trained at onsets only
  pedal                  [frames]      the sustain pedal is down

(the targets are `pipelines.audio.notes.rolls`). The loss follows Onsets and Frames
(Hawthorne et al., 2018): binary cross-entropy on onsets, offsets, frames and pedal,
squared error of the velocity at the true onsets, each averaged over the valid frames
of the windows that have note targets (`has_notes`); a window without MIDI contributes
nothing. Needs non-overlapping time patches (`time_stride == patch_size`, as SSAST
pre-training uses), so every frame belongs to exactly one column.

With `frame_features` the head also hears the input frames themselves: a 3-frame
convolution over each frame's log-mel values and their rise since the previous frame
(spectral flux, where onsets show) is added to the column's projection, together with
a learned embedding of the frame's place in its column, and one output layer is shared
by all frames. A column token summarises 160 ms; asked to place an onset in one of its
16 frames from that summary alone, the head sat on the no-onset prior for the whole
3000-step run on the ASAP renders (BUILD_NOTES "First notes-aware run"). Onsets and
Frames' acoustic stacks look at the frames too; the encoder still supplies the context
(which keys, across 160 ms and the whole window) that one frame does not have.

Parameter tree: `transcription/{hidden,out}`, and with frame features
`transcription/{frames,place}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from model import ast, linear

KEYS = 88
ROLLS = ("onset", "offset", "frame", "velocity")


def check_encoder(e: ast.EncoderConfig) -> None:
  gf, gt = e.grid
  if e.time_stride != e.patch_size or gt * e.time_stride != e.num_frames:
    raise ValueError(f"the transcription head needs non-overlapping time patches covering the "
                     f"window (time_stride = patch_size = {e.patch_size}, frames divisible by "
                     f"it); got time_stride {e.time_stride}, {e.num_frames} frames")


class TranscriptionHead(nn.Module):
  """`patch_tokens [B, F'·T', D]` -> logits `{onset, offset, frame, velocity}` `[B, frames,
  88]` and `pedal` `[B, frames]` (frames = T' · time_stride)."""

  encoder: ast.EncoderConfig
  hidden: int = 512
  frame_features: bool = False

  @nn.compact
  def __call__(self, patch_tokens, features=None, *, train: bool = False):
    """`features [B, mel, frames]`: the encoder's input, required with `frame_features`."""
    e = self.encoder
    check_encoder(e)
    gf, gt = e.grid
    b = patch_tokens.shape[0]
    columns = patch_tokens.reshape(b, gf, gt, -1).transpose(0, 2, 1, 3).reshape(b, gt, -1)
    dense = lambda n, axes, name: linear.Dense(n, *axes, dtype=e.dtype, param_dtype=e.param_dtype,
                                               name=name)
    per_frame = len(ROLLS) * KEYS + 1
    if self.frame_features:
      if features is None:
        raise ValueError("a head with frame_features needs the encoder's input features")
      x = dense(self.hidden, ((None,), ("mlp",)), "hidden")(columns)  # [B, T', H]
      x = jnp.repeat(x, e.time_stride, axis=1)  # every frame of its column
      x = x + self.param("place", nn.initializers.normal(0.02), (e.time_stride, self.hidden),
                         e.param_dtype).astype(x.dtype)[jnp.arange(gt * e.time_stride)
                                                        % e.time_stride]
      frames = features.transpose(0, 2, 1).astype(x.dtype)  # [B, frames, mel]
      rise = jnp.maximum(jnp.diff(frames, axis=1, prepend=frames[:, :1]), 0.0)
      x = x + nn.Conv(self.hidden, (3,), padding="SAME", dtype=e.dtype,
                      param_dtype=e.param_dtype, name="frames")(
                          jnp.concatenate([frames, rise], axis=-1))
      x = nn.Dropout(e.dropout)(nn.gelu(x, approximate=False), deterministic=not train)
      x = dense(per_frame, (("mlp",), (None,)), "out")(x).astype(jnp.float32)
    else:
      x = dense(self.hidden, ((None,), ("mlp",)), "hidden")(columns)
      x = nn.Dropout(e.dropout)(nn.gelu(x, approximate=False), deterministic=not train)
      x = dense(e.time_stride * per_frame, (("mlp",), (None,)), "out")(x)
      x = x.reshape(b, gt * e.time_stride, per_frame).astype(jnp.float32)
    out = {name: x[..., i * KEYS:(i + 1) * KEYS] for i, name in enumerate(ROLLS)}
    out["pedal"] = x[..., -1]
    return out


def empty_rolls(batch: int, frames: int) -> dict[str, jax.Array]:
  """All-zero rolls of the input pipeline's shapes (to initialise parameters)."""
  out = {name: jnp.zeros((batch, frames, KEYS), jnp.float32) for name in ROLLS}
  return dict(out, pedal=jnp.zeros((batch, frames), jnp.float32),
              has_notes=jnp.zeros((batch,), bool))


def loss(logits: dict, rolls: dict, valid_frames, positive_weight: float = 1.0,
         velocity_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The summed onsets-and-frames losses and their parts (scalars).

  `rolls`: the input pipeline's `onset/offset/frame/velocity [B, frames, 88]`,
  `pedal [B, frames]`, `has_notes [B]`; `valid_frames [B]` or None. The key rolls' BCE
  is summed over the 88 keys per frame (a key-frame weighs what a pedal frame weighs:
  averaged over keys, the notes' losses were 88 times lighter than the pedal's, and a
  3000-step pre-training on the ASAP renders learned to predict no onset at all);
  `positive_weight` multiplies the loss of true onsets and offsets (about one key-frame
  in a thousand is one); `velocity_weight` multiplies the velocity MSE in the total (an
  MSE of sigmoid outputs is ~0.01, against BCE sums over 88 keys of ~0.1-1, so at 1 the
  velocities get a small share of the gradient). The parts are reported unweighted.
  """
  b, frames = logits["pedal"].shape
  valid = (jnp.ones((b, frames), bool) if valid_frames is None
           else jnp.arange(frames)[None, :] < valid_frames[:, None])
  weight = (valid & rolls["has_notes"][:, None]).astype(jnp.float32)  # [B, frames]
  count = jnp.maximum(weight.sum(), 1.0)

  def bce(name, positive=1.0):
    target = rolls[name].astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits[name], target)
    per = per * (1.0 + (positive - 1.0) * target)
    per = per.sum(axis=-1) if per.ndim == 3 else per
    return (per * weight).sum() / count

  parts = {f"{name}_bce": bce(name, positive_weight if name in ("onset", "offset") else 1.0)
           for name in ("onset", "offset", "frame", "pedal")}
  at_onset = rolls["onset"].astype(jnp.float32) * weight[..., None]
  error = (jax.nn.sigmoid(logits["velocity"]) - rolls["velocity"]) ** 2
  parts["velocity_mse"] = (error * at_onset).sum() / jnp.maximum(at_onset.sum(), 1.0)
  # Frame-level onset F1 at 0.5 (a training signal to watch, not the note-level score).
  predicted = (logits["onset"] > 0).astype(jnp.float32) * weight[..., None]
  true_positive = (predicted * at_onset).sum()
  parts["onset_f1_frames"] = 2 * true_positive / jnp.maximum(predicted.sum() + at_onset.sum(),
                                                             1.0)
  total = sum(v * (velocity_weight if k == "velocity_mse" else 1.0)
              for k, v in parts.items() if k != "onset_f1_frames")
  return total, parts


class Transcriber(nn.Module):
  """Inference: the encoder on unmasked windows and the head, with SSAST's parameter names
  (`encoder/...`, `transcription/...`), so a pre-training checkpoint's subtrees apply as
  they are. `__call__(features [B, mel, frames], valid_frames)` -> sigmoid probabilities
  of onset, offset, frame, velocity `[B, frames, 88]` and pedal `[B, frames]`."""

  encoder: ast.EncoderConfig
  hidden: int = 512
  frame_features: bool = False

  @nn.compact
  def __call__(self, features, valid_frames=None):
    e = self.encoder
    tokens = ast.Encoder(e, name="encoder")(features, train=False,
                                            valid_frames=valid_frames)["tokens"]
    logits = TranscriptionHead(e, self.hidden, self.frame_features, name="transcription")(
        tokens[:, e.num_tokens:], features)
    return {k: jax.nn.sigmoid(v) for k, v in logits.items()}
