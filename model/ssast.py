"""SSAST masked-patch pre-training (Gong et al., AAAI 2022).

One forward pass per batch: `num_masked` patches per clip (random or cluster
masking, `model.masking`) have their embeddings replaced by the encoder's learned
`mask_embed`; the encoder's outputs at the masked positions feed two
Linear-ReLU-Linear heads:

  discriminative  predicts a 256-vector per masked position; InfoNCE against the
                  true patches of the *same clip*: position i must score its own
                  patch above the other masked patches (`info_nce`). Its accuracy
                  (argmax = own patch) is reported.
  generative      reconstructs the 256 patch values; mean squared error.

loss = InfoNCE + generative_weight · MSE (SSAST: 10). SSAST runs the two tasks as
two forward passes with independent masks; sharing one pass and one mask halves
the pre-training compute (BUILD_NOTES.md).

The targets are the input patches themselves (normalised log-mel values, the
same `patchify` the encoder embeds), so pre-training needs no labels.

With `transcription_weight` > 0 a transcription head (model.transcription) learns the
note rolls of each window from a second, unmasked pass of the same encoder: SSAST +
transcription, or transcription alone (`ssast_weight` 0, no masking at all).

Parameter tree: `encoder/...` (model.ast, including `encoder/mask_embed`),
`discriminative/{fc1,fc2}`, `generative/{fc1,fc2}` (SSAST on), `transcription/...`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import ast, linear, masking, transcription


@dataclasses.dataclass(frozen=True)
class SSASTConfig:
  encoder: ast.EncoderConfig = ast.EncoderConfig(freq_stride=16, time_stride=16, num_tokens=1,
                                                 pooling="patches")
  num_masked: int = 400  # of 512 patches at stride 16, as SSAST
  masking: str = "cluster"  # or "random"
  cluster_size: int = 3
  generative_weight: float = 10.0
  # Pre-training objective: ssast_weight x (InfoNCE + generative_weight x MSE) +
  # transcription_weight x the transcription losses (model.transcription, on the note rolls
  # the batch carries). 1 / 0: SSAST alone; 0 / 1: transcription alone; both: both.
  ssast_weight: float = 1.0
  transcription_weight: float = 0.0
  transcription_hidden: int = 512
  transcription_positive_weight: float = 1.0  # on true onsets/offsets (model.transcription.loss)
  transcription_velocity_weight: float = 1.0  # on the velocity MSE (model.transcription.loss)
  transcription_frame_features: bool = False  # the head also hears the frames (model.transcription)

  def __post_init__(self):
    e = self.encoder
    # With overlapping patches every masked patch's values are visible in its unmasked
    # neighbours, and the pretext task leaks its answer (SSAST refuses it too).
    if not e.freq_stride == e.time_stride == e.patch_size:
      raise ValueError(f"SSAST pre-training needs non-overlapping patches (strides = patch size "
                       f"{e.patch_size}); got strides {e.freq_stride}/{e.time_stride}")
    # Without SSAST's objective nothing is masked, so the count does not matter.
    if self.ssast_weight and not 0 < self.num_masked <= e.num_patches:
      raise ValueError(f"num_masked must be in 1..{e.num_patches}, got {self.num_masked}")
    if self.ssast_weight < 0 or self.transcription_weight < 0 or not (
        self.ssast_weight or self.transcription_weight):
      raise ValueError("ssast_weight and transcription_weight must be >= 0, not both 0")
    if self.transcription_weight:
      transcription.check_encoder(e)

  @property
  def transcribes(self) -> bool:
    return self.transcription_weight > 0


def info_nce(predictions: jax.Array, targets: jax.Array,
             weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """InfoNCE over the masked patches of each clip.

  predictions, targets: `[B, M, P]`; weights `[B, M]` (0 = padding position,
  excluded as a query and as a negative). Scores `s_ij = <prediction_i, target_j>`
  within a clip; returns `(mean of -log softmax_j(s_i)[i], accuracy of argmax_j s_ij = i)`
  over the weighted positions. Each prediction is normalised over the candidate
  targets (pick your own patch among the clip's masked patches); SSAST's code
  normalises each target over the predictions instead — the same objective up to
  which side competes.
  """
  scores = jnp.einsum("bip,bjp->bij", predictions.astype(jnp.float32),
                      targets.astype(jnp.float32))
  m = scores.shape[-1]
  if weights is None:
    weights = jnp.ones(scores.shape[:2], jnp.float32)
  weights = weights.astype(jnp.float32)
  scores = jnp.where(weights[:, None, :] > 0, scores, -1e30)
  log_probs = jax.nn.log_softmax(scores, axis=-1)
  diagonal = jnp.diagonal(log_probs, axis1=1, axis2=2)  # [B, M]
  correct = (jnp.argmax(scores, axis=-1) == jnp.arange(m)[None]).astype(jnp.float32)
  total = jnp.maximum(weights.sum(), 1.0)
  return -(diagonal * weights).sum() / total, (correct * weights).sum() / total


class PredictionHead(nn.Module):
  """Linear-ReLU-Linear from the encoder width to one patch (SSAST's cpred/gpred layers)."""

  hidden: int
  outputs: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    x = linear.Dense(self.hidden, ("embed",), ("mlp",), dtype=self.dtype,
                     param_dtype=self.param_dtype, name="fc1")(x)
    x = nn.relu(x)
    return linear.Dense(self.outputs, ("mlp",), (None,), dtype=self.dtype,
                        param_dtype=self.param_dtype, name="fc2")(x)


class SSAST(nn.Module):
  """`__call__(features [B, mel, frames], train, valid_frames [B] | None, rolls)` -> metrics.

  Needs the rng stream "masking" (and "dropout" when training) when the SSAST losses are
  on. Returns `loss` and the scalar parts: `info_nce`, `mse`, `accuracy` (SSAST on) and the
  transcription losses (`rolls`, the batch's note rolls, required when it is on); with
  SSAST also `mask` `[B, F'·T']` and `indices` `[B, num_masked]` (for inspection).
  """

  config: SSASTConfig

  def _masked(self, encoder, features, train, valid_frames):
    c = self.config
    e = c.encoder
    b = features.shape[0]
    gf, gt = e.grid
    valid = None if valid_frames is None else ast.patch_validity(valid_frames, e)
    mask, indices = masking.sample(self.make_rng("masking"), b, (gf, gt), c.num_masked,
                                   kind=c.masking, cluster_size=c.cluster_size, valid=valid)
    out = encoder(features, train=train, valid_frames=valid_frames, patch_mask=mask)
    patch_tokens = out["tokens"][:, e.num_tokens:]
    masked_tokens = jnp.take_along_axis(patch_tokens, indices[..., None], axis=1)  # [B, M, D]
    targets = ast.patchify(features, e.patch_size, e.freq_stride, e.time_stride)
    targets = targets.reshape(b, gf * gt, -1)
    targets = jnp.take_along_axis(targets, indices[..., None], axis=1).astype(jnp.float32)
    weights = (jnp.ones(indices.shape, jnp.float32) if valid is None
               else jnp.take_along_axis(valid, indices, axis=1).astype(jnp.float32))
    patch_dim = targets.shape[-1]
    head = lambda name: PredictionHead(e.width, patch_dim, e.dtype, e.param_dtype, name=name)
    nce, accuracy = info_nce(head("discriminative")(masked_tokens), targets, weights)
    reconstruction = head("generative")(masked_tokens).astype(jnp.float32)
    per_position = jnp.mean((reconstruction - targets) ** 2, axis=-1)
    mse = (per_position * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return {"ssast": nce + c.generative_weight * mse, "info_nce": nce, "mse": mse,
            "accuracy": accuracy, "mask": mask, "indices": indices}

  @nn.compact
  def __call__(self, features, *, train: bool = False, valid_frames=None, rolls=None):
    c = self.config
    e = c.encoder
    encoder = ast.Encoder(e, name="encoder")
    out, loss = {}, 0.0
    if c.ssast_weight:
      out = self._masked(encoder, features, train, valid_frames)
      loss = c.ssast_weight * out.pop("ssast")
    if c.transcribes:
      if rolls is None:
        raise ValueError("transcription_weight > 0 needs the batch's note rolls "
                         "(InputConfig.note_rolls)")
      # Its own pass over the unmasked input: with SSAST's 78 % of patches masked, the
      # notes under them could not be heard. The encoder's parameters are shared.
      tokens = encoder(features, train=train, valid_frames=valid_frames)["tokens"]
      logits = transcription.TranscriptionHead(
          e, c.transcription_hidden, c.transcription_frame_features, name="transcription")(
              tokens[:, e.num_tokens:], features, train=train)
      part, metrics = transcription.loss(logits, rolls, valid_frames,
                                         c.transcription_positive_weight,
                                         c.transcription_velocity_weight)
      loss = loss + c.transcription_weight * part
      out.update(metrics, transcription=part)
    return {"loss": loss, **out}
