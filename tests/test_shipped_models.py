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
    assert (directory / release.WEIGHTS).stat().st_size <= export_release.MAX_MB * 2**20
    assert about["command"] and about["config"] and about["data_metadata"]["normalization"]
    assert about["kind"] in ("transcriber",)


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
