"""eval.predict against a real tiny fine-tuning run: the trainer's own predictions, bad files, outputs.

The run is made by the trainer CLI on the session's generated PercePiano
shards (2.56 s windows, hop 1.28 s); its last evaluation's per-performance
predictions (predictions/<step>.npz) are the known answer inference must
reproduce from the MIDI files alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from eval import loading, predict, recording
from pipelines.audio import frontend, render
from pipelines.datasets import taxonomy
from train import checkpointing, predictions

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 4


@pytest.fixture(scope="module")
def env(jax_env) -> dict[str, str]:
  return jax_env


@pytest.fixture(scope="module")
def workdir(finetuned_run) -> pathlib.Path:
  """A finished tiny fine-tuning run (validation fold 0, evaluated at its last step STEPS)."""
  return finetuned_run


@pytest.fixture(scope="module")
def corpus(train_shards) -> pathlib.Path:
  return train_shards["percepiano"].parent / "corpus" / "percepiano" / "virtuoso" / "data" / \
      "all_2rounds"


@pytest.fixture(scope="module")
def saved(workdir) -> predictions.Predictions:
  # The trainer evaluates at its last step, which is also the last checkpoint.
  out = predictions.load_selected(workdir)
  assert out.step == STEPS
  return out


@pytest.fixture(scope="module")
def run(workdir) -> loading.Run:
  return loading.load(workdir, step="latest")


@pytest.fixture(scope="module")
def predictor(run) -> predict.Predictor:
  return predict.Predictor.from_run(run, batch_size=8)


def _cli(args, env, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "eval.predict", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _expected_windows(seconds: float, window: int, hop: int) -> int:
  frames = 1 + (round(seconds * 16000) - 400) // 160  # Kaldi snip_edges frames
  return 1 + max(0, math.ceil((frames - window) / hop))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, pathlib.Path]:
  d = tmp_path_factory.mktemp("bad")
  files = {"missing": d / "missing.wav", "corrupt": d / "corrupt.wav", "text": d / "notes.txt",
           "silent": d / "silent.wav", "empty": d / "empty.flac"}
  rng = np.random.default_rng(0)
  # A RIFF header and then noise: claims to be WAV, does not decode.
  files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + rng.bytes(2000))
  files["text"].write_text("not audio\n")
  soundfile.write(files["silent"], np.zeros(3 * 16000, np.float32), 16000)
  files["empty"].write_bytes(b"")
  return files


@pytest.fixture(scope="module")
def mixed_cli(workdir, saved, corpus, bad_files, env, tmp_path_factory):
  """One CLI run over two validation MIDI files and every kind of bad file."""
  out = tmp_path_factory.mktemp("cli")
  good = [corpus / f"{k}.mid" for k in saved.keys[:2]]
  bad = list(bad_files.values())
  proc = _cli([f"--checkpoint={workdir}", "--step=latest", f"--output_json={out / 'p.json'}",
               f"--output_csv={out / 'p.csv'}", good[0], *bad, good[1]], env)
  return dict(proc=proc, good=good, bad=bad_files, json=out / "p.json", csv=out / "p.csv")


def test_cli_reproduces_the_trainers_own_predictions(mixed_cli, saved):
  doc = json.loads(mixed_cli["json"].read_text())
  assert doc["step"] == saved.step
  by_path = {f["path"]: f for f in doc["files"]}
  for i, path in enumerate(mixed_cli["good"]):
    result = by_path[str(path)]
    label = np.array([result["label_space"][n] for n in taxonomy.DIMENSION_NAMES])
    np.testing.assert_allclose(label, saved.predictions[i], atol=1e-5, rtol=0)
    assert result["windows"] == saved.windows[i]
    ratings = np.array([result["ratings"][n] for n in taxonomy.DIMENSION_NAMES])
    np.testing.assert_allclose(ratings, label * 7, rtol=1e-12)


def test_library_reproduces_every_validation_performance(predictor, saved, corpus):
  for i, key in enumerate(saved.keys):
    result = predictor.predict_file(corpus / f"{key}.mid")
    np.testing.assert_allclose(result.scores, saved.predictions[i], atol=1e-5, rtol=0,
                               err_msg=key)
    assert result.windows == saved.windows[i]


def test_bad_files_get_one_line_errors_and_exit_status_1(mixed_cli):
  proc = mixed_cli["proc"]
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == len(mixed_cli["bad"])
  reasons = {"missing": "not found", "corrupt": "cannot decode", "text": "unsupported extension",
             "silent": "silent", "empty": "empty"}
  for kind, path in mixed_cli["bad"].items():
    line = next(e for e in errors if str(path) in e)
    assert reasons[kind] in line, line
  # The good file after the bad ones was still scored and printed.
  for path in mixed_cli["good"]:
    assert f"{path}: " in proc.stdout
  assert proc.stdout.count("group means:") == 2
  assert f"{len(mixed_cli['bad'])} of {len(mixed_cli['bad']) + 2} file(s) failed" in proc.stderr


def test_json_and_csv_parse_back_with_every_file(mixed_cli):
  doc = json.loads(mixed_cli["json"].read_text())
  assert doc["dimensions"] == list(taxonomy.DIMENSION_NAMES)
  assert [f["path"] for f in doc["files"]] == [str(p) for p in mixed_cli["good"]]
  assert {e["path"] for e in doc["errors"]} == {str(p) for p in mixed_cli["bad"].values()}
  for f in doc["files"]:
    assert len(f["window_ratings"]) == f["windows"] == len(f["window_starts_s"])
    mean = np.mean(f["window_ratings"], axis=0)
    np.testing.assert_allclose(mean, [f["ratings"][n] for n in taxonomy.DIMENSION_NAMES])
  with open(mixed_cli["csv"], newline="") as fh:
    rows = list(csv.DictReader(fh))
  assert list(rows[0]) == predict.CSV_FIELDS
  assert len(rows) == len(mixed_cli["good"]) + len(mixed_cli["bad"])
  by_path = {r["path"]: r for r in rows}
  for f in doc["files"]:
    row = by_path[f["path"]]
    assert row["error"] == ""
    for name in taxonomy.DIMENSION_NAMES:
      assert float(row[name]) == pytest.approx(f["ratings"][name], abs=1e-6)
    for group, value in f["group_ratings"].items():
      assert float(row[f"group_{group}"]) == pytest.approx(value, abs=1e-6)
  for path in mixed_cli["bad"].values():
    assert by_path[str(path)]["error"].startswith(str(path))
    assert by_path[str(path)]["timing_stability"] == ""


def test_all_good_files_exit_0_and_hop_is_configurable(workdir, saved, corpus, env, tmp_path):
  path = corpus / f"{saved.keys[0]}.mid"
  proc = _cli([f"--checkpoint={workdir}", "--step=latest", "--hop_s=2.56",
               f"--output_json={tmp_path / 'p.json'}", path], env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "p.json").read_text())["files"][0]
  seconds = render.render_midi(path).seconds
  assert result["windows"] == _expected_windows(seconds, 256, 256) < saved.windows[0]
  assert result["duration_s"] == pytest.approx(seconds)


def test_long_input_batches_through_one_compiled_function(predictor, saved, corpus, tmp_path):
  # A few minutes of audio: every validation render back to back, as a 16 kHz float WAV.
  samples = np.concatenate([render.render_midi(corpus / f"{k}.mid").samples
                            for k in saved.keys] * 3)
  path = tmp_path / "long.wav"
  soundfile.write(path, samples, 16000, subtype="FLOAT")
  before = predictor.traces
  stream = io.StringIO()
  long = predictor.predict_file(path, predict.ProgressLine("long.wav", predictor.batch_size,
                                                           stream=stream, every_s=0.0))
  short = predictor.predict_file(corpus / f"{saved.keys[0]}.mid")
  assert long.windows == _expected_windows(samples.shape[0] / 16000, 256, 128)
  assert long.windows > 10 * predictor.batch_size
  assert long.windows % predictor.batch_size  # the padded last batch is exercised
  assert predictor.traces == max(before, 1)  # compiled once for every length
  assert np.isfinite(long.window_scores).all()
  lines = stream.getvalue().splitlines()
  assert len(lines) == math.ceil(long.windows / predictor.batch_size)
  assert f"windows {long.windows}/{long.windows} (100%)" in lines[-1]
  assert "x real time" in lines[-1]
  np.testing.assert_allclose(long.duration_s, samples.shape[0] / 16000)
  assert short.windows == saved.windows[0]


def test_wav_of_a_render_scores_like_the_midi(predictor, saved, corpus, tmp_path):
  midi = corpus / f"{saved.keys[1]}.mid"
  path = tmp_path / "render.wav"
  soundfile.write(path, render.render_midi(midi).samples, 16000, subtype="FLOAT")
  np.testing.assert_allclose(predictor.predict_file(path).scores,
                             predictor.predict_file(midi).scores, atol=1e-6, rtol=0)


def test_batch_size_and_padding_do_not_change_scores(run, predictor, saved, corpus):
  small = predict.Predictor.from_run(run, batch_size=3)
  path = corpus / f"{saved.keys[0]}.mid"
  a, b = predictor.predict_file(path), small.predict_file(path)
  assert a.windows % 3  # batch 3 pads its last batch
  np.testing.assert_allclose(a.window_scores, b.window_scores, atol=1e-5, rtol=0)


def test_library_errors_are_typed_and_name_the_file(predictor, bad_files):
  from pipelines.audio import decode
  for kind, path in bad_files.items():
    with pytest.raises(decode.AudioError, match=str(path)):
      predictor.predict_file(path)
  with pytest.raises(recording.SilentInputError):
    predictor.predict_file(bad_files["silent"])
  with pytest.raises(decode.EmptyAudioError, match="shorter than one 25 ms frame"):
    predictor.predict_samples(np.full(200, 0.1, np.float32), name="click")


def test_model_input_is_bitwise_the_shards_windows(run, saved, corpus, train_shards):
  # The strongest form of "the same feature path": every validation window the trainer
  # read from the shards equals the window inference builds from the MIDI, bit for bit
  # (float16 storage included, which the score tolerance alone could not resolve).
  from pipelines import input_pipeline
  settings = recording.FeatureSettings.from_metadata(run.data_metadata)
  config = input_pipeline.InputConfig(batch_size=8, splits=("train",), folds=(0,),
                                      variants=(0,), spec_augment=False, read_threads=1)
  shard_windows: dict[str, dict[int, tuple[np.ndarray, int]]] = {}
  for batch in input_pipeline.evaluation(train_shards["percepiano"], config):
    for i in np.flatnonzero(batch["weight"] > 0):
      shard_windows.setdefault(str(batch["key"][i]), {})[int(batch["window_index"][i])] = (
          batch["features"][i], int(batch["valid_frames"][i]))
  assert set(shard_windows) == set(saved.keys)
  for key in saved.keys[:3]:
    samples = recording.load_samples(corpus / f"{key}.mid", settings)
    windows = recording.windows_of(samples, settings, name=key)
    ours = frontend.model_input(windows, settings.mean, settings.std)
    assert len(windows) == len(shard_windows[key])
    for w, x in zip(windows, ours):
      expected, valid = shard_windows[key][w.index]
      assert w.valid_frames == valid
      np.testing.assert_array_equal(x, expected, err_msg=f"{key} window {w.index}")


def test_a_hop_longer_than_the_window_is_refused(run):
  with pytest.raises(ValueError, match=r"hop \(5.12 s\) positive and at most the window"):
    recording.FeatureSettings.from_metadata(run.data_metadata, hop_s=5.12)
  settings = recording.FeatureSettings.from_metadata(run.data_metadata, hop_s=2.56)
  assert (settings.window.frames, settings.window.hop_frames) == (256, 256)


def test_damaged_checkpoints_are_one_clear_error(workdir, env, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  for step_dir in (copy / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      (step_dir / "state" / "_METADATA").write_text("{not json")
  for step in ("best", "latest"):
    with pytest.raises(checkpointing.CheckpointNotFoundError, match="no intact checkpoint"):
      loading.load(copy, step=step)
  proc = subprocess.run([sys.executable, "-m", "eval.predict", f"--checkpoint={copy}",
                         str(tmp_path / "any.wav")], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "no intact checkpoint" in last, proc.stderr[-2000:]
