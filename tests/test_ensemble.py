"""train.ensemble: the mean of finished cross-validations' predictions, fold by fold."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from train import crossval, ensemble, predictions, ridge

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def members(job_with_audio, tmp_path_factory) -> dict[str, pathlib.Path]:
  """Two real members on the tiny job: the audio ridge and the MIDI-statistics ridge, every
  fold and the test set of the piece split, and the audio ridge on the performer split."""
  root = tmp_path_factory.mktemp("members")
  out = {name: root / name for name in ("audio", "midi", "performer", "performer_midi")}
  for name, split, test, features in (("audio", "piece", True, "audio"),
                                      ("midi", "piece", True, "midi_notes"),
                                      ("performer", "performer", False, "audio"),
                                      ("performer_midi", "performer", False, "midi_notes")):
    ridge.run(job_with_audio, out[name], split, test=test, features=features,
              statistics_cache=root / f"{features}.npz")
  return out


def test_each_fold_is_the_mean_of_the_members_and_reports_like_any_run(members, job_with_audio,
                                                                       tmp_path):
  work = tmp_path / "ensemble"
  summary = ensemble.run(job_with_audio, [members["audio"], members["midi"]], work, "piece",
                         test=True)
  assert summary["config"]["model"]["backbone"] == "ridge & oracle"
  audio, midi = (crossval.fold_predictions(members[m]) for m in ("audio", "midi"))
  mine = crossval.fold_predictions(work)
  assert len(mine) == len(audio) == 2
  for a, b, e in zip(audio, midi, mine):
    assert e.keys == a.keys  # fold_runs writes the held keys sorted, as the members do
    np.testing.assert_allclose(e.predictions, (a.predictions + b.subset(a.keys).predictions) / 2,
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(e.mask, a.mask)
  test = predictions.load_selected(work / "test")
  expected = [predictions.load_selected(members[m] / "test").subset(test.keys).predictions
              for m in ("audio", "midi")]
  np.testing.assert_allclose(test.predictions, np.mean(expected, axis=0), rtol=0, atol=1e-12)
  # The summary is the crossval one, so eval.report / eval.report.summary read it.
  assert set(summary["runs"]) == {"0", "1", "test"} and "per_fold" in summary
  # A rerun finds every fold finished and changes nothing.
  before = (work / "fold0" / "result.json").read_text()
  ensemble.run(job_with_audio, [members["audio"], members["midi"]], work, "piece", test=True)
  assert (work / "fold0" / "result.json").read_text() == before


def _tampered(member: pathlib.Path, tmp_path: pathlib.Path, change) -> pathlib.Path:
  """A copy of `member` whose fold-0 predictions file is rewritten by `change`."""
  copy = tmp_path / f"tampered-{member.name}"
  shutil.copytree(member, copy)
  path = predictions.path_for(copy / "fold0", 1)
  change(predictions.load(path)).save(path)
  return copy


def test_members_that_do_not_fit_are_refused(members, job_with_audio, tmp_path):
  both = [members["audio"], members["midi"]]
  cases = [
      ("two members or more", [members["audio"]], "piece", {}),
      ("named twice", [members["audio"], members["audio"]], "piece", {}),
      ("does not exist", [members["audio"], tmp_path / "nowhere"], "piece", {}),
      ("performer split cross-validation, not piece", [members["audio"], members["performer"]],
       "piece", {}),
      ("has no finished test run", [members["performer"], members["performer_midi"]],
       "performer", {"only": [], "test": True}),
      ("labels of fold0 differ", [both[0], _tampered(
          both[1], tmp_path, lambda p: dataclasses.replace(p, labels=p.labels + 0.5))],
       "piece", {}),
      ("did not predict 1 performances of fold0", [both[0], _tampered(
          both[0], tmp_path / "x", lambda p: p.subset(p.keys[1:]))], "piece", {}),
  ]
  for i, (message, chosen, split, kwargs) in enumerate(cases):
    with pytest.raises(ensemble.EnsembleError, match=message):
      ensemble.run(job_with_audio, chosen, tmp_path / f"run{i}", split, **kwargs)
    # Nothing that looks finished is left behind.
    assert not any((tmp_path / f"run{i}").glob("*/result.json"))


def test_cli_errors_are_one_line(members, job_with_audio, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "train.ensemble", f"--data_dir={job_with_audio}",
       f"--members={members['audio']},{tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == f"error: member {tmp_path / 'nowhere'} does not exist"
