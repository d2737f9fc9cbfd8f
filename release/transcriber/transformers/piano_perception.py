"""PyTorch inference for an exported Piano Perception Transformer (or its transcriber).

Needs torch, transformers (>= 5) and safetensors. `python -m eval.export_transformers`
copies this file into every export directory, so a PyTorch user runs the model
without the project that trained it: this module must import nothing of that
project (tests/test_export.py checks it). The directory:

  config.json, model.safetensors   the encoder, a `transformers.ASTModel`
  head.safetensors                 the `PerceptionHead` below
  perception.json                  what the weights cannot say: the head's shape, the
                                   target statistics, the feature settings
  piano_perception.py              this file
  README.md                        the recipe in prose

Use:

  import sys; sys.path.insert(0, EXPORT_DIR)
  import piano_perception
  model = piano_perception.load(EXPORT_DIR)
  logmel = ...  # [frames, 128] Kaldi log-mel of 16 kHz mono audio (see README.md)
  recording, per_window = piano_perception.score(model, logmel)  # label space; x 7 = 1-7

An exported transcriber (`perception.json` "kind": "transcriber"; `--kind=transcriber`)
has a `TranscriptionHead` instead: `load` returns a `PianoTranscription`, whose
`forward` gives the onset / offset / frame / velocity probabilities `[B, frames, 88]`
and the pedal's `[B, frames]`; `perception.json` holds the decoding thresholds chosen
on validation.

Why a wrapper around `ASTModel`: the model was trained with a key mask that
`ASTModel` alone does not apply. Patches made only of padding (the zero-padded end
of a recording's last window) are not attended to, and a model trained with fewer
than AST's two extra tokens has the missing token slots of `ASTModel`'s input
masked out for good (their weights are zero and never read). `PianoPerception`
builds that mask; calling the bare `ASTModel` without it gives other numbers for
such windows and models (`perception.json` says `attention_mask_required`).
"""

from __future__ import annotations

import inspect
import json
import math
import pathlib

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

ABOUT = "perception.json"
HEAD_WEIGHTS = "head.safetensors"
_NEG = -1e30  # the training model's logit for masked keys (finite: no NaN rows)


class CrossTaskLayer(nn.Module):
  """One pre-LayerNorm layer: group tokens attend over [encoder tokens; group tokens]."""

  def __init__(self, width: int, heads: int, mlp_dim: int, eps: float):
    super().__init__()
    self.heads = heads
    self.norm_q = nn.LayerNorm(width, eps=eps)
    self.norm_kv = nn.LayerNorm(width, eps=eps)
    self.q = nn.Linear(width, width)
    self.kv = nn.Linear(width, 2 * width)  # rows: keys then values, heads-major in each
    self.out = nn.Linear(width, width)
    self.norm_mlp = nn.LayerNorm(width, eps=eps)
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, queries: torch.Tensor, tokens: torch.Tensor,
              key_mask: torch.Tensor) -> torch.Tensor:
    """`queries [B, G, D]`, `tokens [B, N, D]`, `key_mask [B, G, N + G]` bool -> `[B, G, D]`."""
    b, g, d = queries.shape
    head_dim = d // self.heads
    q_in = self.norm_q(queries)
    kv_in = torch.cat([self.norm_kv(tokens), q_in], dim=1)
    q = self.q(q_in).view(b, g, self.heads, head_dim)
    kv = self.kv(kv_in).view(b, kv_in.shape[1], 2, self.heads, head_dim)
    logits = torch.einsum("bqhd,bkhd->bhqk", q * head_dim ** -0.5, kv[:, :, 0])
    probs = logits.masked_fill(~key_mask[:, None], _NEG).softmax(dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, kv[:, :, 1]).reshape(b, g, d)
    queries = queries + self.out(out)
    return queries + self.fc2(F.gelu(self.fc1(self.norm_mlp(queries))))


class PerceptionHead(nn.Module):
  """`(tokens [B, N, D], token_mask [B, N]) -> [B, outputs]` normalised predictions.

  `tokens` are the encoder's output tokens as the training model saw them: its
  `num_tokens` extra tokens, then the F'·T' patches (frequency-major);
  `token_mask` is True where a token holds signal.

  "grouped": one learned query per task group, `depth` cross-task layers (each
  group attends to the encoder tokens and, with `cross_task`, to the other groups;
  without it, only to itself), then per group LayerNorm -> Linear -> GELU ->
  Linear to its dimensions, scattered back to label order. "flat": LayerNorm ->
  Linear on the pooled embedding (mean of the extra tokens, or of the valid
  patches, as `pooling` says).
  """

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    width, eps = config["width"], config["layer_norm_eps"]
    if config["kind"] == "grouped":
      groups = config["groups"]
      self.queries = nn.Parameter(torch.zeros(len(groups), width))
      self.layers = nn.ModuleList(
          CrossTaskLayer(width, config["heads"], config["mlp_dim"], eps)
          for _ in range(config["depth"]))
      self.groups = nn.ModuleDict({
          name: nn.ModuleDict(dict(norm=nn.LayerNorm(width, eps=eps),
                                   fc1=nn.Linear(width, config["hidden"]),
                                   fc2=nn.Linear(config["hidden"], len(dims))))
          for name, dims in groups})
      dims = [d for _, ds in groups for d in ds]
      # Group outputs come out group by group; `order` puts them back in label order.
      self.register_buffer("order", torch.argsort(torch.tensor(dims)), persistent=False)
    elif config["kind"] == "flat":
      self.norm = nn.LayerNorm(width, eps=eps)
      self.out = nn.Linear(width, config["num_outputs"])
    else:
      raise ValueError(f"unknown head kind {config['kind']!r}")

  def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    c = self.config
    if c["kind"] == "flat":
      return self.out(self.norm(self._pooled(tokens, token_mask)))
    b, n, _ = tokens.shape
    g = self.queries.shape[0]
    groups = torch.ones(g, g, dtype=torch.bool, device=tokens.device)
    if not c["cross_task"]:
      groups = torch.eye(g, dtype=torch.bool, device=tokens.device)
    key_mask = torch.cat([token_mask[:, None, :].expand(b, g, n), groups.expand(b, g, g)], dim=2)
    x = self.queries.expand(b, -1, -1)
    for layer in self.layers:
      x = layer(x, tokens, key_mask)
    outputs = [head.fc2(F.gelu(head.fc1(head.norm(x[:, j]))))
               for j, head in enumerate(self.groups.values())]
    return torch.cat(outputs, dim=-1)[:, self.order]

  def _pooled(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    t = self.config["num_tokens"]
    if self.config["pooling"] == "tokens":
      return tokens[:, :t].mean(dim=1)
    w = token_mask[:, t:, None].to(tokens.dtype)
    return (tokens[:, t:] * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)


def _masks(e: dict, valid_frames: torch.Tensor | None, batch: int,
           device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
  """(ASTModel's `attention_mask [B, 2 + P]` or None when nothing is masked, the training
  model's token mask `[B, num_tokens + P]` bool), for perception.json's "encoder" `e`."""
  f, t = e["grid"]
  if valid_frames is None:
    valid_frames = torch.full((batch,), e["num_frames"], device=device)
  # A patch holds signal when its first frame is a real one (model.ast.patch_validity).
  starts = torch.arange(t, device=device) * e["time_stride"]
  patches = (starts[None, :] < valid_frames.to(device)[:, None])[:, None, :]
  patches = patches.expand(batch, f, t).reshape(batch, f * t)
  slots = torch.arange(2, device=device)[None, :].expand(batch, 2) < e["num_tokens"]
  ours = torch.cat([slots[:, :e["num_tokens"]], patches], dim=1)
  full = torch.cat([slots, patches], dim=1)
  return (None if bool(full.all()) else full.long()), ours


class _MaskedAST(nn.Module):
  """The `ASTModel` (`self.encoder`) run with the training model's key mask."""

  def __init__(self, encoder: nn.Module, about: dict):
    super().__init__()
    self.encoder, self.about = encoder, about
    # Once, not per call: transformers < 5 has no attention_mask argument.
    self._takes_mask = "attention_mask" in inspect.signature(encoder.forward).parameters

  def encode(self, input_values: torch.Tensor, valid_frames: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the tokens as the training model has them, `[B, num_tokens + P, D]`; their validity
    mask `[B, num_tokens + P]`)."""
    e = self.about["encoder"]
    expected = (e["num_frames"], e["num_mel_bins"])
    if input_values.ndim != 3 or tuple(input_values.shape[1:]) != expected:
      raise ValueError(f"input_values must be [batch, {expected[0]} frames, {expected[1]} mel "
                       f"bins], got {tuple(input_values.shape)}")
    attention_mask, ours = _masks(e, valid_frames, input_values.shape[0], input_values.device)
    if attention_mask is None:
      hidden = self.encoder(input_values).last_hidden_state
    elif not self._takes_mask:
      raise RuntimeError("this transformers version's ASTModel takes no attention_mask, which "
                         "this model needs (fewer than 2 extra tokens or padded windows); "
                         "use transformers >= 5")
    else:
      hidden = self.encoder(input_values, attention_mask=attention_mask).last_hidden_state
    # ASTModel's sequence is [CLS, distillation, patches]; ours keeps only the slots it has.
    return torch.cat([hidden[:, :e["num_tokens"]], hidden[:, 2:]], dim=1), ours


KEYS = 88
ROLLS = ("onset", "offset", "frame", "velocity")


class TranscriptionHead(nn.Module):
  """`(patch_tokens [B, F'·T', D], features [B, frames, mel]) -> logits` of onset, offset,
  frame, velocity `[B, frames, 88]` and pedal `[B, frames]` (frames = T' · time_stride).

  Each time column of patch tokens (its F' tokens concatenated) goes through `hidden`;
  with `frame_features` every frame of the column gets that, plus a learned embedding of
  its place in the column and a 3-frame convolution over its log-mel values and their rise
  since the previous frame; GELU; `out`, one layer shared by the frames. Without frame
  features `out` predicts all of a column's frames at once.
  """

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    f, _ = config["grid"]
    stride, hidden = config["time_stride"], config["hidden"]
    per_frame = len(ROLLS) * KEYS + 1
    self.hidden = nn.Linear(f * config["width"], hidden)
    if config["frame_features"]:
      self.place = nn.Parameter(torch.zeros(stride, hidden))
      self.frames = nn.Conv1d(2 * config["num_mel_bins"], hidden, 3, padding=1)
      self.out = nn.Linear(hidden, per_frame)
    else:
      self.out = nn.Linear(hidden, stride * per_frame)

  def forward(self, patch_tokens: torch.Tensor, features: torch.Tensor) -> dict:
    c = self.config
    f, t = c["grid"]
    stride = c["time_stride"]
    b = patch_tokens.shape[0]
    columns = patch_tokens.reshape(b, f, t, -1).transpose(1, 2).reshape(b, t, -1)
    x = self.hidden(columns)
    if c["frame_features"]:
      x = x.repeat_interleave(stride, dim=1)
      x = x + self.place[torch.arange(t * stride, device=x.device) % stride]
      rise = (features - torch.cat([features[:, :1], features[:, :-1]], dim=1)).clamp(min=0)
      x = x + self.frames(torch.cat([features, rise], dim=-1).transpose(1, 2)).transpose(1, 2)
      x = self.out(F.gelu(x))
    else:
      x = self.out(F.gelu(x)).reshape(b, t * stride, -1)
    out = {name: x[..., i * KEYS:(i + 1) * KEYS] for i, name in enumerate(ROLLS)}
    out["pedal"] = x[..., -1]
    return out


class PianoTranscription(_MaskedAST):
  """The encoder (`transformers.ASTModel`) and the transcription head, with the key masks.

  `forward(input_values [B, frames, mel], valid_frames [B] | None)` returns sigmoid
  probabilities: onset, offset, frame, velocity (velocity / 127 at onsets) `[B, frames, 88]`
  and pedal `[B, frames]`. `about["thresholds"]` holds the decoding thresholds chosen on
  validation (onset, frame, pedal, min_pedal_s).
  """

  def __init__(self, encoder: nn.Module, head: TranscriptionHead, about: dict):
    super().__init__(encoder, about)
    self.head = head

  def forward(self, input_values: torch.Tensor,
              valid_frames: torch.Tensor | None = None) -> dict:
    tokens, _ = self.encode(input_values, valid_frames)
    logits = self.head(tokens[:, self.about["encoder"]["num_tokens"]:], input_values)
    return {k: torch.sigmoid(v) for k, v in logits.items()}


class PianoPerception(_MaskedAST):
  """The encoder (`transformers.ASTModel`) and the head, with the key masks and target statistics.

  `forward(input_values [B, frames, mel], valid_frames [B] | None)` returns label-space
  scores `[B, outputs]` (mean rating / 7; x 7 is the 1-7 scale). `input_values` are
  normalised log-mel windows in transformers' layout (`windows()` makes them);
  `valid_frames` counts each window's real frames (None: all of them).
  """

  def __init__(self, encoder: nn.Module, head: PerceptionHead, about: dict):
    super().__init__(encoder, about)
    self.head = head
    targets = about["targets"]
    self.register_buffer("target_mean", torch.tensor(targets["mean"]), persistent=False)
    self.register_buffer("target_std", torch.tensor(targets["std"]), persistent=False)

  def normalised(self, input_values: torch.Tensor,
                 valid_frames: torch.Tensor | None = None) -> torch.Tensor:
    """The head's output before the target statistics are undone: `[B, outputs]`."""
    tokens, mask = self.encode(input_values, valid_frames)
    return self.head(tokens, mask)

  def forward(self, input_values: torch.Tensor,
              valid_frames: torch.Tensor | None = None) -> torch.Tensor:
    return self.normalised(input_values, valid_frames) * self.target_std + self.target_mean


def load(directory: str | pathlib.Path, device: str | torch.device = "cpu"
         ) -> PianoPerception | PianoTranscription:
  """The exported model in eval mode (float32), from local files only: a `PianoPerception`,
  or a `PianoTranscription` for an exported transcriber."""
  from transformers import ASTModel

  directory = pathlib.Path(directory)
  about = json.loads((directory / ABOUT).read_text())
  encoder = ASTModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
  transcriber = about.get("kind") == "transcriber"
  head = (TranscriptionHead if transcriber else PerceptionHead)(about["head"])
  state = {k: v.float() for k, v in safetensors.torch.load_file(directory / HEAD_WEIGHTS).items()}
  head.load_state_dict(state, strict=True)
  model = (PianoTranscription if transcriber else PianoPerception)(encoder, head, about)
  return model.to(device).float().eval()


def windows(logmel: torch.Tensor, about: dict) -> tuple[torch.Tensor, torch.Tensor]:
  """A recording's log-mel `[frames, mel]` -> (`input_values [n, frames, mel]`, `valid_frames [n]`).

  As the training data was made: a window every `hop_frames`, the last one
  zero-padded (in the log domain, before normalisation); the values rounded to
  float16 (the training shards' storage), then normalised `(x - mean) / (2 std)`
  with the training set's statistics.
  """
  f = about["features"]
  frames, hop = f["window_frames"], f["hop_frames"]
  total = logmel.shape[0]
  if logmel.ndim != 2 or total == 0:
    raise ValueError(f"logmel must be [frames >= 1, mel], got {tuple(logmel.shape)}")
  count = 1 + max(0, math.ceil((total - frames) / hop))
  out = logmel.new_zeros((count, frames, logmel.shape[1]), dtype=torch.float32)
  valid = []
  for i in range(count):
    n = min(frames, total - i * hop)
    out[i, :n] = logmel[i * hop:i * hop + n]
    valid.append(n)
  out = out.to(torch.float16).to(torch.float32)
  normalised = (out - f["log_mel_mean"]) / (2.0 * f["log_mel_std"])
  return normalised, torch.tensor(valid)


@torch.no_grad()
def score(model: PianoPerception, logmel: torch.Tensor,
          batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
  """(recording scores `[outputs]`, per-window scores `[n, outputs]`), label space.

  The recording's score is the plain mean over all its windows (near-silent ones
  included), as the trainer and `eval.predict` average a performance.
  """
  x, valid = windows(logmel, model.about)
  device = model.target_mean.device
  per_window = torch.cat([model(x[i:i + batch_size].to(device), valid[i:i + batch_size])
                          for i in range(0, x.shape[0], batch_size)])
  return per_window.double().mean(dim=0), per_window
