"""Export a fine-tuning run to PyTorch: a `transformers.ASTModel` checkpoint plus a small head.

  python -m eval.export_transformers --checkpoint=W --output_dir=DIR [--step=best] [--overwrite]
  python -m eval.export_transformers --kind=transcriber --checkpoint=release/transcriber \
      --output_dir=release/transcriber/transformers --dtype=float16

Why: most audio users run PyTorch, and the encoder is an AST: written as an
`ASTModel` checkpoint it loads with `transformers` (no JAX, no network, no copy
of this project), and the only code a user needs beside it is the small head
module this package ships and copies into DIR.

  DIR/config.json, model.safetensors   `ASTModel.from_pretrained(DIR)` (float32)
  DIR/head.safetensors                 `piano_perception.PerceptionHead`'s weights
  DIR/perception.json                  the head's shape, the target statistics (to undo the
                                       label normalisation), the feature settings (window,
                                       hop, log-mel mean/std, layout), which token slots
                                       and masks the encoder needs, the run and step
  DIR/piano_perception.py              the PyTorch side (model/convert/piano_perception.py)
  DIR/README.md                        how to run it, with this run's numbers

The encoder is written by inverting `model.convert.rules` (the importer's table,
so the two directions cannot drift apart), in transformers 4.x names: the hub's
AST checkpoints carry them and transformers 5 maps them on load, so both load
the file (running it with the masks below needs 5). Before anything is written,
importing the written state dict with `conversion.from_transformers` must give
back the run's parameters exactly.

`ASTModel` always has two extra tokens ([CLS], distillation). A run trained with
fewer (the fine-tuning default is one) is written with the missing slots' token
and position rows zero and masked out as attention keys, which makes every
other token's computation exactly the run's; `piano_perception.PianoPerception`
builds that mask (and the padding mask of a recording's last window), and
perception.json says `attention_mask_required`, because the bare `ASTModel`
without it computes something else. Options with no `ASTModel` equivalent (a
backbone other than the AST encoder, windows the encoder does not read) are
refused with one line, before anything is written.

`--kind=transcriber` writes a notes-aware pre-training run or a transcriber release
(`eval.export_release`) the same way: its encoder as the `ASTModel`, its transcription head
(`piano_perception.TranscriptionHead`) in head.safetensors, and in perception.json
("kind": "transcriber") the head's shape, the decoding thresholds and the feature settings;
`piano_perception.load` then returns a `PianoTranscription` (frame probabilities).
`--dtype=float16` stores the weights in half precision (a release's weights are float16
already, so nothing is lost; the loader computes in float32).

Writing needs only numpy and safetensors; torch and transformers are needed to
load and run the result (tests/test_export.py does, against the Flax model).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from model import ast, heads, multitask, transcription
from model import params as params_lib
from model import targets
from model.convert import conversion, keys, rules
from model.convert.errors import ConversionError
from pipelines.audio import features, windowing
from pipelines.datasets import percepiano, taxonomy

FORMAT = "piano-perception-transformer/transformers-export"
FORMAT_VERSION = 1
ABOUT = "perception.json"
HEAD_WEIGHTS = "head.safetensors"
ENCODER_WEIGHTS = "model.safetensors"  # transformers' file names
ENCODER_CONFIG = "config.json"
# Found, not imported (it imports torch): the file every export carries.
TORCH_MODULE = pathlib.Path(importlib.util.find_spec("model.convert.piano_perception").origin)
FILES = (ENCODER_CONFIG, ENCODER_WEIGHTS, HEAD_WEIGHTS, ABOUT, TORCH_MODULE.name, "README.md")

# The hub checkpoints' names: read by transformers 4.x and 5.x alike.
_LAYOUT = rules.LAYOUTS["transformers-4"]
_AST_TOKENS = 2  # ASTModel's [CLS] and distillation slots
# The activation names ASTConfig.hidden_act takes for our GELU settings ("gelu_new" is
# the tanh approximation jax.nn.gelu(approximate=True) computes).
_GELU = {False: "gelu", True: "gelu_new"}


class ExportError(ConversionError):
  """The run cannot be written as an `ASTModel` plus head that computes what it computes."""


# --------------------------------------------------------------------------- what can be exported


def check_exportable(config: multitask.MultiTaskConfig, data_metadata: Mapping[str, Any]) -> None:
  """Raises `ExportError` (one line) for a run `ASTModel` cannot stand in for."""
  if config.backbone != "ast":
    raise ExportError(f"the run's backbone is {config.backbone!r}; only the AST encoder "
                      "(backbone='ast') has a transformers ASTModel equivalent")
  _check_window(config.encoder, data_metadata)


def _check_window(encoder: ast.EncoderConfig, data_metadata: Mapping[str, Any]) -> None:
  window = _window(data_metadata)
  if window.frames != encoder.num_frames:
    raise ExportError(f"the data's windows are {window.frames} frames but the encoder reads "
                      f"{encoder.num_frames}")


def _window(data_metadata: Mapping[str, Any]) -> windowing.WindowConfig:
  c = data_metadata["config"]
  return windowing.WindowConfig.from_seconds(
      c["window_s"], c["hop_s"], c.get("silence_db", windowing.WindowConfig.silence_db))


# --------------------------------------------------------------------------- the encoder


def ast_config(encoder: ast.EncoderConfig) -> dict[str, Any]:
  """`transformers.ASTConfig` fields (config.json) of our encoder."""
  return {
      "architectures": ["ASTModel"], "model_type": "audio-spectrogram-transformer",
      "hidden_size": encoder.width, "num_hidden_layers": encoder.depth,
      "num_attention_heads": encoder.heads, "intermediate_size": encoder.mlp_dim,
      "hidden_act": _GELU[encoder.gelu_approximate],
      # Training-time only: the same places as ours (embeddings, residual branches);
      # our attention has no dropout of its own.
      "hidden_dropout_prob": encoder.dropout, "attention_probs_dropout_prob": 0.0,
      "initializer_range": 0.02, "layer_norm_eps": encoder.layer_norm_eps,
      "patch_size": encoder.patch_size, "qkv_bias": True,
      "frequency_stride": encoder.freq_stride, "time_stride": encoder.time_stride,
      "max_length": encoder.num_frames, "num_mel_bins": encoder.num_mel_bins,
      "dtype": "float32",
  }


def _with_ast_tokens(params: Mapping[str, Any], encoder: ast.EncoderConfig) -> dict[str, Any]:
  """float32 encoder parameters with both of ASTModel's token slots (absent ones zero)."""
  flat = {k: np.asarray(v, np.float32) for k, v in params_lib.flatten(params).items()}
  flat.pop("mask_embed", None)  # SSAST pre-training only; never reached in fine-tuning
  missing = _AST_TOKENS - encoder.num_tokens
  for name in ("tokens", "token_pos_embed"):
    present = flat.get(name, np.zeros((0, encoder.width), np.float32))
    flat[name] = np.concatenate([present, np.zeros((missing, encoder.width), np.float32)])
  return params_lib.unflatten(flat)


def encoder_state_dict(params: Mapping[str, Any],
                       encoder: ast.EncoderConfig) -> dict[str, np.ndarray]:
  """Our encoder parameters as an `ASTModel` state dict (transformers 4.x names, float32).

  Each rule of `model.convert.rules` read backwards: the target array (one layer
  of a stacked block parameter, one part of q/k/v or of the token rows) through
  the transform's `invert`. The position table is two targets' rows, joined.
  """
  padded = _with_ast_tokens(params, encoder)
  flat = params_lib.flatten(padded)
  dims = rules.Dims(encoder.width, encoder.heads, encoder.mlp_dim, encoder.patch_size,
                    _AST_TOKENS, encoder.grid)
  pieces: dict[str, list[np.ndarray]] = {}
  for target, name, part, layer, source in keys.expanded_rules(_LAYOUT, encoder.depth,
                                                               _AST_TOKENS):
    transform = rules.TRANSFORMS[name]
    value = flat[target]
    if layer is not None:
      value = value[layer]
    if part is not None:
      value = np.take(value, part, axis=transform.part_axis)
    pieces.setdefault(source, []).append(transform.invert(value, dims))
  return {k: np.ascontiguousarray(v[0] if len(v) == 1 else np.concatenate(v, axis=1),
                                  dtype=np.float32) for k, v in pieces.items()}


def _check_round_trip(state: Mapping[str, np.ndarray], params: Mapping[str, Any],
                      encoder: ast.EncoderConfig) -> None:
  """The importer must read the written state dict back to exactly the parameters."""
  back, _ = conversion.from_transformers(
      state, encoder.replace(num_tokens=_AST_TOKENS, pooling="tokens"), strict=True)
  expected = params_lib.flatten(_with_ast_tokens(params, encoder))
  got = params_lib.flatten(back)
  wrong = sorted(k for k in expected if k not in got or not np.array_equal(got[k], expected[k]))
  if wrong or set(got) != set(expected):
    raise ExportError(f"internal error: the written encoder does not read back as the run's "
                      f"parameters ({wrong or sorted(set(got) ^ set(expected))}); "
                      "model.convert.rules' transforms and their inverses disagree")


# --------------------------------------------------------------------------- the head


def head_config(config: multitask.MultiTaskConfig, head_params: Mapping[str, Any]) -> dict:
  """`piano_perception.PerceptionHead`'s constructor argument (sizes from the weights)."""
  e = config.encoder
  common = {"kind": config.head, "width": e.width, "num_outputs": config.num_outputs,
            "num_tokens": e.num_tokens, "pooling": e.pooling}
  if config.head == "flat":
    return {**common, "layer_norm_eps": heads.FlatHead.layer_norm_eps}
  return {**common, "layer_norm_eps": heads.GroupedHeads.layer_norm_eps,
          "groups": [[name, list(dims)] for name, dims in config.groups],
          "heads": config.head_heads, "depth": config.head_depth,
          "mlp_dim": int(np.shape(head_params["layer_0"]["fc1"]["kernel"])[-1]),
          "hidden": config.head_hidden, "cross_task": config.cross_task}


def _torch_module_name(path: str, groups: heads.Groups) -> str:
  """Our head's module path -> `PerceptionHead`'s attribute path."""
  if m := re.fullmatch(r"layer_(\d+)/(\w+)", path):
    return f"layers.{m[1]}.{m[2]}"
  for name, _ in groups:
    if m := re.fullmatch(re.escape(name) + r"_(norm|fc1|fc2)", path):
      return f"groups.{name}.{m[1]}"
  return path.replace("/", ".")  # the flat head's norm and out


def head_state_dict(head_params: Mapping[str, Any],
                    config: multitask.MultiTaskConfig) -> dict[str, np.ndarray]:
  """Our head's parameters as `PerceptionHead`'s state dict (`nn.Linear`, `nn.LayerNorm`).

  A Dense kernel `[*in, *out]` (e.g. q: `[D, H, K]`, out: `[H, K, D]`) becomes a
  Linear weight `[prod(out), prod(in)]` with heads-major features, which is how
  the head module views q/k/v; the bias's rank says how many axes are `out`.
  """
  modules: dict[str, dict[str, np.ndarray]] = {}
  out: dict[str, np.ndarray] = {}
  for path, value in params_lib.flatten(head_params).items():
    value = np.asarray(value, np.float32)
    if "/" not in path:
      out[path] = value  # the group queries
    else:
      module, leaf = path.rsplit("/", 1)
      modules.setdefault(module, {})[leaf] = value
  for module, leaves in modules.items():
    name = _torch_module_name(module, config.groups)
    if "scale" in leaves:  # LayerNorm
      out[f"{name}.weight"], out[f"{name}.bias"] = leaves["scale"], leaves["bias"]
    else:
      kernel, bias = leaves["kernel"], leaves["bias"]
      fan_in = int(np.prod(kernel.shape[:kernel.ndim - bias.ndim]))
      out[f"{name}.weight"] = kernel.reshape(fan_in, -1).T
      out[f"{name}.bias"] = bias.reshape(-1)
  return {k: np.ascontiguousarray(v) for k, v in sorted(out.items())}


# --------------------------------------------------------------------------- the description


def _encoder_about(e: ast.EncoderConfig) -> dict[str, Any]:
  return {
      "class": "transformers.ASTModel", "num_tokens": e.num_tokens,
      "token_slots": "ASTModel's sequence is [CLS, distillation, F'xT' patches "
                     "(frequency-major)]; the model uses the first num_tokens slots and "
                     "masks the others out as keys",
      "attention_mask_required": e.num_tokens < _AST_TOKENS,
      "pooling": e.pooling, "grid": list(e.grid), "time_stride": e.time_stride,
      "num_frames": e.num_frames, "num_mel_bins": e.num_mel_bins,
      "trained_compute_dtype": e.dtype,
  }


def describe(config: multitask.MultiTaskConfig, head_params: Mapping[str, Any],
             normalizer: targets.TargetNormalizer, data_metadata: Mapping[str, Any],
             source: Mapping[str, Any]) -> dict[str, Any]:
  """perception.json: everything the weights do not say."""
  names = (list(taxonomy.DIMENSION_NAMES) if config.num_outputs == taxonomy.NUM_DIMENSIONS
           else [f"output_{i}" for i in range(config.num_outputs)])
  return {
      "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "perception",
      "source": dict(source), "encoder": _encoder_about(config.encoder),
      "head": head_config(config, head_params),
      "targets": {
          "dimensions": names, "mean": list(normalizer.mean), "std": list(normalizer.std),
          "formula": "label = output * std + mean; rating (1-7) = label * 7",
          "rating_scale": percepiano.RATING_SCALE,
      },
      "features": _features_about(data_metadata),
      "aggregation": "a recording's score is the mean of its windows' label-space scores over "
                     "all windows (near-silent ones included)",
  }


def _features_about(data_metadata: Mapping[str, Any]) -> dict[str, Any]:
  window = _window(data_metadata)
  fbank = features.AST
  norm = data_metadata["normalization"]
  return {
      "sample_rate": fbank.sample_rate,
      "log_mel": "torchaudio.compliance.kaldi.fbank(waveform[None], "
                 f"sample_frequency={fbank.sample_rate}, htk_compat=True, "
                 "use_energy=False, window_type='hanning', "
                 f"num_mel_bins={fbank.num_mel_bins}, dither=0.0, "
                 f"frame_shift={fbank.frame_shift_ms:g})",
      "layout": "input_values [batch, frames, mel] (transformers'; the project's shards "
                "are [mel, frames])",
      "window_frames": window.frames, "hop_frames": window.hop_frames,
      "window_s": window.frames / 100, "hop_s": window.hop_frames / 100,
      "padding": "the last window is zero-padded in the log domain before normalisation; "
                 "valid_frames says how many frames are real",
      "storage_dtype": "float16",
      "log_mel_mean": float(norm["mean"]), "log_mel_std": float(norm["std"]),
      "normalisation": "(x - mean) / (2 * std)",
      "soundfont_sha256": data_metadata.get("soundfont_sha256"),
  }


def _readme(about: Mapping[str, Any]) -> str:
  f, e, t = about["features"], about["encoder"], about["targets"]
  mask = ("always, for this model: it has fewer than AST's two extra tokens"
          if e["attention_mask_required"] else "for windows with padding")
  dtype_note = "" if e["trained_compute_dtype"] == "float32" else (
      f" The run computed in {e['trained_compute_dtype']}; this export computes in float32,"
      " so its scores differ from the run's by that rounding.")
  return f"""# Piano Perception Transformer, exported for PyTorch

Scores {len(t['dimensions'])} perceptual dimensions of a piano performance from audio.
Exported from `{about['source'].get('checkpoint')}`, step {about['source'].get('step')}.
Needs torch, safetensors and transformers >= 5 (not the project that trained it).

```python
import sys
sys.path.insert(0, EXPORT_DIR)
import piano_perception

model = piano_perception.load(EXPORT_DIR)
recording, per_window = piano_perception.score(model, logmel)  # label space
ratings = recording * {t['rating_scale']:g}  # the questionnaire's 1-7 scale
```

Files: `config.json` and `model.safetensors` hold the encoder
(`transformers.ASTModel.from_pretrained(EXPORT_DIR)`), `head.safetensors` holds
`piano_perception.PerceptionHead`, and `perception.json` holds the head's shape, the
target statistics and the feature settings below.

## Input

1. Audio at {f['sample_rate']} Hz, mono (channels averaged), float in [-1, 1]. A MIDI
   performance is rendered first; the training renders used the SoundFont with SHA-256
   `{f['soundfont_sha256']}`.
2. `logmel [frames, 128]` (natural-log Kaldi filterbank; the same values as
   `transformers.ASTFeatureExtractor`'s before it normalises):

       {f['log_mel']}

3. Windows of {f['window_frames']} frames ({f['window_s']:g} s), one every {f['hop_frames']} frames
   ({f['hop_s']:g} s). The last window is zero-padded in the log domain, and its number
   of real frames is kept as `valid_frames`.
4. Values rounded to float16 (how the training data was stored), then normalised
   `(x - mean) / (2 * std)` with the training windows' mean = {f['log_mel_mean']:.6f},
   std = {f['log_mel_std']:.6f}.
5. Layout: {f['layout']}.

`piano_perception.windows(logmel, model.about)` does steps 3 to 5.

## Model

`model(input_values, valid_frames)` runs the `ASTModel` with an attention mask
({mask}). The mask hides the key slots of absent extra tokens and patches made
only of padding, as in training. Calling the bare `ASTModel` without this mask
gives different numbers.{dtype_note} The model then keeps the {e['num_tokens']} used
token slot(s) and the {e['grid'][0]} x {e['grid'][1]} patches, and runs the head. The
head's outputs are normalised per dimension; `model` returns `output * std + mean` (perception.json,
"targets"), the label space (mean rating / 7).

## A recording's score

{about['aggregation'][0].upper() + about['aggregation'][1:]}: `piano_perception.score`.
"""


def _transcriber_readme(about: Mapping[str, Any]) -> str:
  f, e, h = about["features"], about["encoder"], about["head"]
  return f"""# Piano transcriber (Piano Perception Transformer), exported for PyTorch

Frame-level piano transcription from audio: the notes-aware pre-trained AST encoder and its
transcription head. Exported from `{about['source'].get('checkpoint')}`, step
{about['source'].get('step')}. Needs torch, safetensors and transformers >= 5.

```python
import sys
sys.path.insert(0, EXPORT_DIR)
import piano_perception

model = piano_perception.load(EXPORT_DIR)              # a PianoTranscription
x, valid = piano_perception.windows(logmel, model.about)
probabilities = model(x, valid)  # onset/offset/frame/velocity [n, {f['window_frames']}, 88], pedal [n, {f['window_frames']}]
```

Files: `config.json` and `model.safetensors` hold the encoder
(`transformers.ASTModel.from_pretrained(EXPORT_DIR)`), `head.safetensors` holds
`piano_perception.TranscriptionHead` ({h['hidden']} hidden units, frame features
{h['frame_features']}), `perception.json` the head's shape, the decoding thresholds
chosen on validation ({about['thresholds']}) and the feature settings. Weights are stored
as {about['weights_dtype']}; the model computes in float32.

## Input

Audio at {f['sample_rate']} Hz, mono, float in [-1, 1]; `logmel [frames, 128]`:

    {f['log_mel']}

Windows of {f['window_frames']} frames ({f['window_s']:g} s); transcription uses no overlap,
so one window every {f['window_frames']} frames (`windows()` uses the training hop,
{f['hop_frames']}). Values rounded to float16, then `(x - mean) / (2 * std)` with mean =
{f['log_mel_mean']:.6f}, std = {f['log_mel_std']:.6f}. The encoder runs with the attention mask
`PianoTranscription` builds (it has {e['num_tokens']} of ASTModel's 2 extra token slots).

## Output

{about['outputs']}. Decoding notes from them (peak picking with the thresholds above) is
`eval.transcribe` in the project that trained it.
"""


# --------------------------------------------------------------------------- writing


def write(directory: str | pathlib.Path, config: multitask.MultiTaskConfig,
          params: Mapping[str, Any], normalizer: targets.TargetNormalizer,
          data_metadata: Mapping[str, Any], *, source: Mapping[str, Any] | None = None,
          overwrite: bool = False, dtype: str = "float32") -> pathlib.Path:
  """Writes the export of a fine-tuning model (`params`: its whole tree) into `directory`.

  Refuses (ExportError) a run with no `ASTModel` equivalent, and an existing
  non-empty `directory` unless `overwrite` (and even then one that is not an
  export, so a wrong path cannot delete unrelated files). The files are written
  beside it first and moved into place, so a failure leaves no half export.
  """
  _check_target(directory, overwrite)
  check_exportable(config, data_metadata)
  about = describe(config, params["heads"], normalizer, data_metadata, source or {})
  return _write_files(directory, config.encoder, params["encoder"],
                      head_state_dict(params["heads"], config), about, _readme, dtype)


def write_transcriber(directory: str | pathlib.Path, encoder: ast.EncoderConfig,
                      params: Mapping[str, Any], hidden: int, frame_features: bool,
                      thresholds: Mapping[str, float] | None, data_metadata: Mapping[str, Any],
                      *, source: Mapping[str, Any] | None = None, overwrite: bool = False,
                      dtype: str = "float32") -> pathlib.Path:
  """Writes the export of a transcriber (`params`: `encoder` and `transcription`), as
  `write` does a fine-tuning model."""
  _check_target(directory, overwrite)
  _check_window(encoder, data_metadata)
  transcription.check_encoder(encoder)
  head = {"width": encoder.width, "grid": list(encoder.grid), "time_stride": encoder.time_stride,
          "num_mel_bins": encoder.num_mel_bins, "hidden": hidden,
          "frame_features": frame_features, "keys": transcription.KEYS,
          "outputs": [*transcription.ROLLS, "pedal"]}
  about = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "transcriber",
           "source": dict(source or {}), "encoder": _encoder_about(encoder), "head": head,
           "thresholds": dict(thresholds) if thresholds else None,
           "features": _features_about(data_metadata),
           "outputs": "sigmoid probabilities per 10 ms frame: onset, offset, frame (key down), "
                      "velocity (velocity / 127, meaningful at onsets) [batch, frames, 88], "
                      "pedal [batch, frames]"}
  return _write_files(directory, encoder, params["encoder"],
                      transcription_head_state_dict(params["transcription"]), about,
                      _transcriber_readme, dtype)


def transcription_head_state_dict(head_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our transcription head as `piano_perception.TranscriptionHead`'s state dict: Dense
  kernels `[in, out]` as Linear weights `[out, in]`, the 3-frame Conv kernel `[3, in, out]`
  as Conv1d's `[out, in, 3]`."""
  out = {}
  for path, value in params_lib.flatten(head_params).items():
    value = np.asarray(value, np.float32)
    if path == "place":
      out["place"] = value
      continue
    module, leaf = path.rsplit("/", 1)
    if leaf == "bias":
      out[f"{module}.bias"] = value
    elif module == "frames":
      out["frames.weight"] = value.transpose(2, 1, 0)
    else:
      out[f"{module}.weight"] = value.T
  return {k: np.ascontiguousarray(v) for k, v in sorted(out.items())}


def _check_target(directory: str | pathlib.Path, overwrite: bool) -> None:
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
    if not overwrite:
      raise ExportError(f"{directory} exists; pass --overwrite to replace it")
    if not (directory / ABOUT).is_file():
      raise ExportError(f"{directory} exists and is not an export (no {ABOUT}); refusing to "
                        "replace it")


def _write_files(directory: str | pathlib.Path, encoder: ast.EncoderConfig,
                 encoder_params: Mapping[str, Any], head_state: dict[str, np.ndarray],
                 about: dict, readme: Callable[[Mapping[str, Any]], str], dtype: str
                 ) -> pathlib.Path:
  if dtype not in ("float32", "float16"):
    raise ExportError(f"--dtype must be float32 or float16, got {dtype!r}")
  directory = pathlib.Path(directory).absolute()
  state = encoder_state_dict(encoder_params, encoder)
  _check_round_trip(state, encoder_params, encoder)
  about = dict(about, weights_dtype=dtype)
  cast = lambda tree: {k: v.astype(dtype) for k, v in tree.items()}
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
  try:
    # transformers reads "format" from the safetensors header ("pt": torch tensors).
    safetensors.numpy.save_file(cast(state), str(staging / ENCODER_WEIGHTS),
                                metadata={"format": "pt"})
    safetensors.numpy.save_file(cast(head_state), str(staging / HEAD_WEIGHTS),
                                metadata={"format": "pt"})
    (staging / ENCODER_CONFIG).write_text(json.dumps(ast_config(encoder), indent=2) + "\n")
    (staging / ABOUT).write_text(json.dumps(about, indent=1) + "\n")
    (staging / "README.md").write_text(readme(about))
    shutil.copyfile(TORCH_MODULE, staging / TORCH_MODULE.name)
    for path in staging.iterdir():
      path.chmod(0o644)  # safetensors and mkdtemp are owner-only; an export is for everyone
    staging.chmod(0o755)
    if directory.exists():
      shutil.rmtree(directory)
    staging.rename(directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


# --------------------------------------------------------------------------- command line


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Fine-tuning work directory (or a checkpoint step "
                      "directory inside it).", required=True)
  flags.DEFINE_string("output_dir", None, "The export directory.", required=True)
  flags.DEFINE_string("step", "best", '"best" (by the run\'s validation metric), "latest" or '
                      "a step number.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing export in --output_dir.")
  flags.DEFINE_enum("kind", "perception", ["perception", "transcriber"], "perception: a "
                    "fine-tuning run; transcriber: a notes-aware pre-training run or a "
                    "transcriber release (its encoder and transcription head).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "How the weights are stored.")


def main(argv: list[str]) -> None:
  from absl import app, flags, logging

  from eval import loading, recording
  from pipelines import provenance

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  step = recording.parse_step(f.step)
  try:
    if f.kind == "transcriber":
      run = loading.load_transcriber(f.checkpoint, step=step)
      m = run.config.model
      # As given: a release exported from a clone names it by its place in the repository.
      source = {"checkpoint": f.checkpoint, "step": run.step,
                "exported_by": "python -m eval.export_transformers --kind=transcriber",
                "git_revision": provenance.git_revision()}
      directory = write_transcriber(
          f.output_dir, ast.EncoderConfig(**m.encoder.to_dict()), run.params,
          m.transcription_hidden, bool(m.get("transcription_frame_features", False)),
          run.thresholds, run.data_metadata, source=source, overwrite=f.overwrite,
          dtype=f.dtype)
    else:
      from model import release
      if release.is_release(f.checkpoint):
        raise ExportError(f"{f.checkpoint} is a release, not a fine-tuning run; a transcriber "
                          "release exports with --kind=transcriber")
      run = loading.load(f.checkpoint, step=step)
      source = {"checkpoint": str(run.workdir), "step": run.step,
                "exported_by": "python -m eval.export_transformers",
                "git_revision": provenance.git_revision(),
                "model_config": dataclasses.asdict(run.model_config)}
      directory = write(f.output_dir, run.model_config, run.params, run.normalizer,
                        run.data_metadata, source=source, overwrite=f.overwrite, dtype=f.dtype)
  except (ValueError, FileNotFoundError) as e:  # RunError, ConversionError are ValueErrors
    sys.exit("error: " + str(e).replace("\n", " "))
  print(f"wrote {directory} (step {run.step}): load it with "
        f"piano_perception.load({str(directory)!r}); see {directory / 'README.md'}")


def cli() -> None:
  from pipelines import entry_point
  entry_point.run(__doc__, _define_flags, main)


if __name__ == "__main__":
  cli()
