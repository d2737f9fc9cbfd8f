"""The models committed under release/: intact, small, loadable without training, and still
giving the scores recorded beside them (on a fresh clone, CI, any CPU)."""

import json
import pathlib

import pytest

from eval import export_release, loading
from model import release

REPO = pathlib.Path(__file__).resolve().parent.parent
RELEASES = REPO / "release"


def _releases() -> list[pathlib.Path]:
  return sorted(p for p in RELEASES.iterdir() if p.is_dir()) if RELEASES.is_dir() else []


def test_every_committed_release_is_intact_small_and_says_how_it_was_made():
  assert _releases(), f"no release committed under {RELEASES}"
  for directory in _releases():
    _, about = release.read(directory)  # the checksum is verified
    # Everything a release ships counts (the notes model's arrays, a PyTorch form).
    assert sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) <= (
        export_release.MAX_MB * 2**20)
    assert about["command"] and about["config"] and about["data_metadata"]["normalization"]
    assert about["kind"] in ("transcriber", "notes_perception")


def test_the_released_transcriber_still_transcribes_its_check_performance():
  directory = RELEASES / "transcriber"
  run = loading.load_transcriber(directory)
  check = json.loads((directory / release.ABOUT).read_text())["check"]
  scores = export_release.check_scores(run, directory / check["midi"])
  # The same weights on another CPU may move a probability across a threshold here and
  # there, not the scores.
  assert scores["notes"] == pytest.approx(check["notes"], rel=0.02)
  for metric in ("onset/f1", "onset_offset/f1", "pedal/f1"):
    assert scores[metric] == pytest.approx(check[metric], abs=0.02), metric


def test_eval_transcribe_with_the_shipped_weights_from_the_command_line(tmp_path):
  """What a user of a fresh clone runs: `eval.transcribe` on the check performance with the
  committed release writes a MIDI file whose scores are the recorded ones."""
  import subprocess
  import sys

  import pretty_midi

  directory = RELEASES / "transcriber"
  check = json.loads((directory / release.ABOUT).read_text())["check"]
  out = tmp_path / "transcribed.mid"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.transcribe", f"--checkpoint={directory}",
       str(directory / check["midi"]), f"--output_midi={out}",
       f"--reference_midi={directory / check['midi']}", f"--output_json={tmp_path / 's.json'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = pretty_midi.PrettyMIDI(str(out))
  assert sum(len(i.notes) for i in written.instruments) == pytest.approx(check["notes"], rel=0.02)
  scores = json.loads((tmp_path / "s.json").read_text())
  assert scores["onset/f1"] == pytest.approx(check["onset/f1"], abs=0.02)


def test_eval_predict_without_a_checkpoint_scores_with_the_shipped_perception_model(tmp_path):
  """A fresh clone scores a recording with no training and no --checkpoint: the shipped notes
  model (release/perception) gives its check performance the ratings recorded beside it,
  and a WAV of the same performance nearly the same."""
  import subprocess
  import sys

  import numpy as np
  import soundfile

  from eval import predict
  from pipelines.audio import render

  directory = RELEASES / "perception"
  assert predict.SHIPPED == directory
  about = json.loads((directory / release.ABOUT).read_text())
  assert about["kind"] == "notes_perception"
  midi = directory / about["check"]["midi"]
  wav = tmp_path / "check.wav"
  soundfile.write(wav, render.render_midi(midi).samples, 16_000)
  out = tmp_path / "p.json"
  proc = subprocess.run([sys.executable, "-m", "eval.predict", str(midi), str(wav),
                         f"--output_json={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(out.read_text())
  assert doc["checkpoint"] == str(directory) and doc["kind"] == "notes_perception"
  by_path = {f["path"]: np.array(list(f["label_space"].values())) for f in doc["files"]}
  recorded = np.array(about["check"]["label_space"])
  # Another CPU may move a note across a threshold: a rating moves by a few hundredths.
  np.testing.assert_allclose(by_path[str(midi)], recorded, atol=0.02)
  np.testing.assert_allclose(by_path[str(wav)], recorded, atol=0.05)
