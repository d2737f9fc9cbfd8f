"""train.warm_start: which encoder parameters load, resize or start fresh, and bad sources."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import transformers
from flax import traverse_util

from model import ast, multitask, posemb, ssast
from train import sharding, warm_start


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
SMALL = dict(width=32, depth=1, heads=2, mlp_dim=64, num_frames=256)
FEATURES = jnp.zeros((1, 128, 256))


def _init(model, seed=0, **rngs):
  """Random values in the model's parameter shapes (apply() only sees shapes and values)."""
  keys = {"params": jax.random.key(0), **{k: jax.random.key(i + 1) for i, k in enumerate(rngs)}}
  shapes = sharding.strip_boxes(jax.eval_shape(lambda: model.init(keys, FEATURES))["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), shapes)


def _finetune_params(**encoder):
  config = multitask.MultiTaskConfig(encoder=ast.variant("tiny", **{**SMALL, **encoder}))
  return _init(multitask.MultiTaskModel(config))


def _pretrained():
  config = ssast.SSASTConfig(encoder=ast.variant("tiny", **SMALL, freq_stride=16, time_stride=16,
                                                 num_tokens=1, pooling="patches"), num_masked=8)
  params = _init(ssast.SSAST(config), seed=1, masking=True)
  return {k: np.asarray(v) for k, v in _flat(params["encoder"]).items()}


def test_ssast_encoder_loads_resizes_the_grid_and_leaves_heads_fresh():
  source = _pretrained()
  initial = _finetune_params(num_tokens=1, pooling="patches")
  params, report = warm_start.apply(initial, source, "ssast-run", step=40)
  assert report.resized == {"encoder/pos_embed": "8x16 -> 12x25"}
  assert report.unused == ["mask_embed"]
  assert set(report.loaded) == {f"encoder/{k}" for k in source} - {
      "encoder/pos_embed", "encoder/mask_embed"}
  assert report.initialised and all(p.startswith(("heads/", "loss_log")) for p in
                                    report.initialised)
  flat = _flat(params)
  for path in report.loaded:
    np.testing.assert_array_equal(flat[path], source[path.removeprefix("encoder/")])
  np.testing.assert_allclose(flat["encoder/pos_embed"],
                             posemb.resize_grid(source["pos_embed"], (12, 25)), rtol=1e-6)
  before = _flat(initial)
  for path in report.initialised:
    np.testing.assert_array_equal(flat[path], before[path])
  assert "1 resized" in report.summary() and "(step 40)" in report.summary()


def test_two_token_checkpoint_into_a_one_token_model_keeps_cls():
  source = {k: v for k, v in _flat(
      jax.tree.map(np.asarray, _finetune_params(num_tokens=2)["encoder"])).items()}
  params, report = warm_start.apply(_finetune_params(num_tokens=1, pooling="patches"), source,
                                    "ast")
  assert report.resized == {"encoder/tokens": "2 -> 1 token(s), kept the first",
                            "encoder/token_pos_embed": "2 -> 1 token(s), kept the first"}
  np.testing.assert_array_equal(params["encoder"]["tokens"], source["tokens"][:1])


def test_a_different_width_is_an_error_not_a_fresh_start():
  source = _pretrained()
  with pytest.raises(warm_start.WarmStartError, match="patch_embed/kernel: source"):
    warm_start.apply(_finetune_params(width=64, heads=2, num_tokens=1, pooling="patches"),
                     source, "ssast-run")


def test_converted_transformers_weights_load_completely(tmp_path):
  hf = transformers.ASTModel(transformers.ASTConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
      frequency_stride=10, time_stride=10, num_mel_bins=128, max_length=256))
  source = tmp_path / "ast.safetensors"
  safetensors.torch.save_file(hf.state_dict(), str(source))
  out = tmp_path / "converted"
  run = subprocess.run([sys.executable, "-m", "model.convert", f"--input={source}",
                        f"--output={out}", "--heads=2", "--num_frames=256"], cwd=REPO,
                       capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  loaded, name, step = warm_start.load_source({"checkpoint": "", "converted": str(out)})
  assert step is None and name == str(out)
  config = json.loads((out / "convert.json").read_text())["config"]
  initial = _finetune_params(**{k: config[k] for k in ("layer_norm_eps",)})
  params, report = warm_start.apply(initial, loaded, name)
  assert not report.resized and not report.unused
  assert {p for p in report.initialised if p.startswith("encoder/")} == set()
  np.testing.assert_array_equal(params["encoder"]["patch_embed"]["bias"],
                                hf.state_dict()["embeddings.patch_embeddings.projection.bias"])


def test_bad_sources_are_clear_errors(tmp_path):
  with pytest.raises(warm_start.WarmStartError, match="only one"):
    warm_start.load_source({"checkpoint": "a", "converted": "b"})
  with pytest.raises(FileNotFoundError, match="model.convert"):
    warm_start.load_source({"checkpoint": "", "converted": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="does not exist"):
    warm_start.load_source({"checkpoint": str(tmp_path / "absent"), "converted": ""})
  with pytest.raises(warm_start.WarmStartError, match="no AST encoder"):
    warm_start.apply({"cnn": {"kernel": jnp.ones(2)}}, {}, "x")


def test_a_release_warm_starts_fine_tuning_and_continues_pre_training(tmp_path):
  """model.release round trip (float16 on disk, checksum verified), then both uses: the
  fine-tuning encoder from it, and pre-training continued with every shared parameter."""
  from model import release
  config = ssast.SSASTConfig(encoder=ast.variant("tiny", **SMALL, freq_stride=16, time_stride=16,
                                                 num_tokens=1, pooling="patches"), num_masked=8)
  params = _init(ssast.SSAST(config), seed=1, masking=True)
  directory = release.write(tmp_path / "rel", params, {"kind": "test", "step": 12})
  loaded, about = release.read(directory)
  assert about["step"] == 12 and about["weights"]["dtype"] == "float16"
  for path, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(loaded)[path], np.asarray(value, np.float16))

  source, name, step = warm_start.load_source({"checkpoint": str(directory), "converted": ""})
  assert step == 12 and name == str(directory.absolute())
  _, report = warm_start.apply(_finetune_params(num_tokens=1, pooling="patches"), source, name)
  assert report.loaded and report.unused == ["mask_embed"]

  fresh = _init(ssast.SSAST(config), seed=5, masking=True)
  continued, report = warm_start.continue_from(fresh, str(directory))
  assert sorted(report.loaded) == sorted(_flat(fresh)) and not report.initialised
  np.testing.assert_array_equal(_flat(continued)["encoder/patch_embed/kernel"],
                                _flat(loaded)["encoder/patch_embed/kernel"])
  wider = ssast.SSASTConfig(encoder=ast.variant("tiny", **{**SMALL, "mlp_dim": 96},
                                                freq_stride=16, time_stride=16, num_tokens=1,
                                                pooling="patches"), num_masked=8)
  with pytest.raises(warm_start.WarmStartError, match="does not fit"):
    warm_start.continue_from(_init(ssast.SSAST(wider), masking=True), str(directory))

  # A damaged or replaced weights file is refused, not loaded.
  weights = directory / release.WEIGHTS
  data = bytearray(weights.read_bytes())
  data[-1] ^= 0xFF
  weights.write_bytes(bytes(data))
  with pytest.raises(warm_start.WarmStartError, match="SHA-256"):
    warm_start.load_source({"checkpoint": str(directory), "converted": ""})
  with pytest.raises(release.ReleaseError, match="not a release"):
    release.read(tmp_path)
  with pytest.raises(release.ReleaseError, match="kind"):
    release.write(tmp_path / "x", params, {})
