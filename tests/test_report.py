"""eval.report: the numbers against direct computation, comparisons with known answers, the CLI."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from eval.report import build, common, scoring, sources, summary, targets
from pipelines.datasets import percepiano, taxonomy
from train import crossval, metrics, predictions, rundir

REPO = pathlib.Path(__file__).resolve().parent.parent


def _predictions(seed: int, noise: float, n_passages: int = 12, performers: int = 4):
  rng = np.random.default_rng(seed)
  keys = tuple(f"Synth_W{p}_8bars_{k + 1}_{p:02d}" for p in range(n_passages)
               for k in range(performers))
  n = len(keys)
  labels = 0.5 + 0.1 * rng.normal(size=(n, 19))
  return predictions.Predictions(
      keys=keys, predictions=labels + noise * rng.normal(size=(n, 19)), labels=labels,
      mask=np.ones((n, 19), bool), windows=np.ones(n, int), step=10, split="piece/fold0")


def test_rows_match_direct_scores_and_intervals_contain_them():
  p = _predictions(0, 0.1)
  out = scoring.evaluate(p, {}, None, resamples=500, seed=0)
  direct = metrics.score(p.predictions, p.labels, p.mask, p.passages)
  for metric in ("pearson", "spearman", "r2", "mse", "mae", "pearson_within"):
    summary = metrics.summarise(direct[metric], prefix=metric)
    for k in common.ROWS:
      assert out["rows"][k][metric] == pytest.approx(summary[f"{metric}/{k}"]), (metric, k)
  for k in common.ROWS:
    row = out["rows"][k]
    assert row["pearson_low"] <= row["pearson"] <= row["pearson_high"]
  assert out["performances"] == 48 and out["passages"] == 12


def test_comparisons_know_the_answer():
  good, bad = _predictions(1, 0.05), _predictions(1, 0.3)
  bad = dataclasses.replace(bad, predictions=good.labels + 0.3 * np.random.default_rng(9).normal(
      size=good.labels.shape))
  out = scoring.evaluate(good, {"bad": bad, "same": good}, None, resamples=1000, seed=0)
  vs_bad, vs_same = out["compare"]["bad"]["rows"], out["compare"]["same"]["rows"]
  for d in taxonomy.DIMENSION_NAMES:
    assert vs_bad[d]["difference"] > 0 and vs_bad[d]["p_williams_holm"] < 0.01
    assert vs_bad[d]["p_bootstrap_holm"] < 0.05
    assert vs_same[d]["difference"] == 0 and vs_same[d]["p_bootstrap"] == 1.0
    assert vs_bad[d]["p_bootstrap_holm"] >= vs_bad[d]["p_bootstrap"]
  assert out["compare"]["bad"]["relative_mean_pearson_gain"] > 0.2
  checks = targets.targets({"test": out}, 0.99, 0.2, baselines={"bad", "same"})
  assert [t["met"] for t in checks if "Pearson >=" in t["goal"] and "over" not in t["goal"]] == [
      out["rows"][g]["pearson"] >= 0.99 for g in taxonomy.GROUPS]
  assert {t["goal"]: t["met"] for t in checks}["mean Pearson >= 20 % over bad"]
  assert not {t["goal"]: t["met"] for t in checks}["mean Pearson >= 20 % over same"]
  # The gain goal is checked against baselines only, not against ablations.
  only_bad = targets.targets({"test": out}, None, 0.2, baselines={"bad"})
  assert [t["goal"] for t in only_bad] == ["mean Pearson >= 20 % over bad"]
  # A baseline without predictions for a set is a not-met row, never silently skipped.
  absent = targets.targets({"test": out}, None, 0.2, baselines=["bad", "cnn"])
  assert [(t["goal"], t["met"]) for t in absent] == [
      ("mean Pearson >= 20 % over bad", True), ("mean Pearson >= 20 % over cnn", False)]
  assert absent[1]["note"] == "cnn has no predictions for this set"
  # A run on other performances is refused, not silently intersected.
  fewer = good.subset(good.keys[:-4])
  with pytest.raises(common.ReportError, match="other performances"):
    scoring.evaluate(good, {"fewer": fewer}, None, resamples=10, seed=0)


def _baseline_from(source: pathlib.Path, target: pathlib.Path, noise: float) -> pathlib.Path:
  """A copy of a cross-validation whose folds predict the labels plus noise, named a CNN."""
  shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
  summary = json.loads((target / crossval.SUMMARY).read_text())
  summary["config"]["model"]["backbone"] = "cnn"
  (target / crossval.SUMMARY).write_text(json.dumps(summary))
  rng = np.random.default_rng(0)
  for fold in target.iterdir():
    for path in (fold / rundir.PREDICTIONS).glob("*.npz") if fold.is_dir() else []:
      p = predictions.load(path)
      dataclasses.replace(p, predictions=p.labels + noise * rng.normal(size=p.labels.shape)
                          ).save(path)
  return target


@pytest.mark.slow
def test_cli_writes_markdown_html_json_and_figures(crossval_dir, train_shards, tmp_path):
  baseline = _baseline_from(crossval_dir, tmp_path / "cnn", noise=0.02)
  corpus = train_shards["percepiano"].parent / "corpus" / "percepiano"
  midi = sorted((corpus / "virtuoso" / "data" / "all_2rounds").glob("*.mid"))[0]
  out = tmp_path / "report"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.report", f"--workdir={crossval_dir}", f"--compare={baseline}",
       f"--percepiano_dir={corpus}", f"--output_dir={out}", "--resamples=300",
       "--ceiling_splits=10", f"--attention_audio={midi}", "--target_pearson=0.7",
       "--target_gain=0.2"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "report.md" in proc.stdout
  data = json.loads((out / "report.json").read_text())
  assert set(data["evaluations"]) == {"out_of_fold", "test"}
  oof = data["evaluations"]["out_of_fold"]
  # The near-perfect "CNN" beats the tiny AST: negative differences.
  assert oof["compare"]["CNN baseline"]["rows"]["mean"]["difference"] < 0
  assert oof["rows"]["mean"]["of_ceiling"] == pytest.approx(
      oof["rows"]["mean"]["pearson"] / oof["rows"]["mean"]["ceiling"])
  assert oof["ceiling"]["performances"] == oof["performances"]
  md = (out / "report.md").read_text()
  for text in ("By task group", "Per dimension", "Δ vs CNN baseline", "Published anchors",
               "0.397", "0.285", "0.537", "Human ceiling", "Targets", "Not met:", "timing_stability",
               "÷ ceiling"):
    assert text in md, text
  # Each published anchor says what it is: the withdrawn one, and folds looser than ours.
  anchors = md[md.index("## Published anchors"):].split("\n\n")[1]
  assert "| 0.537 | withdrawn by its author for fold leakage" in anchors
  assert "group clips by passage segment, not movement" in anchors
  html = (out / "report.html").read_text()
  assert html.count("data:image/png;base64,") == len(data["figures"]) >= 6
  assert ".png'" not in html.replace("data:image/png", "")  # nothing linked from outside
  for figure in data["figures"]:
    image = matplotlib.image.imread(out / figure)
    assert image.shape[0] > 100 and image.std() > 0.01, figure
  assert any("attention" in f for f in data["figures"])


@pytest.mark.slow
def test_cli_errors_are_one_line(crossval_dir, tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "eval.report", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
  missing = run(f"--workdir={tmp_path / 'nothing'}")
  assert missing.returncode == 1 and "does not exist" in missing.stderr
  fold = run(f"--workdir={crossval_dir}", f"--compare={crossval_dir / 'fold0'}",
             "--names=cv,fold0", f"--output_dir={tmp_path}", "--resamples=10")
  assert fold.returncode == 1 and "no out_of_fold or test predictions" in fold.stderr
  assert "Traceback" not in missing.stderr + fold.stderr


def test_a_zero_ceiling_gives_no_ratio_instead_of_dividing_by_zero():
  from eval import ceiling
  p = _predictions(3, 0.1)
  zero = np.zeros(19)
  flat = ceiling.Ceiling(split_half=zero, reliability=zero, split_half_within=zero,
                         reliability_within=zero, performances=48,
                         raters_per_performance=(5.0, 6.0, 7.0),
                         listeners_per_performance=(4.0, 5.0, 6.0), splits=2)
  out = scoring.evaluate(p, {}, flat, resamples=50, seed=0)
  assert out["rows"]["mean"]["ceiling"] == 0 and np.isnan(out["rows"]["mean"]["of_ceiling"])


def _fake_crossval(root: pathlib.Path, p: predictions.Predictions, folds_done: list[int],
                   test: bool, backbone: str = "ast") -> pathlib.Path:
  """An train.crossval directory as the CLI leaves it: summary, finished runs' results and
  predictions (fold k predicts its own passages; the test run all of `p`)."""
  config = {"task": "finetune", "model": {"backbone": backbone, "head": "grouped"},
            "init": {"checkpoint": ""}, "size": "tiny"}
  (root).mkdir(parents=True)
  # The summary as train.crossval writes it: every fold listed, finished or not.
  (root / crossval.SUMMARY).write_text(json.dumps({
      "split": "piece", "folds": [0, 1], "config": config,
      "runs": {str(k): {"finished": k in folds_done} for k in (0, 1)}}))
  halves = {0: p.subset(p.keys[: len(p.keys) // 2]), 1: p.subset(p.keys[len(p.keys) // 2:])}
  runs = {k: dataclasses.replace(halves[k], split=f"piece/fold{k}") for k in folds_done}
  if test:
    runs["test"] = dataclasses.replace(p, split="piece/test")
  for k, part in runs.items():
    directory = crossval.fold_dir(root, k)
    part.save(predictions.path_for(directory, part.step))
    (directory / "result.json").write_text(json.dumps(
        {"status": "finished", "step": part.step, "total_steps": part.step}))
  return root


def test_partial_cross_validations_report_what_is_finished(tmp_path):
  p = _predictions(5, 0.1)
  full = sources.load_source(_fake_crossval(tmp_path / "full", p, [0, 1], test=True))
  assert set(full.evaluations) == {"out_of_fold", "test"}
  only_test = sources.load_source(_fake_crossval(tmp_path / "ablation", p, [], test=True))
  assert set(only_test.evaluations) == {"test"}
  one_fold = sources.load_source(_fake_crossval(tmp_path / "one", p, [1], test=True))
  assert set(one_fold.evaluations) == {"test"}  # out of fold needs every fold
  # Folds under way are pending; folds never started (the test set alone) were not run.
  assert (one_fold.pending, one_fold.not_run) == (("out_of_fold",), ())
  assert (only_test.pending, only_test.not_run) == ((), ("out_of_fold",))
  with pytest.raises(common.ReportError, match="no finished evaluation"):
    sources.load_source(_fake_crossval(tmp_path / "none", p, [0], test=False))
  # A test-only ablation is compared on the test set and named as absent out of fold.
  noisy = dataclasses.replace(p, predictions=p.labels + 0.3 * np.random.default_rng(1).normal(
      size=p.labels.shape))
  _fake_crossval(tmp_path / "cnn", noisy, [0, 1], test=True, backbone="cnn")
  out = build.build(tmp_path / "full", [tmp_path / "ablation", tmp_path / "cnn"],
                     names=["main", "ablation", "cnn"], output_dir=tmp_path / "report",
                     resamples=50, target_gain=0.2, notes=["Pending: the flat-head run."])
  oof, test = out["evaluations"]["out_of_fold"], out["evaluations"]["test"]
  assert set(oof["compare"]) == {"cnn"} and oof["not_compared"] == ["ablation"]
  assert set(test["compare"]) == {"ablation", "cnn"} and test["not_compared"] == []
  assert {t["goal"] for t in out["targets"]} == {"mean Pearson >= 20 % over cnn"}
  md = (tmp_path / "report" / "report.md").read_text()
  assert "Pending: the flat-head run." in md
  assert "Not compared on this set (no predictions for it): ablation." in md
  assert "Not run, so not in this report: cross-validation, out of fold (ablation)." in md
  assert "Not finished yet" not in md
  cnn_gain = 100 * oof["compare"]["cnn"]["relative_mean_pearson_gain"]
  assert f"| mean Pearson >= 20 % over cnn | {cnn_gain:+.1f} % |" in md
  # Without a baseline the gain goal is reported as not met, never silently dropped.
  alone = build.build(tmp_path / "ablation", [], output_dir=tmp_path / "alone", resamples=20,
                       target_pearson=0.1, target_gain=0.2)
  gain = [t for t in alone["targets"] if "over the baselines" in t["goal"]]
  assert len(gain) == 1 and not gain[0]["met"]
  assert "Every target is met" not in (tmp_path / "alone" / "report.md").read_text()
  # A baseline sharing no set with the main run (its folds done, its test run not) is
  # named on every set and fails the gain goal; the report is still written.
  _fake_crossval(tmp_path / "cnn_folds", noisy, [0, 1], test=False, backbone="cnn")
  apart = build.build(tmp_path / "ablation", [tmp_path / "cnn_folds"], names=["a", "cnn"],
                       output_dir=tmp_path / "apart", resamples=20, target_gain=0.2)
  assert apart["evaluations"]["test"]["not_compared"] == ["cnn"]
  assert [(t["goal"], t["met"]) for t in apart["targets"]] == [
      ("mean Pearson >= 20 % over cnn", False)]


def _release_with_raw_ratings(root: pathlib.Path, keys) -> pathlib.Path:
  """A release holding only the raw per-rater answers (4 random raters per performance)."""
  raw = root / percepiano.RAW_RATINGS_FILE
  raw.parent.mkdir(parents=True)
  rng = np.random.default_rng(0)
  rows = [",".join(percepiano.RAW_HEADER)]
  for i, key in enumerate(keys):
    for rater in range(4):
      answers = rng.integers(1, 8, len(percepiano.RAW_HEADER) - 3)
      rows.append(",".join([str(rater), str(4 * i + rater), f"{key}.wav", *map(str, answers)]))
  raw.write_text("\n".join(rows) + "\n")
  return root


def test_a_set_the_raw_ratings_do_not_cover_has_no_ceiling_the_others_keep_theirs(tmp_path):
  p = _predictions(8, 0.1)  # 12 passages, rated
  root = _fake_crossval(tmp_path / "cv", p, [0, 1], test=False)
  unrated = _predictions(8, 0.1, n_passages=13)  # one passage the raters never heard
  test = dataclasses.replace(unrated, split="piece/test")
  test.save(predictions.path_for(crossval.fold_dir(root, crossval.TEST), test.step))
  (crossval.fold_dir(root, crossval.TEST) / "result.json").write_text(json.dumps(
      {"status": "finished", "step": test.step, "total_steps": test.step}))
  release = _release_with_raw_ratings(tmp_path / "release", p.keys)
  out = build.build(root, [], output_dir=tmp_path / "report", resamples=20,
                     percepiano_dir=str(release))
  assert out["evaluations"]["out_of_fold"]["ceiling"] is not None
  assert out["evaluations"]["test"]["ceiling"] is None
  assert "do not cover" in out["evaluations"]["test"]["ceiling_note"]
  md = (tmp_path / "report" / "report.md").read_text()
  assert "Not computed for held-out test set: the raw ratings do not cover" in md
  assert "÷ ceiling" in md.split("## Held-out test")[0]  # the covered set keeps its columns
  # Ratings that cover no evaluated set: the reason is given, not the file's name alone.
  elsewhere = _release_with_raw_ratings(tmp_path / "elsewhere", [f"Other_{k}" for k in p.keys])
  build.build(root, [], output_dir=tmp_path / "none", resamples=20,
               percepiano_dir=str(elsewhere))
  assert "Not computed: the raw ratings do not cover" in (
      tmp_path / "none" / "report.md").read_text()


def test_the_report_names_paths_relative_to_where_it_ran(tmp_path, monkeypatch):
  p = _predictions(7, 0.1)
  _fake_crossval(tmp_path / "out" / "ast", p, [], test=True)
  _release_with_raw_ratings(tmp_path / "release", p.keys)
  monkeypatch.chdir(tmp_path / "out")
  out = build.build(tmp_path / "out" / "ast", [], output_dir=tmp_path / "report",
                     resamples=20, percepiano_dir=str(tmp_path / "release"))
  assert out["runs"][0]["workdir"] == "ast"
  assert out["ceiling_source"] == f"../release/{percepiano.RAW_RATINGS_FILE}"
  assert out["evaluations"]["test"]["ceiling"] is not None
  text = (tmp_path / "report" / "report.md").read_text() + json.dumps(out)
  assert str(tmp_path) not in text


def test_many_comparisons_get_their_own_tables(tmp_path):
  p = _predictions(6, 0.1)
  names = ["main", "a", "b", "c"]
  _fake_crossval(tmp_path / "main", p, [], test=True)
  for i, name in enumerate(names[1:]):
    worse = dataclasses.replace(p, predictions=p.labels + (0.2 + 0.1 * i) * np.random.default_rng(
        i).normal(size=p.labels.shape))
    _fake_crossval(tmp_path / name, worse, [], test=True)
  out = build.build(tmp_path / "main", [tmp_path / n for n in names[1:]], names=names,
                     output_dir=tmp_path / "report", resamples=50)
  md = (tmp_path / "report" / "report.md").read_text()
  assert "Against each other run" in md and "Δ Pearson against each other run" in md
  assert "Δ vs a" not in md  # no difference columns squeezed into the main tables
  test = out["evaluations"]["test"]
  for name in names[1:]:
    gain = f"{100 * test['compare'][name]['relative_mean_pearson_gain']:+.1f} %"
    assert gain in md


def test_target_values_read_as_the_report_shows_them():
  assert targets.target_value({"kind": "gain", "value": 2.303}) == "+230.3 %"
  assert targets.target_value({"value": 0.4567}) == "0.457"
  assert targets.target_value({"kind": "gain", "value": None, "note": "no baseline"}) == \
      "no baseline"


def _offset_folds(seed: int, noise: float) -> predictions.Predictions:
  """Two folds whose models each rank their performances well but predict the other
  fold's label level: every fold's Pearson is positive, the pooled one negative."""
  p = _predictions(seed, 0.0)
  rng = np.random.default_rng(seed + 100)
  half = len(p.keys) // 2
  level = np.where(np.arange(len(p.keys))[:, None] < half, -0.2, 0.2)
  labels = p.labels + level
  guesses = p.labels - level + noise * rng.normal(size=p.labels.shape)
  return dataclasses.replace(p, labels=labels, predictions=guesses)


def test_out_of_fold_is_scored_fold_by_fold(tmp_path):
  good, worse = _offset_folds(7, 0.03), _offset_folds(7, 0.15)
  worse = dataclasses.replace(worse, labels=good.labels)
  _fake_crossval(tmp_path / "ast", good, [0, 1], test=False)
  _fake_crossval(tmp_path / "cnn", worse, [0, 1], test=False, backbone="cnn")
  out = build.build(tmp_path / "ast", [tmp_path / "cnn"], names=["ast", "cnn"],
                     output_dir=tmp_path / "report", resamples=200, target_pearson=0.5,
                     target_gain=0.2)
  oof = out["evaluations"]["out_of_fold"]
  assert oof["headline"] == "mean over folds" and oof["fold_sizes"] == [24, 24]
  half = len(good.keys) // 2

  def direct(p):  # each fold's mean Pearson over the 19 dimensions, by numpy
    return [np.mean([np.corrcoef(p.predictions[rows, d], p.labels[rows, d])[0, 1]
                     for d in range(19)]) for rows in (slice(0, half), slice(half, None))]

  folds = oof["fold_rows"]["mean"]
  assert folds["folds"] == pytest.approx(direct(good))
  assert folds["pearson"] == pytest.approx(np.mean(direct(good)))
  assert folds["pearson_low"] <= folds["pearson"] <= folds["pearson_high"]
  # Pooled, the level swap makes the correlation negative; fold by fold it is high.
  assert oof["rows"]["mean"]["pearson"] < 0 < 0.5 < folds["pearson"]
  cnn = oof["compare"]["cnn"]
  assert cnn["fold_rows"]["mean"]["pearson"] == pytest.approx(np.mean(direct(worse)))
  assert cnn["fold_rows"]["mean"]["difference"] == pytest.approx(
      folds["pearson"] - cnn["fold_rows"]["mean"]["pearson"])
  lead = cnn["fold_rows"]["mean"]
  assert lead["difference_low"] > 0 and lead["p_bootstrap"] < 0.05
  # The gain and the targets are judged on the fold means, not on the pooled rows.
  assert cnn["relative_mean_pearson_gain"] == pytest.approx(
      folds["pearson"] / cnn["fold_rows"]["mean"]["pearson"] - 1)
  met = {t["goal"]: t["met"] for t in out["targets"]}
  assert all(met[f"{g} Pearson >= 0.5"] for g in taxonomy.GROUPS)
  (gain,) = [t for t in out["targets"] if t.get("kind") == "gain"]
  assert gain["p"] == lead["p_bootstrap"]
  md = (tmp_path / "report" / "report.md").read_text()
  assert "By task group, fold by fold (the headline)" in md and "fold 1 (n=24)" in md
  assert "Relative gain in mean Pearson (mean over folds) over cnn: +" in md


def test_a_gain_over_a_baseline_with_no_positive_correlation_is_not_computed():
  assert scoring.relative_gain(0.3, -0.2) is None and scoring.relative_gain(0.3, 0.0) is None
  assert scoring.relative_gain(0.3, 0.2) == pytest.approx(0.5)
  good = _predictions(3, 0.05)
  anti = dataclasses.replace(good, predictions=-good.predictions)
  out = scoring.evaluate(good, {"anti": anti}, None, resamples=50, seed=0)
  assert out["compare"]["anti"]["relative_mean_pearson_gain"] is None
  (check,) = targets.targets({"test": out}, None, 0.2, ["anti"])
  assert not check["met"] and "not computable" in targets.target_value(check)


def test_a_run_that_can_never_share_a_set_is_refused(tmp_path):
  p = _predictions(4, 0.1)
  _fake_crossval(tmp_path / "cv", p, [0, 1], test=True)
  fold = dataclasses.replace(p, split="piece/fold0")
  run = tmp_path / "fold_run"
  fold.save(predictions.path_for(run, fold.step))
  (run / "result.json").write_text(json.dumps({"status": "finished", "step": 10,
                                               "total_steps": 10}))
  (run / "config.json").write_text(json.dumps(
      {"task": "finetune", "model": {"backbone": "cnn"}, "init": {}, "size": "tiny"}))
  with pytest.raises(common.ReportError, match="no out_of_fold or test predictions"):
    build.build(tmp_path / "cv", [run], output_dir=tmp_path / "report", resamples=20)


def test_fold_by_fold_comparisons_average_the_same_folds_and_refuse_other_folds():
  good, worse = _offset_folds(8, 0.03), _offset_folds(8, 0.15)
  worse = dataclasses.replace(worse, labels=good.labels)
  half = len(good.keys) // 2
  folds = [good.keys[:half], good.keys[half:]]
  # The baseline predicts a constant for dimension 0 in fold 0: no Pearson there, so
  # that dimension's difference is fold 1's alone (not fold 1's minus the mean of both).
  flat = worse.predictions.copy()
  flat[:half, 0] = 0.5
  worse = dataclasses.replace(worse, predictions=flat)
  out = scoring.evaluate(good, {"cnn": worse}, None, resamples=100, seed=0, folds=folds,
                        other_folds={"cnn": [folds[1], folds[0]]})  # order does not matter
  dim = taxonomy.DIMENSION_NAMES[0]
  mine, theirs = out["fold_rows"][dim], out["compare"]["cnn"]["fold_rows"][dim]
  assert np.isnan(theirs["folds"][0]) and theirs["pearson"] == pytest.approx(theirs["folds"][1])
  assert mine["pearson"] == pytest.approx(np.mean(mine["folds"]))
  assert theirs["difference"] == pytest.approx(mine["folds"][1] - theirs["folds"][1])
  assert np.isfinite(theirs["difference_low"]) and np.isfinite(out["fold_rows"]["mean"]["pearson"])
  with pytest.raises(common.ReportError, match="cross-validated on other folds"):
    scoring.evaluate(good, {"cnn": worse}, None, resamples=20, seed=0, folds=folds,
                    other_folds={"cnn": [good.keys[:10], good.keys[10:]]})
  with pytest.raises(common.ReportError, match="do not partition"):
    scoring.evaluate(good, {}, None, resamples=20, seed=0, folds=[good.keys[:10]])
  with pytest.raises(common.ReportError, match="too few"):
    scoring.evaluate(good, {}, None, resamples=20, seed=0,
                    folds=[good.keys[:2], good.keys[2:]])


def test_many_baselines_out_of_fold_are_tabled_on_the_fold_means(tmp_path):
  good = _offset_folds(9, 0.03)
  _fake_crossval(tmp_path / "ast", good, [0, 1], test=True)
  compare = []
  for name, noise in (("b1", 0.1), ("b2", 0.2), ("b3", 0.3)):
    other = dataclasses.replace(_offset_folds(9, noise), labels=good.labels)
    if name == "b3":  # a constant dimension in fold 0: its Pearson there is NaN
      other.predictions[: len(good.keys) // 2, 0] = 0.5
    compare.append(_fake_crossval(tmp_path / name, other, [0, 1], test=True, backbone="cnn"))
  # On the test set one baseline anti-correlates: its gain is not computable.
  anti = dataclasses.replace(good, predictions=-good.labels)
  (compare[0] / "test" / "predictions").rename(compare[0] / "test" / "old")
  anti.save(predictions.path_for(compare[0] / "test", anti.step))
  out = build.build(tmp_path / "ast", compare, names=["ast", "b1", "b2", "b3"],
                     output_dir=tmp_path / "report", resamples=50, target_gain=0.2)
  md = (tmp_path / "report" / "report.md").read_text()
  b2 = out["evaluations"]["out_of_fold"]["compare"]["b2"]
  assert f"{b2['fold_rows']['mean']['pearson']:.3f} [" in md  # the fold mean, not pooled
  tabled = md.split("Against each other run")[1][:2000]
  assert f"{b2['rows']['mean']['pearson']:.3f} [" not in tabled
  assert out["evaluations"]["test"]["compare"]["b1"]["relative_mean_pearson_gain"] is None
  assert "| b1 |" in md and "not computable (baseline Pearson <= 0 or undefined)" in md
  b1_test = [t for t in out["targets"] if t["evaluation"] == "test" and "b1" in t["goal"]]
  assert len(b1_test) == 1 and not b1_test[0]["met"] and "not computable" in b1_test[0]["note"]
  # report.json is strict JSON: no NaN (the unset p-values of Pearson goals are null).
  json.loads((tmp_path / "report" / "report.json").read_text(),
             parse_constant=lambda c: pytest.fail(f"{c} in report.json"))


def test_the_report_leads_with_every_model_against_the_ridge(tmp_path):
  """With a ridge among its runs the report opens with one table per set: each model's group
  and mean Pearson, CI, R², and its paired difference to the ridge, the ceiling last."""
  p = _predictions(11, 0.1)
  noisy = lambda seed, noise: dataclasses.replace(p, predictions=p.labels + noise * (  # noqa: E731
      np.random.default_rng(seed).normal(size=p.labels.shape)))
  _fake_crossval(tmp_path / "ast", p, [0, 1], test=True)
  _fake_crossval(tmp_path / "ridge", noisy(1, 0.2), [0, 1], test=True, backbone="ridge")
  _fake_crossval(tmp_path / "cnn", noisy(2, 0.4), [], test=True, backbone="cnn")
  release = _release_with_raw_ratings(tmp_path / "release", p.keys)
  out = build.build(tmp_path / "ast", [tmp_path / "ridge", tmp_path / "cnn"],
                     names=["ast", "ridge", "cnn"], output_dir=tmp_path / "report",
                     resamples=200, percepiano_dir=str(release))
  board = out["leaderboard"]
  assert set(board) == {"out_of_fold", "test"}
  test = board["test"]["models"]
  assert set(test) == {"ast", "ridge", "cnn"} and set(board["out_of_fold"]["models"]) == {
      "ast", "ridge"}  # the CNN ran the test set alone
  assert test["ridge"]["vs_ridge"] is None and test["ridge"]["backbone"] == "ridge"
  for name in ("ast", "cnn"):
    delta = test[name]["vs_ridge"]
    assert delta["delta"] == pytest.approx(test[name]["mean"] - test["ridge"]["mean"])
    assert delta["low"] <= delta["delta"] <= delta["high"]
  assert test["ast"]["vs_ridge"]["delta"] > 0 > test["cnn"]["vs_ridge"]["delta"]
  assert board["test"]["ceiling"]["mean"] == pytest.approx(
      out["evaluations"]["test"]["rows"]["mean"]["ceiling"])
  md = (tmp_path / "report" / "report.md").read_text()
  first = md.index("## ")
  assert md[first:].startswith("## All models against the ridge")
  table = md[first:md.index("\n## ", first)]
  held_out = table[table.index("### held-out test set"):]
  lines = held_out.split("\n\n")[1].splitlines()  # the table under the heading
  assert [line.split(" | ")[0] for line in lines[2:]] == [
      "| ridge", "| ast", "| cnn", "| human ceiling", "| training-side mean"]  # by mean
  # A constant never beats the held-out side's own mean: R² <= 0 (0 here, where the test
  # labels are the folds' own).
  assert board["test"]["r2_of_training_mean"] <= 1e-12
  assert f"| {board['test']['r2_of_training_mean']:.2f} |".replace("-0.00", "0.00") in \
      lines[-1].replace("-0.00", "0.00")
  assert f"{test['ast']['vs_ridge']['delta']:+.3f}" in lines[3]
  # Without a ridge there is no such table.
  alone = build.build(tmp_path / "ast", [tmp_path / "cnn"], names=["ast", "cnn"],
                       output_dir=tmp_path / "alone", resamples=20)
  assert alone["leaderboard"] is None
  assert "All models against the ridge" not in (tmp_path / "alone" / "report.md").read_text()


def test_r2_of_the_training_mean_is_the_offset_between_sides():
  """Known answer: fold A's labels are 0 and 2 (mean 1), fold B's 2 and 4 (mean 3). Predicting
  A by B's mean costs ((0-3)² + (2-3)²)/2 = 5 against A's variance 1: R² = -4, and B alike. A
  test set of 1 and 3 predicted by both folds' mean 2: R² = 0."""
  d = taxonomy.NUM_DIMENSIONS
  def side(keys, values):
    labels = np.repeat(np.asarray(values, float)[:, None], d, axis=1)
    return predictions.Predictions(keys=tuple(keys), predictions=np.zeros_like(labels),
                                   labels=labels, mask=np.ones_like(labels, bool),
                                   windows=np.ones(len(keys), int))
  folds = (("a0", "a1"), ("b0", "b1"))
  everyone = side(["a0", "a1", "b0", "b1"], [0, 2, 2, 4])
  assert summary._training_mean_r2(everyone, folds) == pytest.approx(-4.0)
  assert summary._training_mean_r2(everyone, folds, held=side(["t0", "t1"], [1, 3])) == \
      pytest.approx(0.0)
  # A masked label is left out of the training mean: B with its 4 unrated has mean 2, and A
  # predicted by 2 costs ((0-2)² + (2-2)²)/2 = 2 against A's variance 1: R² = -1.
  b = side(["b0", "b1"], [2, 4])
  b.mask[1] = False
  assert summary._training_mean_r2(b, None, held=side(["a0", "a1"], [0, 2])) == \
      pytest.approx(-1.0)
