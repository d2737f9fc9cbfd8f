"""train.crossval: every fold trained and scored, out-of-fold predictions pooled, resumable."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from train import crossval, metrics, predictions

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture()
def run(small_finetune, jax_env):
  def run(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "train.crossval", *small_finetune, *args],
                          cwd=REPO, env=jax_env, capture_output=True, text=True, timeout=timeout,
                          check=False)
  return run


@pytest.mark.slow
def test_out_of_fold_predictions_cover_each_training_performance_once(crossval_dir, train_shards):
  summary = crossval.read_summary(crossval_dir)
  assert summary["split"] == "piece" and summary["folds"] == [0, 1]
  assert all(r["finished"] for r in summary["runs"].values()) and set(summary["runs"]) == {
      "0", "1", "test"}
  table = json.loads((train_shards["percepiano"] / "metadata.json").read_text())["splits"]["piece"]
  parts = crossval.fold_predictions(crossval_dir)
  assert [set(p.keys) for p in parts] == [
      {k for k, v in table.items() if v == f"fold{f}"} for f in summary["folds"]]
  oof = crossval.pool(parts, summary["split"])
  assert oof.split == "piece/out-of-fold" and sorted(oof.keys) == sorted(k for k, v in table.items() if v.startswith("fold"))
  # Each fold's predictions come from the model that validated on that fold.
  fold0 = predictions.load_selected(crossval_dir / "fold0")
  assert set(fold0.keys) == {k for k, v in table.items() if v == "fold0"}
  np.testing.assert_array_equal(oof.subset(fold0.keys).predictions, fold0.predictions)
  pooled = metrics.per_dimension("pearson", oof.predictions, oof.labels, oof.mask)
  assert summary["out_of_fold"]["pearson/mean"] == pytest.approx(
      metrics.summarise(pooled)["pearson/mean"])
  test = predictions.load_selected(crossval_dir / "test")
  assert set(test.keys) == {k for k, v in table.items() if v == "test"}
  assert summary["per_fold"]["pearson/mean"]["std"] >= 0


@pytest.mark.slow
def test_a_rerun_skips_finished_folds_and_a_changed_config_is_refused(crossval_dir, train_shards,
                                                                      run):
  before = (crossval_dir / "fold0" / "result.json").read_text()
  proc = run([f"--workdir={crossval_dir}", f"--config.data_dir={train_shards['percepiano']}",
               "--config.num_steps=6", "--config.eval_every_steps=3", "--test"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "fold0: finished earlier, skipped" in proc.stderr
  assert (crossval_dir / "fold0" / "result.json").read_text() == before
  changed = run([f"--workdir={crossval_dir}", f"--config.data_dir={train_shards['percepiano']}",
                  "--config.num_steps=7"])
  assert changed.returncode == 1 and "another split or config" in changed.stderr


@pytest.mark.slow
def test_folds_can_run_in_pieces(train_shards, run, tmp_path):
  common = [f"--workdir={tmp_path}", f"--config.data_dir={train_shards['percepiano']}",
            "--config.num_steps=2", "--split=performer"]
  first = run([*common, "--folds=1"])
  assert first.returncode == 0, first.stderr[-3000:]
  summary = crossval.read_summary(tmp_path)
  assert summary["runs"]["1"]["finished"] and "out_of_fold" not in summary
  with pytest.raises(crossval.CrossValidationError, match="not finished"):
    crossval.fold_predictions(tmp_path)
  bad = run([*common, "--folds=5"])
  assert bad.returncode == 1 and "not folds of the performer split" in bad.stderr


@pytest.mark.slow
def test_the_test_set_alone(train_shards, run, tmp_path):
  common = [f"--workdir={tmp_path}", f"--config.data_dir={train_shards['percepiano']}",
            "--config.num_steps=2"]
  nothing = run([*common, "--folds=none"])
  assert nothing.returncode == 1 and "runs nothing without --test" in nothing.stderr
  proc = run([*common, "--folds=none", "--test"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = crossval.read_summary(tmp_path)
  assert summary["runs"]["test"]["finished"] and "out_of_fold" not in summary
  assert not any(r["finished"] for k, r in summary["runs"].items() if k != "test")
  assert not (tmp_path / "fold0").exists()
  assert crossval.available_sets(tmp_path) == {"out_of_fold": False, "test": True}
  assert predictions.load_selected(tmp_path / "test").split == "piece/test"


def test_folds_flag():
  assert crossval.parse_folds("") is None and crossval.parse_folds("none") == []
  assert crossval.parse_folds("0,2") == [0, 2]
  with pytest.raises(crossval.CrossValidationError, match="integers or 'none'"):
    crossval.parse_folds("0,x")


def test_an_unreadable_summary_is_a_clear_error(tmp_path):
  (tmp_path / crossval.SUMMARY).write_text('{"split": "pie')  # cut mid-write (older versions)
  with pytest.raises(crossval.CrossValidationError, match="not valid JSON.*delete it"):
    crossval.read_summary(tmp_path)
