"""model.convert against `transformers.ASTModel` as the oracle.

The oracle is a randomly initialised ASTModel built from an ASTConfig (never
downloaded), with every parameter redrawn: transformers initialises the [CLS],
distillation and position embeddings and all biases to zero and LayerNorms to
identity, which would hide a wrong mapping of exactly those. Linear weights are
drawn at 1/sqrt(fan_in) so that attention logits are O(1) and the attention
pattern (hence the q/k/v and head layout) matters to the output.

The other layouts (transformers 4.x names, the original AST's fused `qkv`,
SSAST) are built here from the oracle's weights with rename tables written
independently of model/convert/rules.py's, and must give the same parameters.
"""

from __future__ import annotations

import builtins
import json
import pathlib
import pickle
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.torch
import torch
from transformers import ASTConfig, ASTModel

from model import ast
from model.convert import conversion, errors, loading, merging

REPO = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4  # max abs, float32 (measured ~5e-6 at 2 layers)

SMALL = dict(width=192, depth=2, heads=3, mlp_dim=768)


def _hf_model(*, width, depth, heads, mlp_dim, stride=10, seed=0, attn="eager") -> ASTModel:
  torch.manual_seed(seed)
  config = ASTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                     intermediate_size=mlp_dim, frequency_stride=stride, time_stride=stride,
                     num_mel_bins=128, max_length=1024, layer_norm_eps=1e-6,
                     attn_implementation=attn)
  model = ASTModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "token" in name or "position" in name:
        p.normal_(0.0, 0.5)
      elif "layernorm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif p.ndim == 4:  # the patch convolution: fan-in 256
        p.normal_(0.0, 1 / 16)
      else:
        p.normal_(0.0, p.shape[1] ** -0.5)
  return model


def _hf_outputs(model: ASTModel, features_hf: torch.Tensor):
  with torch.no_grad():
    out = model(features_hf)
  return out.pooler_output.numpy(), out.last_hidden_state.numpy()


def _ours(params, config: ast.EncoderConfig, features_hf: torch.Tensor):
  # transformers takes [B, frames, mel]; our shards are [B, mel, frames].
  features = jnp.asarray(features_hf.numpy().transpose(0, 2, 1))
  out = ast.Encoder(config).apply({"params": params}, features)
  return np.asarray(out["pooled"]), np.asarray(out["tokens"])


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _assert_trees_equal(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert [p for p, _ in flat_a] == list(flat_b), "different tree structure"
  for path, value in flat_a:
    np.testing.assert_array_equal(value, flat_b[path], err_msg=jax.tree_util.keystr(path))


class _Oracle:
  def __init__(self):
    self.model = _hf_model(**SMALL)
    self.state = {k: v.clone() for k, v in self.model.state_dict().items()}
    self.features = torch.randn(2, 1024, 128, generator=torch.Generator().manual_seed(1))
    self.pooled, self.tokens = _hf_outputs(self.model, self.features)
    self.config = ast.EncoderConfig(**SMALL, layer_norm_eps=1e-6)
    self.params, self.report = conversion.convert(self.state, self.config)


@pytest.fixture(scope="module")
def oracle() -> _Oracle:
  return _Oracle()


# ------------------------------------------------------------------ transformers equivalence


@pytest.mark.parametrize("attention", ["plain", "blocked", "fused"])
def test_matches_transformers(oracle, attention):
  assert float(oracle.state["embeddings.cls_token"].abs().min()) > 0  # really randomised
  config = oracle.config.replace(attention=attention)
  pooled, tokens = _ours(oracle.params, config, oracle.features)
  print(f"{attention}: pooled {_max_err(pooled, oracle.pooled):.2e}, "
        f"tokens {_max_err(tokens, oracle.tokens):.2e}")
  assert _max_err(pooled, oracle.pooled) < TOLERANCE
  assert _max_err(tokens, oracle.tokens) < TOLERANCE


def test_report_and_tree(oracle):
  r = oracle.report
  assert (r.source, r.naming) == ("transformers", "transformers 5.x")
  assert r.loaded == sorted(oracle.state) and r.unused == [] and r.missing == {}
  assert r.num_tokens == 2 and r.pos_embed_grid == (12, 101) and not r.resize_needed
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), oracle.params)
  f32 = np.dtype(np.float32)
  assert shapes["patch_embed"]["kernel"] == ((256, 192), f32)
  assert shapes["pos_embed"] == ((12, 101, 192), f32)
  assert shapes["tokens"] == ((2, 192), f32)
  assert shapes["blocks"]["attn"]["qkv"]["kernel"] == ((2, 192, 3, 3, 64), f32)
  assert shapes["blocks"]["attn"]["out"]["kernel"] == ((2, 3, 64, 192), f32)
  assert shapes["blocks"]["mlp"]["fc1"]["kernel"] == ((2, 192, 768), f32)
  # The [CLS] token's position row is the table's first, the grid starts after both tokens.
  pos = oracle.state["embeddings.position_embeddings"].numpy()[0]
  np.testing.assert_array_equal(oracle.params["token_pos_embed"], pos[:2])
  np.testing.assert_array_equal(oracle.params["pos_embed"][0, 1], pos[3])
  np.testing.assert_array_equal(oracle.params["pos_embed"][1, 0], pos[2 + 101])


def test_safetensors_file(oracle, tmp_path):
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file(oracle.model.state_dict(), str(path))
  params, report = conversion.convert(loading.load_state_dict(path), oracle.config)
  _assert_trees_equal(params, oracle.params)
  pooled, tokens = _ours(params, oracle.config, oracle.features)
  assert _max_err(pooled, oracle.pooled) < TOLERANCE
  assert _max_err(tokens, oracle.tokens) < TOLERANCE


@pytest.mark.parametrize("wrap,suffix", [
    ("plain", ".bin"), ("state_dict", ".pt"), ("model", ".pth"), ("dataparallel", ".pt"),
    ("classification", ".bin"),
])
def test_torch_save(oracle, tmp_path, wrap, suffix):
  state = dict(oracle.state)
  unused = []
  if wrap == "state_dict":
    obj = {"state_dict": state, "epoch": 3}
  elif wrap == "model":
    obj = {"model": state, "optimizer": {"lr": torch.tensor(0.1)}}
  elif wrap == "dataparallel":
    obj = {f"module.{k}": v for k, v in state.items()}
  elif wrap == "classification":  # ASTForAudioClassification
    obj = {f"audio_spectrogram_transformer.{k}": v for k, v in state.items()}
    obj["classifier.layernorm.weight"] = torch.ones(192)
    obj["classifier.dense.weight"] = torch.zeros(527, 192)
    unused = ["classifier.dense.weight", "classifier.layernorm.weight"]
  else:
    obj = state
  path = tmp_path / f"weights{suffix}"
  torch.save(obj, path)
  params, report = conversion.convert(loading.load_state_dict(path), oracle.config)
  _assert_trees_equal(params, oracle.params)
  assert report.unused == unused and report.missing == {}


def test_bfloat16_safetensors(oracle, tmp_path):
  path = tmp_path / "bf16.safetensors"
  safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in oracle.state.items()},
                              str(path))
  state = loading.load_state_dict(path)
  assert state["layernorm.weight"].dtype == np.float32
  params, _ = conversion.convert(state, oracle.config)
  expected = oracle.state["layers.0.mlp.fc1.weight"].to(torch.bfloat16).float().numpy().T
  np.testing.assert_array_equal(params["blocks"]["mlp"]["fc1"]["kernel"][0], expected)


# ------------------------------------------------------------------ other layouts

# transformers 5.x -> 4.x names (the hub checkpoints'), by hand: pattern, replacement.
_TO_4X = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.layernorm_(before|after)\.", r"encoder.layer.\1.layernorm_\2."),
]


def _rename_to_4x(state):

  out = {}
  for key, value in state.items():
    new = key
    for pattern, replacement in _TO_4X:
      new = re.sub(pattern, replacement, new)
    assert not new.startswith("layers."), f"no 4.x name for {key}"
    out[new] = value
  return out


def test_transformers_4x_names(oracle):
  state = _rename_to_4x(oracle.state)
  assert "encoder.layer.1.attention.attention.value.bias" in state
  hub = {f"audio_spectrogram_transformer.{k}": v for k, v in state.items()}
  hub["classifier.dense.bias"] = torch.zeros(527)
  params, report = conversion.convert(hub, oracle.config)
  assert report.naming == "transformers 4.x"
  assert report.unused == ["classifier.dense.bias"] and report.missing == {}
  _assert_trees_equal(params, oracle.params)


def _to_original_ast(state, depth, *, tokens=2):
  """The original AST / SSAST (timm DeiT) layout under DataParallel's `module.`."""
  hf = {k: v.clone() for k, v in state.items()}
  pos = hf["embeddings.position_embeddings"]
  out = {
      "module.v.patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
      "module.v.patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
      "module.v.cls_token": hf["embeddings.cls_token"],
      "module.v.norm.weight": hf["layernorm.weight"],
      "module.v.norm.bias": hf["layernorm.bias"],
  }
  if tokens == 2:
    out["module.v.dist_token"] = hf["embeddings.distillation_token"]
    out["module.v.pos_embed"] = pos
  else:  # drop the distillation token's position row
    out["module.v.pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
  for i in range(depth):
    s, t = f"layers.{i}.", f"module.v.blocks.{i}."
    for kind in ("weight", "bias"):
      out[t + f"attn.qkv.{kind}"] = torch.cat(
          [hf[s + f"attention.{n}_proj.{kind}"] for n in "qkv"], dim=0)
      out[t + f"attn.proj.{kind}"] = hf[s + f"attention.o_proj.{kind}"]
      out[t + f"norm1.{kind}"] = hf[s + f"layernorm_before.{kind}"]
      out[t + f"norm2.{kind}"] = hf[s + f"layernorm_after.{kind}"]
      out[t + f"mlp.fc1.{kind}"] = hf[s + f"mlp.fc1.{kind}"]
      out[t + f"mlp.fc2.{kind}"] = hf[s + f"mlp.fc2.{kind}"]
  return out


def test_original_ast_layout(oracle):
  state = _to_original_ast(oracle.state, SMALL["depth"])
  state["module.mlp_head.0.weight"] = torch.ones(192)
  state["module.mlp_head.1.weight"] = torch.zeros(527, 192)
  assert conversion.detect_source(state) == "ast"
  params, report = conversion.convert(state, oracle.config)
  assert (report.source, report.missing) == ("ast", {})
  assert report.unused == ["module.mlp_head.0.weight", "module.mlp_head.1.weight"]
  _assert_trees_equal(params, oracle.params)
  _assert_trees_equal(conversion.from_ast(state, oracle.config)[0], oracle.params)


def test_ssast_layout_one_token_and_heads(oracle):
  state = _to_original_ast(oracle.state, SMALL["depth"], tokens=1)
  g = torch.Generator().manual_seed(2)
  heads = {f"module.{h}.{j}.{kind}": torch.randn(*shape, generator=g)
           for h in ("cpredlayer", "gpredlayer")
           for j, kind, shape in ((0, "weight", (192, 192)), (0, "bias", (192,)),
                                  (2, "weight", (256, 192)), (2, "bias", (256,)))}
  state.update(heads, **{"module.mask_embed": torch.randn(1, 1, 192, generator=g)})
  assert conversion.detect_source(state) == "ssast"
  config = oracle.config.replace(num_tokens=1, pooling="patches")
  params, report = conversion.convert(state, config)
  assert (report.source, report.num_tokens, report.missing, report.unused) == ("ssast", 1, {}, [])
  assert sorted(params) == ["discriminative", "encoder", "generative"]
  encoder = dict(params["encoder"])
  np.testing.assert_array_equal(encoder.pop("mask_embed"), state["module.mask_embed"][0, 0])
  expected = dict(oracle.params)
  expected["tokens"] = expected["tokens"][:1]
  expected["token_pos_embed"] = expected["token_pos_embed"][:1]
  _assert_trees_equal(encoder, expected)
  for ours, theirs in (("discriminative", "cpredlayer"), ("generative", "gpredlayer")):
    head = params[ours]
    np.testing.assert_array_equal(head["fc1"]["kernel"], heads[f"module.{theirs}.0.weight"].T)
    np.testing.assert_array_equal(head["fc1"]["bias"], heads[f"module.{theirs}.0.bias"])
    np.testing.assert_array_equal(head["fc2"]["kernel"], heads[f"module.{theirs}.2.weight"].T)
    np.testing.assert_array_equal(head["fc2"]["bias"], heads[f"module.{theirs}.2.bias"])
    assert head["fc2"]["kernel"].shape == (192, 256)


def _ssast_state(width=32, depth=1, mlp=64, grid=(8, 64), tokens=2, p_input=None):
  """A random SSAST pre-training state dict (patch 16, stride 16) in numpy."""
  rng = np.random.default_rng(0)
  r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
  state = {"module.v.patch_embed.proj.weight": r(width, 1, 16, 16),
           "module.v.patch_embed.proj.bias": r(width),
           "module.v.cls_token": r(1, 1, width),
           "module.v.pos_embed": r(1, tokens + grid[0] * grid[1], width),
           "module.v.norm.weight": r(width), "module.v.norm.bias": r(width),
           "module.mask_embed": r(1, 1, width)}
  if tokens == 2:
    state["module.v.dist_token"] = r(1, 1, width)
  for i in range(depth):
    b = f"module.v.blocks.{i}."
    state.update({b + "norm1.weight": r(width), b + "norm1.bias": r(width),
                  b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                  b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                  b + "norm2.weight": r(width), b + "norm2.bias": r(width),
                  b + "mlp.fc1.weight": r(mlp, width), b + "mlp.fc1.bias": r(mlp),
                  b + "mlp.fc2.weight": r(width, mlp), b + "mlp.fc2.bias": r(width)})
  for h in ("cpredlayer", "gpredlayer"):
    state.update({f"module.{h}.0.weight": r(width, width), f"module.{h}.0.bias": r(width),
                  f"module.{h}.2.weight": r(256, width), f"module.{h}.2.bias": r(256)})
  if p_input is not None:
    state["module.p_input_fdim"] = np.array(p_input[0])
    state["module.p_input_tdim"] = np.array(p_input[1])
  return state


_SSAST_CONFIG = ast.EncoderConfig(width=32, depth=1, heads=2, mlp_dim=64, freq_stride=16,
                                  time_stride=16, pooling="patches")


@pytest.mark.parametrize("tokens", [1, 2])
def test_ssast_token_count(tokens):
  state = _ssast_state(tokens=tokens)
  params, report = conversion.from_ssast(state, _SSAST_CONFIG.replace(num_tokens=tokens))
  assert report.num_tokens == tokens and report.pos_embed_grid == (8, 64)
  enc = params["encoder"]
  assert enc["tokens"].shape == (tokens, 32) and enc["pos_embed"].shape == (8, 64, 32)
  pos = state["module.v.pos_embed"][0]
  np.testing.assert_array_equal(enc["token_pos_embed"], pos[:tokens])
  np.testing.assert_array_equal(enc["pos_embed"].reshape(-1, 32), pos[tokens:])
  # The fused projection splits on the output axis as (q|k|v, head, head_dim).
  qkv = state["module.v.blocks.0.attn.qkv.weight"]
  np.testing.assert_array_equal(enc["blocks"]["attn"]["qkv"]["kernel"][0, :, 1, 1],
                                qkv[32 + 16:32 + 32].T)
  # A config expecting the other token count is refused, naming the fix.
  with pytest.raises(errors.ConfigMismatchError, match=f"num_tokens={tokens}"):
    conversion.from_ssast(state, _SSAST_CONFIG.replace(num_tokens=3 - tokens))


def test_ssast_token_conflict():
  state = _ssast_state(tokens=2)
  state["module.v.pos_embed"] = state["module.v.pos_embed"][:, 1:]  # 1 + 512 rows
  with pytest.raises(errors.ConfigMismatchError, match="leaves 1 token row"):
    conversion.from_ssast(state, _SSAST_CONFIG)


def test_ssast_pretraining_grid_differs_from_config():
  # Pre-trained at 16x16 stride on 128x1024, to be fine-tuned at stride 10.
  state = _ssast_state(tokens=2, p_input=(128, 1024))
  config = _SSAST_CONFIG.replace(freq_stride=10, time_stride=10)
  params, report = conversion.from_ssast(state, config)
  assert report.pos_embed_grid == (8, 64) and report.config_grid == (12, 101)
  assert report.resize_needed and any("p_input_fdim" in n for n in report.notes)
  assert params["encoder"]["pos_embed"].shape == (8, 64, 32)
  assert sorted(report.unused) == ["module.p_input_fdim", "module.p_input_tdim"]


def test_shorter_clip_grid_keeps_frequency_rows():
  state = _ssast_state(tokens=2, grid=(8, 32))  # pre-trained on 512 frames, no size record
  params, report = conversion.from_ssast(state, _SSAST_CONFIG)
  assert report.pos_embed_grid == (8, 32) and report.resize_needed
  np.testing.assert_array_equal(params["encoder"]["pos_embed"][1, 0],
                                state["module.v.pos_embed"][0, 2 + 32])
  with pytest.raises(errors.ConfigMismatchError, match="pos_grid"):
    conversion.from_ssast(_ssast_state(tokens=2, grid=(7, 33)), _SSAST_CONFIG)
  params, report = conversion.from_ssast(_ssast_state(tokens=2, grid=(7, 33)), _SSAST_CONFIG,
                                      pos_grid=(7, 33))
  assert params["encoder"]["pos_embed"].shape == (7, 33, 32)


# ------------------------------------------------------------------ errors


def test_wrong_shape_names_the_key(oracle):
  state = dict(oracle.state)
  state["layers.1.mlp.fc1.weight"] = torch.zeros(767, 192)
  with pytest.raises(errors.ShapeMismatchError) as e:
    conversion.convert(state, oracle.config)
  message = str(e.value)
  assert "layers.1.mlp.fc1.weight" in message and "(767, 192)" in message
  assert "(768, 192)" in message and "mlp_dim" in message
  with pytest.raises(errors.ShapeMismatchError, match="projection.weight.*width"):
    conversion.convert(oracle.state, oracle.config.replace(width=96))


def test_config_mismatch(oracle):
  with pytest.raises(errors.ConfigMismatchError, match="2 layers.*depth is 3"):
    conversion.convert(oracle.state, oracle.config.replace(depth=3))
  with pytest.raises(errors.UnknownFormatError, match="source='ast'"):
    conversion.convert(oracle.state, oracle.config, source="ast")
  with pytest.raises(errors.UnknownFormatError, match="layout we know"):
    conversion.convert({"backbone.weight": np.zeros(3, np.float32)}, oracle.config)


def test_missing_keys_are_reported(oracle):
  state = dict(oracle.state)
  del state["layers.1.attention.k_proj.bias"], state["layernorm.weight"]
  params, report = conversion.convert(state, oracle.config)
  assert report.missing == {"blocks/attn/qkv/bias": ["layers.1.attention.k_proj.bias"],
                            "norm/scale": ["layernorm.weight"]}
  assert "bias" not in params["blocks"]["attn"]["qkv"] and "scale" not in params["norm"]
  assert "kernel" in params["blocks"]["attn"]["qkv"]
  with pytest.raises(errors.MissingWeightsError, match="layernorm.weight"):
    conversion.convert(state, oracle.config, strict=True)


class _Payload:
  """Unpickling this runs code: it writes `marker`."""

  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(tmp_path, writer):
  marker = tmp_path / "code-ran"
  path = tmp_path / "evil.pt"
  if writer == "pickle":
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}))
  else:
    torch.save({"w": _Payload(marker)}, path)
  with pytest.raises(errors.UnsafeCheckpointError, match="refuse to unpickle"):
    loading.load_state_dict(path)
  assert not marker.exists()
  # The payload is live: an unrestricted unpickler does run it.
  if writer == "pickle":
    pickle.loads(path.read_bytes())
  else:
    torch.load(path, weights_only=False)
  assert marker.read_text() == "ran"


def test_file_errors(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match="no such"):
    loading.load_state_dict(tmp_path / "absent.safetensors")
  assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
  (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
  with pytest.raises(errors.UnknownFormatError, match="'.h5'"):
    loading.load_state_dict(tmp_path / "weights.h5")
  torch.save({"w": torch.zeros(100)}, tmp_path / "whole.pt")
  (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:300])
  with pytest.raises(errors.CorruptCheckpointError, match="not a readable PyTorch"):
    loading.load_state_dict(tmp_path / "truncated.pt")
  (tmp_path / "junk.safetensors").write_bytes(b"garbage")
  with pytest.raises(errors.CorruptCheckpointError):
    loading.load_state_dict(tmp_path / "junk.safetensors")
  torch.save({"epoch": 3, "w": torch.zeros(2)}, tmp_path / "mixed.pt")
  with pytest.raises(errors.UnknownFormatError, match="epoch"):
    loading.load_state_dict(tmp_path / "mixed.pt")
  for error in (errors.CheckpointNotFoundError, errors.UnsafeCheckpointError,
                errors.ShapeMismatchError, errors.StructureMismatchError):
    assert issubclass(error, errors.ConversionError) and issubclass(error, ValueError)


# ------------------------------------------------------------------ merging into an init


def test_merge_into_keeps_boxes():
  config = _SSAST_CONFIG.replace(pooling="tokens")
  converted, _ = conversion.from_ast(_ssast_state(tokens=2), config)  # SSAST heads unused
  model = ast.Encoder(config)
  features = jax.random.normal(jax.random.key(1), (1, 128, 1024))
  # The boxed tree `init` returns, without paying for its compilation (~8 s here):
  # the shapes from eval_shape, filled with arrays inside the same boxes.
  abstract = jax.eval_shape(model.init, jax.random.key(0), features)["params"]
  initialised = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
  assert isinstance(initialised["pos_embed"], nn.LogicallyPartitioned)
  merged = merging.merge_into(initialised, converted)
  box = merged["blocks"]["attn"]["qkv"]["kernel"]
  assert isinstance(box, nn.LogicallyPartitioned)
  assert box.names == ("layers", "embed", None, "heads", "kv")
  assert isinstance(box.value, jax.Array)
  _assert_trees_equal(nn.meta.unbox(merged), converted)
  # The shape-only tree itself works too.
  _assert_trees_equal(nn.meta.unbox(merging.merge_into(abstract, converted)), converted)

  wrong = jax.tree.map(lambda a: a, converted)
  wrong["pos_embed"] = wrong["pos_embed"][:, :50]
  wrong["extra"] = np.zeros(3, np.float32)
  del wrong["norm"]["bias"]
  with pytest.raises(errors.StructureMismatchError) as e:
    merging.merge_into(initialised, wrong)
  for fragment in ("/pos_embed: converted shape (8, 50, 32), initialised (8, 64, 32)",
                   "/extra: converted but absent", "/norm/bias: initialised but not converted"):
    assert fragment in str(e.value)
  partial = merging.merge_into(initialised, {"norm": {"scale": converted["norm"]["scale"]}},
                               strict=False)
  assert partial["pos_embed"] is initialised["pos_embed"]


def test_ssast_checkpoint_fits_our_models():
  """Pre-trained SSAST -> our SSAST tree as is, and -> a stride-10 encoder after resizing."""
  from model import posemb, ssast
  converted, report = conversion.from_ssast(_ssast_state(tokens=1, p_input=(128, 1024)),
                                            _SSAST_CONFIG.replace(num_tokens=1))
  model = ssast.SSAST(ssast.SSASTConfig(encoder=_SSAST_CONFIG.replace(num_tokens=1)))
  features = jnp.zeros((1, 128, 1024))
  rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
  abstract = jax.eval_shape(model.init, rngs, features)["params"]
  merging.merge_into(abstract, converted)  # strict: every parameter, every shape

  fine_tune = _SSAST_CONFIG.replace(num_tokens=1, freq_stride=10, time_stride=10)
  encoder, report = conversion.from_ssast(_ssast_state(tokens=1, p_input=(128, 1024)), fine_tune)
  encoder = dict(encoder["encoder"])
  assert report.resize_needed and encoder["pos_embed"].shape[:2] == (8, 64)
  encoder["pos_embed"] = np.asarray(posemb.resize_grid(encoder["pos_embed"], fine_tune.grid))
  del encoder["mask_embed"]  # the fine-tuning encoder never masks
  abstract = jax.eval_shape(ast.Encoder(fine_tune).init, jax.random.key(0), features)["params"]
  merging.merge_into(abstract, encoder)


# ------------------------------------------------------------------ command line


def test_cli_end_to_end(tmp_path):
  model = _hf_model(width=32, depth=1, heads=2, mlp_dim=64, stride=16, seed=3)
  source = tmp_path / "tiny.safetensors"
  safetensors.torch.save_file(model.state_dict(), str(source))
  out = tmp_path / "converted"
  command = [sys.executable, "-m", "model.convert", f"--input={source}", f"--output={out}",
             "--heads=2"]
  run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  summary = json.loads((out / "convert.json").read_text())
  config = ast.EncoderConfig(**summary["config"])
  assert (config.width, config.depth, config.heads, config.mlp_dim) == (32, 1, 2, 64)
  assert (config.freq_stride, config.time_stride, config.num_tokens) == (16, 16, 2)
  assert config.layer_norm_eps == 1e-12  # transformers' default: not stored in the weights
  assert summary["report"]["naming"] == "transformers 5.x"
  assert summary["report"]["missing"] == {} and summary["report"]["pos_embed_grid"] == [8, 64]
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(out / "params")
  expected, _ = conversion.convert(model.state_dict(), config)
  _assert_trees_equal(restored, expected)

  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode != 0 and "--overwrite" in again.stderr


# ------------------------------------------------------------------ full size


@pytest.mark.slow
def test_base_size_matches_transformers():
  model = _hf_model(width=768, depth=12, heads=12, mlp_dim=3072)
  features = torch.randn(1, 1024, 128, generator=torch.Generator().manual_seed(1))
  pooled_hf, tokens_hf = _hf_outputs(model, features)
  config = ast.variant("base")
  params, report = conversion.convert(model.state_dict(), config)
  assert report.missing == {} and report.unused == []
  pooled, tokens = _ours(params, config, features)
  print(f"base: pooled {_max_err(pooled, pooled_hf):.2e}, tokens {_max_err(tokens, tokens_hf):.2e}")
  assert _max_err(pooled, pooled_hf) < TOLERANCE
  assert _max_err(tokens, tokens_hf) < TOLERANCE
