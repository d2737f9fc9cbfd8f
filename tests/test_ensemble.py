"""train.ensemble: the mean of finished cross-validations' predictions, fold by fold."""

from __future__ import annotations

import dataclasses
import json
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


def test_an_ensemble_refuses_to_resume_over_a_re_run_member(members, job_with_audio, tmp_path):
  """The members' results are fingerprinted: a member re-run with other results since is
  named by `stale`, and resuming is refused rather than mixing two versions of it."""
  copy = tmp_path / "midi"
  shutil.copytree(members["midi"], copy)
  work = tmp_path / "ensemble"
  ensemble.run(job_with_audio, [members["audio"], copy], work, "piece", only=[0])
  assert ensemble.stale(work) == []
  path = predictions.path_for(copy / "fold1", 1)
  before = predictions.load(path)
  dataclasses.replace(before, predictions=before.predictions * 2).save(path)
  assert ensemble.stale(work) == [str(copy)]
  with pytest.raises(crossval.CrossValidationError, match="another split or config"):
    ensemble.run(job_with_audio, [members["audio"], copy], work, "piece", only=[1])
  assert not (work / "fold1" / "result.json").exists()
  # A run from before fingerprints were recorded cannot tell: every member counts as changed,
  # and the benchmark's stage says so instead of counting it as done.
  from experiments import percepiano_benchmark as benchmark
  old = tmp_path / "old"
  ensemble.run(job_with_audio, [members["audio"], members["midi"]], old, "piece", test=True)
  assert ensemble.stale(old) == [] and benchmark._combination_finished(old, "")
  summary = json.loads((old / crossval.SUMMARY).read_text())
  del summary["config"]["ensemble"]["fingerprints"]
  (old / crossval.SUMMARY).write_text(json.dumps(summary))
  assert ensemble.stale(old) == [str(members["audio"]), str(members["midi"])]
  with pytest.raises(benchmark.stages.StageError, match="delete it to make it again"):
    benchmark._combination_finished(old, "")
  with pytest.raises(ensemble.EnsembleError, match="not an ensemble"):
    ensemble.stale(members["audio"])


def _tampered(member: pathlib.Path, tmp_path: pathlib.Path, change,
              side: str = "fold0") -> pathlib.Path:
  """A copy of `member` whose predictions file of `side` is rewritten by `change`."""
  copy = tmp_path / f"tampered-{member.name}"
  shutil.copytree(member, copy)
  path = predictions.path_for(copy / side, 1)
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


# train.ensemble_selection: the members chosen on the split's folds.


def _candidates(signal: np.ndarray, noise_scales: list[float], seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [signal + s * rng.standard_normal(signal.shape) for s in noise_scales]


def test_selection_adds_what_helps_and_repeats_the_stronger_member():
  """Known answers: independent errors average out, so the greedy adds the second member;
  with noise s.d. 1 and 1.5, the weights 2:1 beat 1:1 (error variance 0.69 against 0.81) and
  3:1 does not (0.70), so the order is [0, 1, 0]; pure noise is never chosen."""
  from train import ensemble_selection as es
  signal = np.random.default_rng(0).standard_normal((20000, 2))
  mask = np.ones_like(signal, bool)
  folds = [(_candidates(signal, [1.0, 1.5, 1e6], seed), signal, mask) for seed in (1, 2)]
  order, score = es.select(folds)
  assert order == [0, 1, 0]
  assert es.weights(order, ["a", "b", "noise"]) == {"a": 2 / 3, "b": 1 / 3}
  assert score > es.select(folds, max_members=1)[1]
  assert es.select(folds, max_members=1)[0] == [0]
  assert es.select(folds, min_gain=1.0)[0] == [0]  # nothing gains a whole unit of Pearson
  # A lead is kept even when it is not the best candidate; the others are added after it.
  assert es.select(folds, lead=1)[0][:2] == [1, 0]
  # A lead of pure noise drowns whatever is averaged with it: nothing gains, it stays alone.
  assert es.select(folds, lead=2)[0] == [2]
  # Equal candidates: the first wins the tie.
  twins = [([signal, signal.copy()], signal, mask)]
  assert es.select(twins, max_members=1)[0] == [0]
  for bad, message in (([], "no selection folds"), ([([], signal, mask)], "every candidate"),
                       ([folds[0], ([signal], signal, mask)], "every candidate")):
    with pytest.raises(es.SelectionError, match=message):
      es.select(bad)
  with pytest.raises(es.SelectionError, match="not a candidate index"):
    es.select(folds, lead=3)
  # Constant predictions leave Pearson undefined on a dimension: such a combination never
  # scores on the dimensions left (it would be flattered), and nothing defined is an error.
  flat = np.zeros_like(signal)
  half_flat = np.stack([signal[:, 0], np.zeros(len(signal))], axis=1)
  assert es.select([([half_flat, _candidates(signal, [3.0], 3)[0]], signal, mask)])[0][0] == 1
  with pytest.raises(es.SelectionError, match="no candidate has a defined score"):
    es.select([([flat, half_flat], signal, mask)])
  with pytest.raises(es.SelectionError, match="the lead .* has no defined score"):
    es.select([([flat, signal], signal, mask)], lead=0)
  # At min_gain 0 an addition must still gain something: a lone candidate is not re-added.
  assert es.select([([signal + 1.0], signal, mask)], min_gain=0)[0] == [0]


def test_selection_is_nested_fold_by_fold_and_the_test_set_uses_every_fold(members,
                                                                           job_with_audio,
                                                                           tmp_path):
  """Fold k's ensemble is chosen on the other folds only: a candidate made perfect on fold 0
  alone does not change fold 0's choice, but does change the test set's (chosen on both)."""
  from train import ensemble_selection as es
  perfect = _tampered(members["midi"], tmp_path,
                      lambda p: dataclasses.replace(p, predictions=p.labels.copy()))
  candidates = [members["audio"], perfect]
  work = tmp_path / "selection"
  summary = es.run(job_with_audio, candidates, work, "piece", test=True,
                   lead=members["audio"], min_gain=0)
  assert summary["config"]["model"]["backbone"] == "ridge & selection"
  fold_parts = {k: [p for p in crossval.fold_predictions(c)] for k, c in zip("ap", candidates)}
  for k, other in ((0, 1), (1, 0)):
    result = json.loads((work / f"fold{k}" / "result.json").read_text())
    assert result["selected_on"] == [f"fold{other}"]
    a, p = fold_parts["a"][other], fold_parts["p"][other].subset(fold_parts["a"][other].keys)
    order, score = es.select([([a.predictions, p.predictions], a.labels, a.mask)],
                             lead=0, min_gain=0)
    expected = es.weights(order, [str(c) for c in candidates])
    assert result["weights"] == pytest.approx(expected)
    assert result["selection_score"] == pytest.approx(score)
    # The fold's predictions are the recorded weights' mean of the candidates' own.
    mine = crossval.fold_predictions(work)[k]
    held = [fold_parts[n][k].subset(mine.keys).predictions for n in "ap"]
    weight = [expected.get(str(c), 0.0) for c in candidates]
    np.testing.assert_allclose(mine.predictions, weight[0] * held[0] + weight[1] * held[1],
                               rtol=0, atol=1e-12)
  test = json.loads((work / "test" / "result.json").read_text())
  assert test["selected_on"] == ["fold0", "fold1"]
  both = [([a.predictions, p.subset(a.keys).predictions], a.labels, a.mask)
          for a, p in zip(fold_parts["a"], fold_parts["p"])]
  order, score = es.select(both, lead=0, min_gain=0)
  assert test["weights"] == pytest.approx(es.weights(order, [str(c) for c in candidates]))
  assert test["selection_score"] == pytest.approx(score)
  mine = predictions.load_selected(work / "test")
  held = [predictions.load_selected(c / "test").subset(mine.keys).predictions
          for c in candidates]
  np.testing.assert_allclose(mine.predictions, sum(
      test["weights"].get(str(c), 0.0) * h for c, h in zip(candidates, held)), rtol=0, atol=1e-12)
  # The perfect-on-fold-0 candidate pulls fold 1's weights its way (chosen on fold 0), not
  # fold 0's own (chosen on fold 1).
  fold0 = json.loads((work / "fold0" / "result.json").read_text())
  fold1 = json.loads((work / "fold1" / "result.json").read_text())
  assert fold1["weights"].get(str(perfect), 0) > fold0["weights"].get(str(perfect), 0)

  # No test label enters the choice: a candidate made perfect on the test set alone leaves
  # the test set's weights as they were (and its predictions move only by that candidate's).
  cheat = _tampered(members["midi"], tmp_path / "cheat",
                    lambda p: dataclasses.replace(p, predictions=p.labels.copy()),
                    side="test")
  honest = es.run(job_with_audio, [members["audio"], members["midi"]], tmp_path / "honest",
                  "piece", only=[], test=True)
  cheated = es.run(job_with_audio, [members["audio"], cheat], tmp_path / "cheated", "piece",
                   only=[], test=True)
  assert honest["config"]["model"]["backbone"] == "selection"  # no lead
  weights_of = {name: json.loads((tmp_path / name / "test" / "result.json").read_text())[
      "weights"] for name in ("honest", "cheated")}
  assert list(weights_of["honest"].values()) == list(weights_of["cheated"].values())
  del cheated

  # A rerun skips what finished; a candidate re-run since is refused, not mixed in.
  before = (work / "fold0" / "result.json").read_text()
  es.run(job_with_audio, candidates, work, "piece", test=True, lead=members["audio"],
         min_gain=0)
  assert (work / "fold0" / "result.json").read_text() == before
  path = predictions.path_for(perfect / "fold1", 1)
  again = predictions.load(path)
  again.save(path)  # the same numbers written again are the same results
  es.run(job_with_audio, candidates, work, "piece", test=True, lead=members["audio"],
         min_gain=0)
  from experiments import percepiano_benchmark as benchmark
  assert ensemble.stale(work) == [] and benchmark._combination_finished(work)
  dataclasses.replace(again, predictions=again.predictions + 0.01).save(path)  # re-run
  with pytest.raises(crossval.CrossValidationError, match="another split or config"):
    es.run(job_with_audio, candidates, work, "piece", test=True, lead=members["audio"],
           min_gain=0)
  # ... and the benchmark's stage says so instead of counting the stale choice as done.
  assert ensemble.stale(work) == [str(perfect)]
  with pytest.raises(benchmark.stages.StageError, match="delete it to make it again"):
    benchmark._combination_finished(work)


def test_selection_refuses_what_it_cannot_choose_from(members, job_with_audio, tmp_path):
  from train import ensemble_selection as es
  cases = [
      (es.SelectionError, "two candidates or more", [members["audio"]], {}),
      (es.SelectionError, "is not one of the candidates", [members["audio"], members["midi"]],
       {"lead": members["performer"]}),
      (ensemble.EnsembleError, "named twice", [members["audio"], members["audio"]], {}),
      (ensemble.EnsembleError, "performer split cross-validation",
       [members["audio"], members["performer"]], {}),
      (crossval.CrossValidationError, "not finished",
       [members["audio"], _unfinished(members["midi"], tmp_path)], {}),
      (es.SelectionError, "has no finished test run",
       [members["audio"], _unfinished(members["midi"], tmp_path / "t", "test")], {}),
      (ensemble.EnsembleError, r"has folds \[0, 1, 2\], the shards' piece split \[0, 1\]",
       [members["audio"], _other_folds(members["midi"], tmp_path)], {}),
      (es.SelectionError, "has non-finite predictions of fold0",
       [members["audio"], _tampered(members["midi"], tmp_path / "nan", lambda p: (
           dataclasses.replace(p, predictions=np.full_like(p.predictions, np.nan))))], {}),
      (es.SelectionError, "max_members must be at least 1",
       [members["audio"], members["midi"]], {"max_members": 0}),
  ]
  for i, (error, message, chosen, kwargs) in enumerate(cases):
    with pytest.raises(error, match=message):
      es.run(job_with_audio, chosen, tmp_path / f"run{i}", "piece", test=True, **kwargs)
    assert not any((tmp_path / f"run{i}").glob("*/result.json"))
  proc = subprocess.run(
      [sys.executable, "-m", "train.ensemble_selection", f"--data_dir={job_with_audio}",
       f"--candidates={members['audio']},{members['midi']}", f"--lead={tmp_path / 'x'}",
       f"--workdir={tmp_path / 'w'}", "--test"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: the lead {tmp_path / 'x'} is not one of the candidates")


def _unfinished(member: pathlib.Path, tmp_path: pathlib.Path, side: str = "fold1"
                ) -> pathlib.Path:
  """A copy of `member` whose `side` never finished (its result removed)."""
  copy = tmp_path / f"unfinished-{member.name}"
  shutil.copytree(member, copy)
  (copy / side / "result.json").unlink()
  return copy


def _other_folds(member: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  """A copy of `member` whose cross-validation says it had three folds (other shards)."""
  copy = tmp_path / f"other-folds-{member.name}"
  shutil.copytree(member, copy)
  summary = json.loads((copy / crossval.SUMMARY).read_text())
  summary["folds"] = [0, 1, 2]
  (copy / crossval.SUMMARY).write_text(json.dumps(summary))
  return copy
