"""eval.export_transformers: a fine-tuning run as a `transformers.ASTModel` plus a PyTorch head.

The oracle is the Flax model itself, on real windows (two rendered performances of
the tiny corpus the fine-tuning run trained on, last windows zero-padded):

* the real run, exported by the command line, loaded with `transformers` and the
  shipped head module, must give `eval.predict`'s scores per window and per
  recording to 1e-4, also in a fresh interpreter that imports nothing of the
  project;
* the same run's structure and a few encoder/head variants (token counts, pooling,
  GELU, flat and non-cross-task heads) with every parameter redrawn, since a 4-step
  model barely depends on its input and would hide a wrong mask or mapping. Each of
  these checks that it can fail: its windows' outputs differ, and without the masks
  its outputs are off by several times the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from transformers import ASTModel

from eval import export_transformers as export
from eval import loading, predict, recording
from model import multitask
from model import params as params_lib
from model.convert import piano_perception, rules
from pipelines.audio import frontend

REPO = pathlib.Path(__file__).resolve().parent.parent
TRANSCRIBER = REPO / "release" / "transcriber"
# Max abs, float32: label space for the run (measured 6e-8), normalised outputs for the
# redrawn variants (measured 0.7-1.7e-6).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run(finetuned_run) -> loading.Run:
  return loading.load(finetuned_run, step="latest")


@pytest.fixture(scope="module")
def recordings(run, train_shards) -> list[dict]:
  """Two performances: their log-mel, windows and model input `[n, mel, frames]`."""
  corpus = train_shards["percepiano"].parent / "corpus" / "percepiano" / "virtuoso" / "data" / \
      "all_2rounds"
  settings = recording.FeatureSettings.from_metadata(run.data_metadata)
  out = []
  for path in sorted(corpus.glob("*.mid"))[:2]:
    samples = recording.load_samples(path, settings)
    windows = recording.windows_of(samples, settings, name=str(path))
    out.append(dict(path=path, logmel=frontend.log_mel(samples), windows=windows,
                    x=frontend.model_input(windows, settings.mean, settings.std),
                    valid=np.array([w.valid_frames for w in windows], np.int32)))
  assert any(w.valid_frames < settings.window.frames for r in out for w in r["windows"])
  return out


def _cli(args, env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "eval.export_transformers", *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(scope="module")
def exported(finetuned_run, jax_env, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("export") / "perception"
  proc = _cli([f"--checkpoint={finetuned_run}", "--step=latest", f"--output_dir={out}"], jax_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def _hf_input(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))  # [n, frames, mel]


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------ the real run


def test_transformers_loads_the_export_and_matches_flax_on_real_windows(exported, run,
                                                                       recordings):
  assert sorted(p.name for p in exported.iterdir()) == sorted(export.FILES)
  encoder, info = ASTModel.from_pretrained(exported, output_loading_info=True,
                                           local_files_only=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert encoder.config.num_hidden_layers == run.model_config.encoder.depth
  model = piano_perception.load(exported)
  assert model.about["source"]["step"] == run.step
  predictor = predict.Predictor.from_run(run, batch_size=4)
  worst = 0.0
  for r in recordings:
    flax = predictor.predict_windows(r["windows"])
    with torch.no_grad():
      ours = model(_hf_input(r["x"]), torch.from_numpy(r["valid"])).numpy()
    worst = max(worst, _max_err(ours, flax))
    # The module's own windowing is the shards' input, bit for bit; its recording score
    # is eval.predict's mean over windows.
    x, valid = piano_perception.windows(torch.from_numpy(r["logmel"]), model.about)
    np.testing.assert_array_equal(x.numpy(), r["x"].transpose(0, 2, 1))
    np.testing.assert_array_equal(valid.numpy(), r["valid"])
    score, per_window = piano_perception.score(model, torch.from_numpy(r["logmel"]), 3)
    assert _max_err(per_window, flax) < TOLERANCE
    assert _max_err(score, flax.astype(np.float64).mean(axis=0)) < TOLERANCE
  print(f"max |flax - pytorch| over {sum(len(r['windows']) for r in recordings)} windows: "
        f"{worst:.2e}")
  assert worst < TOLERANCE


def test_the_export_runs_without_the_project(exported, run, recordings, tmp_path):
  r = recordings[0]
  np.save(tmp_path / "x.npy", _hf_input(r["x"]).numpy())
  np.save(tmp_path / "valid.npy", r["valid"])
  code = f"""
import json, sys, numpy as np, torch
import piano_perception
model = piano_perception.load(".")
x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
valid = torch.from_numpy(np.load({str(tmp_path / 'valid.npy')!r}))
with torch.no_grad():
  out = model(x, valid)
ours = ("model", "eval", "pipelines", "train")
project = sorted(m for m in sys.modules if m.split(".")[0] in ours)
print(json.dumps({{"out": out.tolist(), "project": project, "file": piano_perception.__file__}}))
"""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  proc = subprocess.run([sys.executable, "-c", code], cwd=exported, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert pathlib.Path(result["file"]).parent == exported
  assert result["project"] == []
  flax = predict.Predictor.from_run(run, batch_size=4).predict_windows(r["windows"])
  assert _max_err(result["out"], flax) < TOLERANCE


def test_about_says_how_to_run_it(exported, run):
  about = json.loads((exported / export.ABOUT).read_text())
  f, t = about["features"], about["targets"]
  assert f["log_mel_mean"] == run.feature_mean and f["log_mel_std"] == run.feature_std
  assert (f["window_frames"], f["hop_frames"]) == (256, 128)
  assert (t["mean"], t["std"]) == (list(run.normalizer.mean), list(run.normalizer.std))
  assert about["encoder"]["num_tokens"] == 1 and about["encoder"]["attention_mask_required"]
  readme = (exported / "README.md").read_text()
  assert f"mean = {run.feature_mean:.6f}" in readme and "mean of its windows" in readme
  assert (exported / "piano_perception.py").read_bytes() == export.TORCH_MODULE.read_bytes()


# ------------------------------------------------------------------ redrawn weights, variants


def _redrawn(shapes, seed: int):
  """Parameters of the tree's shapes, drawn at scales where each matters (as
  tests/test_convert.py: zero biases and identity LayerNorms would hide their mapping)."""
  flat = params_lib.flatten(nn.meta.unbox(shapes))
  rng = np.random.default_rng(seed)
  out = {}
  for path, value in flat.items():
    shape = np.shape(value)
    if path.endswith("/kernel"):
      bias = np.shape(flat[path[:-len("kernel")] + "bias"])
      lead = 1 if path.startswith("encoder/blocks/") else 0  # layers stacked in front
      fan_in = int(np.prod(shape[lead:len(shape) - len(bias) + lead]))
      out[path] = rng.normal(0, fan_in ** -0.5, shape)
    elif path.endswith("/scale"):
      out[path] = 1 + 0.3 * rng.normal(size=shape)
    else:  # biases, tokens, position embeddings, group queries
      out[path] = rng.normal(0, 0.5, shape)
  return params_lib.unflatten({k: v.astype(np.float32) for k, v in out.items()})


VARIANTS = {
    "run": {},
    # Groups out of label order: the head must scatter its outputs back.
    "two_tokens_gelu_tanh_no_cross_task": dict(
        encoder=dict(num_tokens=2, pooling="tokens", gelu_approximate=True),
        cross_task=False, head_depth=2,
        groups=(("odd", tuple(range(17, 0, -2))), ("even", tuple(range(0, 19, 2))))),
    # Non-overlapping patches: the encoder's reshape path instead of its gather.
    "no_tokens_flat_stride_16": dict(
        encoder=dict(num_tokens=0, pooling="patches", freq_stride=16, time_stride=16),
        head="flat"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_with_redrawn_weights_match_flax(run, recordings, variant, tmp_path):
  changes = dict(VARIANTS[variant])
  encoder = run.model_config.encoder.replace(**changes.pop("encoder", {}))
  config = run.model_config.replace(encoder=encoder, **changes)
  model = multitask.MultiTaskModel(config)
  x = np.concatenate([r["x"] for r in recordings])
  valid = np.concatenate([r["valid"] for r in recordings])
  shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]
  params = _redrawn(shapes, seed=1)
  forward = jax.jit(lambda p, x, v: model.apply({"params": p}, x, valid_frames=v)["predictions"])
  flax = np.asarray(forward(params, x, valid))

  export.write(tmp_path / "out", config, params, run.normalizer, run.data_metadata)
  torch_model = piano_perception.load(tmp_path / "out")
  with torch.no_grad():
    ours = torch_model.normalised(_hf_input(x), torch.from_numpy(valid)).numpy()
    unmasked = torch_model.head(*_unmasked_tokens(torch_model, _hf_input(x))).numpy()
  print(f"{variant}: max |flax - pytorch| {_max_err(ours, flax):.2e}")
  assert _max_err(ours, flax) < TOLERANCE
  # The comparison can fail: the windows disagree, and so does the model without its masks.
  assert flax.std(axis=0).min() > 100 * TOLERANCE
  partial = valid < encoder.num_frames
  masked_slots = encoder.num_tokens < 2
  rows = slice(None) if masked_slots else partial
  assert np.abs(unmasked - flax)[rows].max(axis=1).min() > 3 * TOLERANCE


def _unmasked_tokens(model: piano_perception.PianoPerception, x: torch.Tensor):
  """The head's input from the bare `ASTModel` call, with no attention mask at all."""
  hidden = model.encoder(x).last_hidden_state
  t = model.about["encoder"]["num_tokens"]
  tokens = torch.cat([hidden[:, :t], hidden[:, 2:]], dim=1)
  return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)


def test_every_transform_inverts():
  dims = rules.Dims(width=12, heads=3, mlp=20, patch=4, num_tokens=2, grid=(2, 3))
  sizes = {"D": 12, "3D": 36, "M": 20, "P": 4, "P2": 16, "1": 1, "N": 2 + 6}
  rng = np.random.default_rng(0)
  for name, transform in rules.TRANSFORMS.items():
    source = rng.normal(size=[sizes[s] for s in transform.shape])
    back = transform.invert(transform.apply(source, dims), dims)
    if name == "pos_tokens":
      source = source[:, :2]
    elif name == "pos_grid":
      source = source[:, 2:]
    np.testing.assert_array_equal(back, source, err_msg=name)


# ------------------------------------------------------------------ refusals and the CLI


def test_backbones_without_an_ast_equivalent_are_refused(run, tmp_path):
  for backbone in ("cnn", "pooled_stats"):
    with pytest.raises(export.ExportError, match=f"backbone is '{backbone}'") as e:
      export.write(tmp_path / "out", run.model_config.replace(backbone=backbone), run.params,
                   run.normalizer, run.data_metadata)
    assert "\n" not in str(e.value)
  other = dataclasses.replace(run.model_config,
                              encoder=run.model_config.encoder.replace(num_frames=512))
  with pytest.raises(export.ExportError, match="windows are 256 frames but the encoder reads 512"):
    export.write(tmp_path / "out", other, run.params, run.normalizer, run.data_metadata)
  assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_an_export(run, tmp_path):
  out = tmp_path / "out"
  export.write(out, run.model_config, run.params, run.normalizer, run.data_metadata)
  (out / "stale.txt").write_text("from before")
  export.write(out, run.model_config, run.params, run.normalizer, run.data_metadata,
               overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == sorted(export.FILES)
  assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left
  unrelated = tmp_path / "notes"
  unrelated.mkdir()
  (unrelated / "mine.txt").write_text("keep")
  with pytest.raises(export.ExportError, match="is not an export"):
    export.write(unrelated, run.model_config, run.params, run.normalizer, run.data_metadata,
                 overwrite=True)
  assert (unrelated / "mine.txt").read_text() == "keep"


def test_cli_bad_input_is_one_line_error(exported, finetuned_run, jax_env, tmp_path):
  cases = {
      "neither a work directory": [f"--checkpoint={tmp_path}", f"--output_dir={tmp_path / 'a'}"],
      "does not exist": [f"--checkpoint={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'b'}"],
      "exists; pass --overwrite": [f"--checkpoint={finetuned_run}", "--step=latest",
                                   f"--output_dir={exported}"],
      "is not a pre-training run": ["--kind=transcriber", f"--checkpoint={finetuned_run}",
                                    f"--output_dir={tmp_path / 'c'}"],
      "exports with --kind=transcriber": [f"--checkpoint={TRANSCRIBER}",
                                          f"--output_dir={tmp_path / 'd'}"],
  }
  for expected, args in cases.items():
    proc = _cli(args, jax_env)
    assert proc.returncode != 0, expected
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert not any((tmp_path / name).exists() for name in "abcd")


# ------------------------------------------------------------------ the released transcriber

@pytest.fixture(scope="module")
def transcriber_export(jax_env, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("transcriber") / "export"
  # By its place in the repository (the CLI runs there), as the committed copy was made.
  proc = _cli(["--kind=transcriber", "--checkpoint=release/transcriber", f"--output_dir={out}",
               "--dtype=float16"], jax_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def test_the_released_transcriber_exports_and_matches_flax_on_real_windows(transcriber_export):
  """The committed transcriber, exported: `ASTModel` + `TranscriptionHead` in PyTorch give
  Flax's frame probabilities on the windows of its check performance (last one padded)."""
  from eval import transcribe
  from model import ast, transcription

  run = loading.load_transcriber(TRANSCRIBER)
  settings = recording.FeatureSettings.from_metadata(run.data_metadata)
  samples, _ = transcribe.samples_of(TRANSCRIBER / "check.mid", settings)
  windows = recording.windows_of(samples, settings, name="check")
  x = frontend.model_input(windows, settings.mean, settings.std)
  valid = np.array([w.valid_frames for w in windows], np.int32)
  assert valid.min() < settings.window.frames  # a padded window is among them
  m = run.config.model
  flax_model = transcription.Transcriber(ast.EncoderConfig(**m.encoder.to_dict()),
                                         m.transcription_hidden, m.transcription_frame_features)
  flax = jax.device_get(flax_model.apply({"params": run.params}, x, valid))

  model = piano_perception.load(transcriber_export)
  assert isinstance(model, piano_perception.PianoTranscription)
  assert model.about["thresholds"] == run.thresholds and model.about["kind"] == "transcriber"
  with torch.no_grad():
    ours = model(_hf_input(x), torch.from_numpy(valid))
    # The bare ASTModel (no key mask for the absent token slot and the padding) differs.
    hidden = model.encoder(_hf_input(x)).last_hidden_state
    unmasked = model.head(hidden[:, 2:], _hf_input(x))
  assert set(ours) == set(flax) == {*transcription.ROLLS, "pedal"}
  for k in flax:
    print(f"{k}: max |flax - pytorch| {_max_err(ours[k], flax[k]):.2e}")
    assert _max_err(ours[k], flax[k]) < TOLERANCE, k
    assert np.std(flax[k]) > 100 * TOLERANCE, k
  assert _max_err(torch.sigmoid(unmasked["onset"]), flax["onset"]) > 3 * TOLERANCE


def test_the_committed_pytorch_form_is_the_released_transcriber(transcriber_export):
  """release/transcriber/transformers is what the export of the release writes today."""
  shipped = TRANSCRIBER / "transformers"
  for name in (export.ENCODER_CONFIG, export.ENCODER_WEIGHTS, export.HEAD_WEIGHTS,
               export.TORCH_MODULE.name, "README.md"):
    assert (shipped / name).read_bytes() == (transcriber_export / name).read_bytes(), name
  about, fresh = (json.loads((d / export.ABOUT).read_text())
                  for d in (shipped, transcriber_export))
  for d in (about, fresh):
    d["source"].pop("git_revision")
  assert about == fresh
