"""The training recipe: evaluation during training, early stopping, selection on the
validation fold, the test run's length chosen from the folds, and the feed-forward model on
the ridge's clip statistics (`backbone=clip_stats`) that checks the whole loop."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from eval import loading
from pipelines import input_pipeline
from train import crossval, metric_writer, predictions, rundir, statistics_table, trainer

REPO = pathlib.Path(__file__).resolve().parent.parent

# The feed-forward model on clip statistics, evaluated every epoch; min_delta 1.0 means no
# evaluation can count as an improvement, so patience 1 stops at the second evaluation:
# a known answer for where the run ends and what it selects.
CLIP_STATS = ["--config=train/configs/finetune.py:tiny", "--config.model.backbone=clip_stats",
              "--config.batch_size=4", "--config.microbatch_size=4", "--config.eval_batch_size=4",
              "--config.num_epochs=20", "--config.eval_every_epochs=1",
              "--config.input.augmented=False", "--config.log_every_steps=1"]
STOP_AT_SECOND = ["--config.early_stopping.patience=1", "--config.early_stopping.min_delta=1.0"]


def run(module, *args, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900, check=False)


# ----------------------------------------------------------------------------- units

def test_early_stopping_counts_evaluations_without_improvement():
  s = trainer.EarlyStopping("val/m", "max", patience=2, min_delta=0.01)
  for step, value in [(10, 0.1), (20, 0.3), (30, 0.305), (40, float("nan"))]:
    s.update(step, {"val/m": value})
  # 0.305 is within min_delta of 0.3 and NaN never improves: two evaluations without gain.
  assert (s.best, s.best_step, s.since_best, s.stop) == (0.3, 20, 2, True)
  low = trainer.EarlyStopping("val/loss", "min", patience=3, min_delta=0.0)
  for step, value in [(1, 2.0), (2, 1.0), (3, 1.5)]:
    low.update(step, {"val/loss": value})
  assert (low.best_step, low.stop) == (2, False)
  # Without a metric every evaluation is the selected one and patience never runs out.
  last = trainer.EarlyStopping("", "max", patience=0, min_delta=0.0)
  last.update(5, {"val/x": 1.0})
  last.update(9, {"val/x": 0.0})
  assert (last.best_step, last.stop) == (9, False)


def test_early_stopping_replays_the_log_up_to_the_restored_step(tmp_path):
  history = [{"step": 5, "train/loss": 1.0}, {"step": 10, "val/m": 0.2},
             {"step": 20, "val/m": 0.5}, {"step": 20, "val/m": 0.1},  # rewritten on resume
             {"step": 30, "val/m": 0.9}]
  s = trainer.EarlyStopping("val/m", "max", patience=5, min_delta=0.0)
  (tmp_path / rundir.METRICS).write_text("".join(json.dumps(e) + "\n" for e in history))
  s.replay(trainer.logged_evaluations(tmp_path), up_to_step=25)
  # The last entry per step wins; step 30 lies past the restored checkpoint.
  assert (s.best, s.best_step, s.since_best, s.last_step) == (0.2, 10, 1, 20)


def test_finished_covers_runs_that_end_early():
  assert rundir.finished({"status": "finished", "step": 40, "total_steps": 100,
                          "stop": "early_stopping"})
  assert rundir.finished({"status": "finished", "step": 100, "total_steps": 100})  # older result
  assert not rundir.finished({"status": "finished", "step": 40, "total_steps": 100})
  assert not rundir.finished({"status": "preempted", "step": 40, "total_steps": 100,
                              "stop": "sigterm"})


def test_rows_stream_is_seeded_per_epoch_host_blocked_and_resumable():
  n = 10
  examples = {"features": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
              "labels": np.zeros((n, 19), np.float32), "label_mask": np.ones((n, 19), bool)}
  config = input_pipeline.InputConfig(batch_size=4, seed=7, read_threads=1,
                                      prefetch_buffer_size=1, spec_augment=False)

  def batches(cfg, count, iterator=None):
    iterator = iterator or iter(input_pipeline.rows(examples, cfg))
    return [next(iterator)["features"][:, 0] for _ in range(count)], iterator

  first, _ = batches(config, 5)
  again, _ = batches(config, 5)
  np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
  rows = np.concatenate(first)
  assert sorted(rows[:n]) == list(range(n)) and sorted(rows[n:2 * n]) == list(range(n))
  other, _ = batches(input_pipeline.InputConfig(**{**config.__dict__, "seed": 8}), 5)
  assert not np.array_equal(np.concatenate(other), rows)
  # Two hosts with half the batch each rebuild the one-host batches row for row.
  halves = [batches(input_pipeline.InputConfig(**{**config.__dict__, "batch_size": 2,
                                                  "process_index": p, "process_count": 2}), 5)[0]
            for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([np.concatenate(b) for b in zip(*halves)]), rows)
  # The iterator state restores the position exactly.
  head, iterator = batches(config, 2)
  state = iterator.get_state()
  rest, _ = batches(config, 3, iterator)
  resumed = iter(input_pipeline.rows(examples, config))
  resumed.set_state(state)
  np.testing.assert_array_equal(np.concatenate(batches(config, 3, resumed)[0]),
                                np.concatenate(rest))
  # Evaluation: every row once, the last batch padded with weight 0.
  evaluated = list(input_pipeline.rows_evaluation(examples, config))
  assert [b["weight"].sum() for b in evaluated] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b["features"][:, 0][b["weight"] > 0]
                                                for b in evaluated]), np.arange(n))


def test_each_fold_is_reported_at_the_epoch_its_other_folds_selected(tmp_path):
  def fold(k, selected_epoch, steps_per_epoch, evaluated):
    directory = crossval.fold_dir(tmp_path, k)
    (directory / rundir.PREDICTIONS).mkdir(parents=True)
    for step in evaluated:
      (directory / rundir.PREDICTIONS / f"{step}.npz").touch()
    (directory / rundir.RESULT).write_text(json.dumps(
        {"status": "finished", "stop": "early_stopping", "selected_epoch": selected_epoch,
         "steps_per_epoch": steps_per_epoch}))

  fold(0, 4.0, 10.0, [10, 20, 30, 40, 50])
  fold(1, 1.0, 5.0, [5, 10, 15])
  fold(2, 3.0, 8.0, [8])
  steps = crossval.reported_steps(tmp_path, [0, 1, 2])
  # Fold 0: median(1, 3) = 2 epochs = step 20. Fold 1: median(4, 3) = 3.5 epochs = 17.5, and
  # the nearest evaluation is 15 (its last: it stopped before). Fold 2 evaluated once.
  assert steps == {0: 20, 1: 15, 2: None}


# ----------------------------------------------------------------------------- the trainer

def _val_history(workdir):
  return {e["step"]: e for e in metric_writer.read(workdir) if "val/pearson/mean" in e}


@pytest.mark.slow  # ~40 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_clip_stats_run_stops_early_selects_and_resumes_stopped(job_with_audio, jax_env,
                                                                tmp_path):
  work = tmp_path / "run"
  args = [*CLIP_STATS, *STOP_AT_SECOND, f"--workdir={work}",
          f"--config.data_dir={job_with_audio}", f"--config.clip_statistics_cache={tmp_path / 's.npz'}"]
  proc = run("train.main", *args, env=jax_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = rundir.read_result(work)
  spe = result["steps_per_epoch"]
  every = max(1, round(spe))
  assert result["stop"] == "early_stopping" and rundir.finished(result)
  # Evaluated at 1 and 2 epochs; nothing improves by 1.0, so the first is selected.
  assert sorted(_val_history(work)) == [every, 2 * every] and result["step"] == 2 * every
  assert result["selected_step"] == every and result["total_steps"] > result["step"]
  assert math.isclose(result["selected_epoch"], every / spe, rel_tol=1e-3)
  selected = predictions.load_selected(work)
  assert selected.step == every and sorted(predictions.steps(work)) == [every, 2 * every]
  assert result["metrics"]["val/pearson/mean"] == pytest.approx(
      _val_history(work)[every]["val/pearson/mean"])
  # One row per validation performance; the clip statistics came from the job's audio.
  table = statistics_table.load(job_with_audio, tmp_path / "s.npz")
  meta = json.loads((job_with_audio / "metadata.json").read_text())
  fold0 = sorted(k for k, v in meta["splits"][meta["splits"]["shards_follow"]].items()
                 if v == "fold0")
  assert list(selected.keys) == fold0 and set(fold0) <= set(table.keys)
  assert np.all(selected.windows == 1)
  # Cut after the stop (no result.json): the rerun restores, replays the log, and stops
  # at once with the same selection and no further step.
  (work / rundir.RESULT).unlink()
  lines = (work / rundir.METRICS).read_text()
  again = run("train.main", *args, env=jax_env)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed = rundir.read_result(work)
  assert (resumed["stop"], resumed["step"], resumed["selected_step"]) == \
      ("early_stopping", 2 * every, every)
  assert (work / rundir.METRICS).read_text() == lines
  # The model reads statistics, not recordings: inference says so.
  with pytest.raises(loading.RunError, match="clip_stats"):
    loading.load(work)


@pytest.mark.slow  # ~45-90 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_test_run_trains_as_long_as_the_folds_selected(job_with_audio, jax_env, tmp_path):
  work = tmp_path / "cv"
  common = [*CLIP_STATS, *STOP_AT_SECOND, f"--workdir={work}",
            f"--config.data_dir={job_with_audio}",
            f"--config.clip_statistics_cache={tmp_path / 's.npz'}"]
  # The test run's length comes from the folds: alone, it is refused.
  alone = run("train.crossval", *common, "--folds=none", "--test", env=jax_env)
  assert alone.returncode != 0 and "run folds first" in alone.stderr, alone.stderr[-2000:]
  assert "Traceback" not in alone.stderr
  proc = run("train.crossval", *common, "--test", env=jax_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = crossval.read_summary(work)
  epochs = [summary["runs"][str(k)]["selected_epoch"] for k in summary["folds"]]
  reported = crossval.reported_steps(work, summary["folds"])
  for k in summary["folds"]:
    entry = summary["runs"][str(k)]
    assert entry["reported_step"] == (reported[k] or entry["selected_step"])
  assert "per_fold_own_selection" in summary
  test_config = json.loads((work / "test" / rundir.CONFIG).read_text())
  assert test_config["stop_after_epochs"] == pytest.approx(float(np.median(epochs)))
  assert test_config["eval_every_epochs"] == 0 and test_config["early_stopping"]["patience"] == 0
  test = rundir.read_result(work / "test")
  assert test["stop"] == "stop_after_epochs"
  assert test["step"] == math.ceil(test_config["stop_after_epochs"] * test["steps_per_epoch"])
  # Scored once, at its last step.
  assert predictions.steps(work / "test") == [test["step"]] == [test["selected_step"]]
