"""Attention maps of a fine-tuned AST: where did the model look? (eval.attention_figures draws them.)

Two kinds of map per window, each spread back from the patch grid to the mel x
frames pixels:

  rollout       attention rollout (Abnar & Zuidema 2020) through the encoder:
                per layer the head-averaged attention plus the identity (the
                residual stream), rows renormalised, multiplied through the
                layers. The rows of the tokens the model pools (the valid
                patches with pooling="patches", the extra tokens with "tokens")
                are averaged: one relevance value per input patch.
  group maps    each task group's query (timing, dynamics, expression) in the
                grouped heads: its head-averaged cross-attention over the
                encoder's patch tokens. The rest of its attention goes to the
                extra tokens, its own query and the *other* groups' queries (the
                cross-task part); those shares are returned and printed in the
                panel title.

Why a separate model config: the encoder's memory-efficient "blocked" kernel
never materialises the attention probabilities, so the run's model config is
rebuilt with `attention="plain"` (same parameters, same outputs; a test checks
the predictions agree) and the probabilities the model sows as
"intermediates" are collected.

Layouts (checked against the model's sown values, see tests):

  encoder   intermediates/encoder/blocks/attn/attention: a 1-tuple holding
            [L, B, H, N, N] (nn.scan stacks layers first), N = num_tokens +
            F'·T', the extra tokens first, then patches row-major in (frequency,
            time): token num_tokens + f·T' + t is patch (f, t).
  heads     intermediates/heads/layer_{i}/cross_attention: a 1-tuple holding
            [B, H, G, N + G] (keys: the encoder tokens, then the G group
            queries); with cross_task=False the groups are folded into the
            batch, [B·G, H, 1, N + 1], and are unfolded here into the same
            [B, H, G, N + G] layout with zero attention between groups.

The maps read the *same* features the model was trained on: recordings go
through `eval.predict`'s feature path (the preprocessing job's functions in the
job's order, bitwise the shards' windows) at the run's window and hop. Everything here but
the model call is numpy and can be tested without a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from eval import loading
from model import ast, multitask
from pipelines.datasets import taxonomy


class AttentionMapError(ValueError):
  """The run or the input cannot give attention maps; the message says why."""


class WindowError(AttentionMapError):
  """The requested window does not exist in the recording."""


# ---------------------------------------------------------------------------
# Pure functions (numpy, one example).


def rollout(attentions: np.ndarray, token_mask: np.ndarray | None = None,
            residual: float = 0.5) -> np.ndarray:
  """Attention rollout `[N, N]` of one example's attention `[L, H, N, N]` (rows: queries).

  Per layer: Â = (1 - residual) · mean_h(A) + residual · I, rows renormalised;
  then R = Â_L ··· Â_1, so R[i, j] is how much output token i draws from input
  token j. `residual` 0.5 is Abnar & Zuidema's choice (the residual stream and
  the attention weighted equally).

  `token_mask [N]` (True = a real token): padded tokens get zero weight as keys
  in every layer, whatever the given probabilities say, and their identity term
  is dropped, so no row of the result puts weight on padding. Every row sums to
  1 (padded query rows too: they are carried along but pooled by nobody).
  """
  a = np.asarray(attentions)  # converted layer by layer: the base model's is ~0.85 GB
  if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
    raise AttentionMapError(f"attentions must be [layers, heads, N, N], got {a.shape}")
  if not 0.0 <= residual <= 1.0:
    raise AttentionMapError(f"residual must be in [0, 1], got {residual}")
  n = a.shape[-1]
  keep = np.ones(n, bool) if token_mask is None else np.asarray(token_mask, bool)
  if keep.shape != (n,):
    raise AttentionMapError(f"token_mask must be [{n}], got {keep.shape}")
  if not keep.any():
    raise AttentionMapError("token_mask masks every token")
  eye = np.diag(keep.astype(np.float64))
  result = np.eye(n)
  for layer in a:
    heads = layer.mean(axis=0, dtype=np.float64)
    mixed = (1.0 - residual) * heads * keep[None, :] + residual * eye
    rows = mixed.sum(axis=1, keepdims=True)
    # A padded query with residual 1 has no weight left anywhere: let it read the
    # valid tokens uniformly rather than divide by zero.
    mixed = np.where(rows > 0, mixed / np.where(rows > 0, rows, 1.0), keep / keep.sum())
    result = mixed @ result
  return result


def patch_relevance(rolled: np.ndarray, config: ast.EncoderConfig,
                    token_mask: np.ndarray | None = None) -> np.ndarray:
  """How much the model's pooled output draws from each input patch: `[F', T']`.

  The pooled output is the mean of the valid patch tokens (pooling="patches")
  or of the extra tokens ("tokens"), so its relevance row is the mean of those
  rows of the rollout; its patch columns, in `patchify`'s row-major (frequency,
  time) order, are reshaped to the grid. Values are shares of the pooled row
  (they sum to at most 1: the rest is on the extra tokens); padded patches get 0.
  """
  n, t = config.length, config.num_tokens
  rolled = np.asarray(rolled, np.float64)
  if rolled.shape != (n, n):
    raise AttentionMapError(f"rollout must be [{n}, {n}] for this encoder, got {rolled.shape}")
  keep = np.ones(n, bool) if token_mask is None else np.asarray(token_mask, bool)
  if config.pooling == "tokens":
    rows = np.arange(t)
  else:
    rows = t + np.flatnonzero(keep[t:])
    if rows.size == 0:
      raise AttentionMapError("no valid patch to pool")
  relevance = rolled[rows].mean(axis=0)[t:] * keep[t:]
  return relevance.reshape(config.grid)


def coverage(config: ast.EncoderConfig) -> np.ndarray:
  """How many patches cover each mel x frame pixel, `[mel, frames]` (0: none, e.g. the
  top mel bins that a stride of 10 leaves out)."""
  return _spread(np.ones(config.grid), config)


def _spread(grid: np.ndarray, config: ast.EncoderConfig) -> np.ndarray:
  p, fs, ts = config.patch_size, config.freq_stride, config.time_stride
  out = np.zeros((config.num_mel_bins, config.num_frames))
  for f in range(grid.shape[0]):
    for t in range(grid.shape[1]):
      out[f * fs:f * fs + p, t * ts:t * ts + p] += grid[f, t]
  return out


def to_spectrogram(grid: np.ndarray, config: ast.EncoderConfig) -> np.ndarray:
  """Patch values `[F', T']` -> `[mel, frames]`: each pixel the mean over the patches that
  cover it (overlapping patches share pixels), 0 where no patch does.

  A constant grid stays constant on the covered pixels, and with non-overlapping
  patches every patch's value lands exactly on its own patch_size² block.
  """
  grid = np.asarray(grid, np.float64)
  if grid.shape != config.grid:
    raise AttentionMapError(f"grid must be {config.grid} for this encoder, got {grid.shape}")
  counts = coverage(config)
  return np.where(counts > 0, _spread(grid, config) / np.maximum(counts, 1), 0.0)


def group_attention(cross: np.ndarray, config: ast.EncoderConfig, group_names: Sequence[str],
                    token_mask: np.ndarray | None = None) -> dict[str, dict]:
  """Each group query's attention, from one example's cross-attention `[layers, H, G, N + G]`.

  Head- and layer-averaged (with several head layers every layer reads the
  encoder into the group token's residual stream, so each counts equally).
  Per group: `grid [F', T']` (attention on each patch token), and `shares`, which
  sum to 1: `patches`, `extra_tokens` ([CLS]/distillation), `self` (its own
  query) and `other_groups`, with `to_groups` the share per group query (the
  cross-task part: what this group read from the others' summaries).
  """
  n, t = config.length, config.num_tokens
  names = tuple(group_names)
  g = len(names)
  cross = np.asarray(cross, np.float64)
  if cross.ndim != 4 or cross.shape[2:] != (g, n + g):
    raise AttentionMapError(f"cross-attention must be [layers, heads, {g}, {n + g}] for {g} "
                            f"groups and {n} encoder tokens, got {cross.shape}")
  mean = cross.mean(axis=(0, 1))  # [G, N + G]
  keep = np.ones(n, bool) if token_mask is None else np.asarray(token_mask, bool)
  out = {}
  for j, name in enumerate(names):
    row = mean[j]
    to_groups = {other: float(row[n + k]) for k, other in enumerate(names)}
    out[name] = {
        "grid": (row[t:n] * keep[t:]).reshape(config.grid),
        "shares": {
            "patches": float((row[t:n] * keep[t:]).sum()),
            "extra_tokens": float(row[:t].sum()),
            "self": to_groups[name],
            "other_groups": float(sum(v for k, v in to_groups.items() if k != name)),
            "to_groups": to_groups,
        },
    }
  return out


# ---------------------------------------------------------------------------
# The model.


def _map_config(model_config: multitask.MultiTaskConfig) -> multitask.MultiTaskConfig:
  if model_config.backbone != "ast":
    raise AttentionMapError(f"attention maps need the AST backbone; this run uses "
                            f"{model_config.backbone!r}")
  return model_config.replace(encoder=model_config.encoder.replace(attention="plain"))


def _only(value, what: str) -> np.ndarray:
  """A sown value is a tuple of one array per call; these modules are called once."""
  if not isinstance(value, tuple) or len(value) != 1:
    raise AttentionMapError(f"expected one sown {what} array, got {type(value).__name__} "
                            f"of {len(value) if isinstance(value, tuple) else '?'}")
  return np.asarray(value[0])


class Collector:
  """Runs the model with plain attention and returns its attention probabilities.

  `__call__(features [B, mel, frames] normalised, valid_frames [B])` returns
  `encoder [B, L, H, N, N]`, `cross [B, layers, H, G, N + G]` (None with a flat
  head), `token_mask [B, N]` and `predictions [B, 19]` (normalised target space).
  The apply function is jitted once per Collector.
  """

  def __init__(self, model_config: multitask.MultiTaskConfig, params: dict):
    self.config = _map_config(model_config)
    self.params = params
    model = multitask.MultiTaskModel(self.config)

    def apply(params, x, valid_frames):
      out, state = model.apply({"params": params}, x, valid_frames=valid_frames,
                               mutable=["intermediates"])
      return out["predictions"], state["intermediates"]

    self._apply = jax.jit(apply)

  def __call__(self, features_batch: np.ndarray, valid_frames: np.ndarray) -> dict:
    c = self.config.encoder
    x = np.asarray(features_batch, np.float32)
    if x.ndim != 3 or x.shape[1:] != (c.num_mel_bins, c.num_frames):
      raise AttentionMapError(f"features must be [batch, {c.num_mel_bins}, {c.num_frames}] "
                              f"(mel, frames; the run's window), got {x.shape}")
    b = x.shape[0]
    valid = np.asarray(valid_frames, np.int32).reshape(b)
    if (valid < 1).any() or (valid > c.num_frames).any():
      raise AttentionMapError(f"valid_frames must be in 1..{c.num_frames}, got {valid.tolist()}")
    predictions, inter = self._apply(self.params, x, valid)
    encoder = _only(inter["encoder"]["blocks"]["attn"]["attention"], "encoder attention")
    encoder = np.moveaxis(encoder, 0, 1)  # [L, B, ...] -> [B, L, H, N, N]
    token_mask = np.concatenate(
        [np.ones((b, c.num_tokens), bool), np.asarray(ast.patch_validity(valid, c))], axis=1)
    return {"encoder": encoder, "cross": self._cross(inter, b), "token_mask": token_mask,
            "predictions": np.asarray(predictions)}

  def _cross(self, inter: dict, b: int) -> np.ndarray | None:
    if self.config.head != "grouped":
      return None
    n, g = self.config.encoder.length, len(self.config.groups)
    layers = []
    for i in range(self.config.head_depth):
      probs = _only(inter["heads"][f"layer_{i}"]["cross_attention"], "cross-attention")
      if self.config.cross_task:
        if probs.shape[0] != b or probs.shape[2:] != (g, n + g):
          raise AttentionMapError(f"cross-attention of shape {probs.shape}; expected "
                                  f"[{b}, heads, {g}, {n + g}]")
      else:
        # Groups folded into the batch (row b·G + j, keys: encoder tokens + own query):
        # unfold into the cross-task layout with zero attention to the other groups.
        if probs.shape[0] != b * g or probs.shape[2:] != (1, n + 1):
          raise AttentionMapError(f"cross-attention of shape {probs.shape}; expected "
                                  f"[{b * g}, heads, 1, {n + 1}] with cross_task=False")
        folded = probs.reshape(b, g, probs.shape[1], n + 1).transpose(0, 2, 1, 3)
        unfolded = np.zeros(folded.shape[:3] + (n + g,), folded.dtype)
        unfolded[..., :n] = folded[..., :n]
        for j in range(g):
          unfolded[:, :, j, n + j] = folded[:, :, j, n]
        probs = unfolded
      layers.append(probs)
    return np.stack(layers, axis=1)


def maps_from_attention(collected: dict, index: int, config: multitask.MultiTaskConfig,
                        residual: float = 0.5) -> dict:
  """The maps of example `index` of a `Collector` result (see `maps`)."""
  enc = config.encoder
  token_mask = collected["token_mask"][index]
  rolled = rollout(collected["encoder"][index], token_mask, residual)
  grid = patch_relevance(rolled, enc, token_mask)
  result = {
      "rollout": {"grid": grid, "map": to_spectrogram(grid, enc),
                  "share_on_patches": float(grid.sum())},
      "groups": {},
      "covered": coverage(enc) > 0,
      "token_mask": token_mask,
      "valid_patches": int(token_mask[enc.num_tokens:].sum()),
      "predictions": collected["predictions"][index],
  }
  if collected["cross"] is not None:
    names = [name for name, _ in config.groups]
    groups = group_attention(collected["cross"][index], enc, names, token_mask)
    for (name, dims), value in zip(config.groups, groups.values()):
      value["map"] = to_spectrogram(value["grid"], enc)
      value["dimensions"] = tuple(taxonomy.DIMENSION_NAMES[d] for d in dims)
    result["groups"] = groups
  return result


def maps(run: loading.Run, window_features: np.ndarray, valid_frames: int,
         residual: float = 0.5) -> dict:
  """Rollout and per-group maps of one window.

  `window_features`: the model's input `[mel, frames]` (normalised as in training,
  `pipelines.audio.frontend.normalize`, then transposed). Returns

    rollout      {"grid" [F', T'], "map" [mel, frames], "share_on_patches"}
    groups       {name: {"grid", "map", "shares", "dimensions"}} ({} with a flat head)
    covered      [mel, frames] bool: pixels some patch covers
    token_mask   [N]; valid_patches; predictions [19] (normalised target space)
  """
  collected = Collector(run.model_config, run.params)(
      np.asarray(window_features)[None], np.array([valid_frames]))
  return maps_from_attention(collected, 0, _map_config(run.model_config), residual)


# ---------------------------------------------------------------------------
