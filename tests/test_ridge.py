"""train.ridge: the closed-form bar — the fit's known answers, grouped inner folds, and the
whole path on a real PercePiano job's output (Beam job -> statistics -> runs -> eval.report)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from train import crossval, predictions, ridge_fit, statistics_table

REPO = pathlib.Path(__file__).resolve().parent.parent


def planted(n=240, features=30, groups=24, noise=0.1, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, features)) * rng.uniform(0.1, 10, features)  # unequal scales
  w = rng.normal(size=(features, 19))
  y = (x / x.std(0)) @ w + noise * rng.normal(size=(n, 19))
  return x, y, np.repeat(np.arange(groups), n // groups)


def test_recovers_a_planted_linear_relation():
  x, y, g = planted()
  model = ridge_fit.fit(x[:200], y[:200], np.ones_like(y[:200], bool), g[:200])
  pred = model.predict(x[200:])
  r = [np.corrcoef(pred[:, d], y[200:, d])[0, 1] for d in range(19)]
  assert min(r) > 0.99
  assert model.alpha <= 10.0  # clean signal: little shrinkage


def test_pure_noise_is_shrunk_to_the_mean():
  x, _, g = planted()
  y = np.random.default_rng(1).normal(size=(240, 19))
  model = ridge_fit.fit(x, y, np.ones_like(y, bool), g)
  assert model.alpha == max(ridge_fit.ALPHAS)
  assert np.abs(model.predict(x) - y.mean(0)).max() < 0.5 * np.abs(y - y.mean(0)).max()


def test_a_block_of_noise_columns_gets_a_small_weight():
  """Fusion: 10 informative columns, then 200 pure-noise ones. One penalty for all lets the
  noise block dilute the fit; the second block's weight, chosen by the inner folds, shrinks
  it, and the held-out fit is better for it."""
  x, y, g = planted(n=480, features=10, groups=48, noise=1.0)
  noise = np.random.default_rng(2).normal(size=(480, 200))
  fused = np.concatenate([x, noise], axis=1)
  mask = np.ones_like(y[:400], bool)
  plain = ridge_fit.fit(fused[:400], y[:400], mask, g[:400])
  blocked = ridge_fit.fit(fused[:400], y[:400], mask, g[:400], second_block=10)
  assert plain.block_weight is None and blocked.block_weight < 1.0
  assert blocked.block_weight in ridge_fit.BLOCK_WEIGHTS

  def held_out(model):
    pred = model.predict(fused[400:])
    return np.mean([np.corrcoef(pred[:, d], y[400:, d])[0, 1] for d in range(19)])
  assert held_out(blocked) > held_out(plain) + 0.01
  # The weight is folded into the scale: predicting needs nothing else.
  np.testing.assert_allclose(blocked.scale[10:] * blocked.block_weight,
                             fused[:400, 10:].std(0), rtol=1e-9)


def test_inner_folds_keep_groups_whole_and_balanced():
  groups = np.repeat(np.array(list("abcdefghij")), [1, 2, 3, 4, 5, 5, 4, 3, 2, 1])
  folds = ridge_fit.group_folds(groups, 4, seed=3)
  for g in np.unique(groups):
    assert len(set(folds[groups == g])) == 1
  sizes = np.bincount(folds, minlength=4)
  assert sizes.min() >= 5 and sizes.max() - sizes.min() <= 5
  np.testing.assert_array_equal(folds, ridge_fit.group_folds(groups, 4, seed=3))
  assert not np.array_equal(folds, ridge_fit.group_folds(groups, 4, seed=4))
  with pytest.raises(ridge_fit.RidgeError, match="cannot fill"):
    ridge_fit.group_folds(np.array(["a", "b"]), 3, seed=0)


def test_one_group_cannot_choose_the_regularisation():
  x, y, _ = planted()
  with pytest.raises(ridge_fit.RidgeError, match="one group"):
    ridge_fit.fit(x, y, np.ones_like(y, bool), np.zeros(len(x)))


def run_cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "train.ridge", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def test_cross_validation_and_test_set_as_the_report_reads_them(job_with_audio, tmp_path):
  work = tmp_path / "ridge"
  proc = run_cli(f"--data_dir={job_with_audio}", f"--workdir={work}", "--test", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "out of fold, mean over folds" in proc.stdout
  summary = crossval.read_summary(work)
  assert summary["config"]["model"]["backbone"] == "ridge"
  assert crossval.available_sets(work) == {"out_of_fold": True, "test": True}
  metadata = json.loads((job_with_audio / "metadata.json").read_text())
  table = metadata["splits"]["piece"]
  # Every training performance is predicted once, by the fold that held it out.
  pooled = crossval.pool(crossval.fold_predictions(work), "piece")
  assert sorted(pooled.keys) == sorted(k for k, v in table.items() if v != "test")
  test = predictions.load_selected(work / "test")
  assert sorted(test.keys) == sorted(k for k, v in table.items() if v == "test")
  assert np.all(np.isfinite(test.predictions))
  # A rerun finds every run finished and changes nothing.
  before = (work / "test" / "predictions" / "1.npz").read_bytes()
  again = run_cli(f"--data_dir={job_with_audio}", f"--workdir={work}", "--test", "--workers=1")
  assert again.returncode == 0 and (work / "test" / "predictions" / "1.npz").read_bytes() == before
  # Another split in the same directory is refused.
  other = run_cli(f"--data_dir={job_with_audio}", f"--workdir={work}", "--split=performer")
  assert other.returncode != 0 and "another split or config" in other.stderr
  report = subprocess.run(
      [sys.executable, "-m", "eval.report", f"--workdir={work}", f"--output_dir={tmp_path / 'r'}",
       "--resamples=100"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert report.returncode == 0, report.stderr[-2000:]
  assert "ridge on clip statistics" in (tmp_path / "r" / "report.md").read_text()


def test_the_statistics_are_cached_and_recomputed_for_other_shards(job_with_audio, tmp_path):
  cache = tmp_path / "stats.npz"
  first = statistics_table.load(job_with_audio, cache)
  stamp = cache.stat().st_mtime_ns
  second = statistics_table.load(job_with_audio, cache)
  assert cache.stat().st_mtime_ns == stamp and second.keys == first.keys
  np.testing.assert_array_equal(second.x, first.x)
  with np.load(cache) as f:
    stale = {k: f[k] for k in f.files}
  stale["sources"] = np.asarray(["other"], str)
  np.savez(cache, **stale)
  third = statistics_table.load(job_with_audio, cache)
  np.testing.assert_array_equal(third.x, first.x)
  with np.load(cache) as f:
    assert list(f["sources"]) != ["other"]


def test_shards_without_audio_are_a_clear_error(train_shards, tmp_path):
  proc = run_cli(f"--data_dir={train_shards['percepiano']}", f"--workdir={tmp_path}", "--test")
  assert proc.returncode != 0
  assert "holds no audio shards" in proc.stderr and "Traceback" not in proc.stderr


def test_oracle_notes_ridge_reads_the_stored_note_targets(job_with_audio, tmp_path):
  work = tmp_path / "oracle"
  proc = run_cli(f"--data_dir={job_with_audio}", f"--workdir={work}", "--features=midi_notes",
                 "--test", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = crossval.read_summary(work)
  assert summary["config"]["model"]["backbone"] == "oracle"
  assert summary["config"]["ridge"]["statistics"] == "midi_notes"
  table = statistics_table.load(job_with_audio, work / "note_statistics.npz",
                                features="midi_notes")
  assert table.x.shape[1] == 39 and np.all(np.isfinite(table.x))
  assert np.all(np.isfinite(predictions.load_selected(work / "test").predictions))
  # A performance without note targets (audio read from a WAV) is a clear error.
  with pytest.raises(statistics_table.StatisticsError, match="k has no note targets"):
    statistics_table._note_statistics("k", {"num_notes": -1}, {})


@pytest.mark.slow  # ~50 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_the_benchmark_summary_scores_every_model_against_the_ridge(job_with_audio, tmp_path):
  """eval.report.summary on a runs directory: the ridge and the oracle on one split, a
  model that has not finished listed as pending, and each set's paired difference equal
  to the two models' own means."""
  runs = tmp_path / "runs" / "piece"
  for name, extra in (("ridge", []), ("oracle_notes", ["--features=midi_notes"])):
    proc = run_cli(f"--data_dir={job_with_audio}", f"--workdir={runs / name}", "--test",
                   "--workers=1", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
  unfinished = runs / "ast"
  unfinished.mkdir()
  (unfinished / crossval.SUMMARY).write_text((runs / "ridge" / crossval.SUMMARY).read_text())
  out = tmp_path / "summary.json"
  proc = subprocess.run([sys.executable, "-m", "eval.report.summary",
                         f"--runs_dir={tmp_path / 'runs'}", f"--output={out}", "--resamples=200",
                         "--pairs=oracle-notes:ridge,oracle-notes:absent"],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.loads(out.read_text())
  assert set(summary) == {"about", "pending", "pairs", "piece/out_of_fold", "piece/test"}
  # A head-to-head pair is the same paired bootstrap as the bar's column (here the pair is
  # the oracle against the ridge itself); a pair naming a model not run is left out.
  assert set(summary["pairs"]) == {"piece/out_of_fold", "piece/test"}
  for key, compared in summary["pairs"].items():
    assert compared == {"oracle-notes vs ridge": summary[key]["oracle-notes"]["vs_ridge"]}
  assert list(summary["pending"]) == ["piece/ast"]
  for key in ("piece/out_of_fold", "piece/test"):
    ridge_row, oracle = summary[key]["ridge"], summary[key]["oracle-notes"]
    assert ridge_row["backbone"] == "ridge" and ridge_row["vs_ridge"] is None
    assert oracle["backbone"] == "oracle"
    assert oracle["vs_ridge"]["delta"] == pytest.approx(oracle["mean"] - ridge_row["mean"],
                                                        abs=1e-9)
    assert oracle["vs_ridge"]["low"] <= oracle["vs_ridge"]["delta"] <= oracle["vs_ridge"]["high"]
    assert 0 <= oracle["vs_ridge"]["p"] <= 1
    for row in (ridge_row, oracle):
      assert row["mean_ci"][0] <= row["mean"] <= row["mean_ci"][1]
      assert row["mean"] == pytest.approx(np.mean([row[g] for g in ("timing", "dynamics",
                                                                    "expression")]), abs=0.2)
      assert np.isfinite(row["r2"])
  assert summary["about"]["piece/out_of_fold"]["headline"] == "mean over folds"
  for key in ("piece/out_of_fold", "piece/test"):
    assert summary["about"][key]["r2_of_training_mean"] <= 0.0  # nothing beats the mean's own
  # A machine that reran part of the benchmark keeps an earlier summary's other models,
  # only while its ridge is the same bar.
  earlier = json.loads(out.read_text())
  earlier["piece/test"]["old-model"] = dict(earlier["piece/test"]["oracle-notes"], mean=0.9)
  old_pair = {"delta": 0.1, "low": 0.05, "high": 0.15, "p": 0.01}
  earlier["pairs"]["piece/test"]["old-model vs ridge"] = old_pair
  earlier_path = tmp_path / "earlier.json"
  earlier_path.write_text(json.dumps(earlier))

  def with_carry():
    return subprocess.run(
        [sys.executable, "-m", "eval.report.summary", f"--runs_dir={tmp_path / 'runs'}",
         f"--output={tmp_path / 'carried.json'}", "--resamples=200",
         f"--carry_from={earlier_path}", "--pairs=oracle-notes:ridge"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)

  proc = with_carry()
  assert proc.returncode == 0, proc.stderr[-2000:]
  carried = json.loads((tmp_path / "carried.json").read_text())
  assert carried["piece/test"]["old-model"]["mean"] == 0.9
  assert carried["about"]["carried"]["models"] == {"piece/test": ["old-model"],
                                                   "pairs/piece/test": ["old-model vs ridge"]}
  assert carried["pairs"]["piece/test"] == {**summary["pairs"]["piece/test"],
                                            "old-model vs ridge": old_pair}
  assert carried["piece/test"]["ridge"] == summary["piece/test"]["ridge"]
  earlier["piece/test"]["ridge"]["timing"] += 0.01
  earlier_path.write_text(json.dumps(earlier))
  proc = with_carry()
  assert proc.returncode != 0 and "piece/test: the ridge scored here differs" in proc.stderr
  earlier["piece/test"]["ridge"]["timing"] -= 0.01
  earlier["performer/test"] = earlier["piece/test"]
  earlier_path.write_text(json.dumps(earlier))
  proc = with_carry()
  assert proc.returncode != 0 and "performer/test: the earlier summary has it" in proc.stderr
  # Without a ridge there is nothing to compare against.
  (runs / "ridge" / crossval.SUMMARY).unlink()
  proc = subprocess.run([sys.executable, "-m", "eval.report.summary",
                         f"--runs_dir={tmp_path / 'runs'}", f"--output={out}", "--resamples=50"],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode != 0 and "exactly one ridge run" in proc.stderr


@pytest.mark.parametrize("pairs", ["probe-both", "probe-both:", "a:b:c"])
def test_a_malformed_pair_is_a_usage_error(tmp_path, pairs):
  proc = subprocess.run([sys.executable, "-m", "eval.report.summary", f"--runs_dir={tmp_path}",
                         f"--output={tmp_path / 's.json'}", f"--pairs={pairs}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0 and "--pairs takes A:B" in proc.stderr
  assert not (tmp_path / "s.json").exists()


def test_an_empty_transcription_is_an_error_naming_the_performance(tmp_path):
  from pipelines.audio import notes
  archive = tmp_path / "n.npz"
  notes.save_archive(archive, {"a": notes.Notes([[0.1, 0.5, 60, 80], [0.6, 0.9, 62, 70]],
                                                [[0.0, 1.0]]),
                               "b": notes.Notes(np.zeros((0, 4)), np.zeros((0, 2)))},
                     {"a": 1.0, "b": 1.0}, {})
  row, width = statistics_table._from_file("notes", archive)
  assert row("a").shape == (width,)
  with pytest.raises(statistics_table.StatisticsError, match="performance b: .*0 notes"):
    row("b")
  with pytest.raises(statistics_table.StatisticsError, match="no row of performance c"):
    row("c")


def test_one_alpha_needs_no_inner_folds():
  x, y, _ = planted()
  mask = np.ones_like(y, bool)
  one = ridge_fit.fit(x, y, mask, np.zeros(len(x), int), alphas=(10.0,))  # one group: no CV needed
  chosen = ridge_fit.fit(x, y, mask, np.repeat(np.arange(24), 10), alphas=(10.0, 1e4))
  assert one.alpha == 10.0 and one.inner_pearson == {}
  if chosen.alpha == 10.0:
    np.testing.assert_allclose(one.weights, chosen.weights)
  with pytest.raises(ridge_fit.RidgeError, match="one group"):
    ridge_fit.fit(x, y, mask, np.zeros(len(x), int), alphas=(10.0, 1e4))
