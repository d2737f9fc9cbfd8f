"""train.main / train.trainer end to end: the real CLI in subprocesses, real shards, real Orbax.

The default suite keeps the main run, best-checkpoint retention, the SIGKILL
resume and warm-started fine-tuning; SIGTERM, --resume, the NaN guard, config
errors, 8 devices and 2 processes are marked slow (`make test-slow`, which CI
runs too). Every run uses a very small encoder (64 wide, 2 layers) on 2.56 s windows so a
run takes seconds; the code paths are those of the full-size configs. Runs
share a persistent XLA compilation cache, so identical programs compile once.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from model import targets
from train import metric_writer, metrics, predictions, rundir

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 8

SMALL_ENCODER = ["--config.model.encoder.num_frames=256", "--config.model.encoder.width=64",
                 "--config.model.encoder.depth=2", "--config.model.encoder.heads=2",
                 "--config.model.encoder.mlp_dim=128"]


def pretrain_args(data_dir, workdir, *extra) -> list[str]:
  return ["--config=train/configs/pretrain.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", *SMALL_ENCODER, "--config.model.num_masked=48",
          f"--config.num_steps={STEPS}", "--config.batch_size=16", "--config.microbatch_size=8",
          "--config.eval_batch_size=8", "--config.log_every_steps=1",
          "--config.eval_every_steps=4", "--config.checkpoint.every_steps=1", *extra]


@pytest.fixture(scope="module")
def env(jax_env) -> dict[str, str]:
  return jax_env


def start(args, env, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def run(args, env, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def final_state(workdir: pathlib.Path, step: int = STEPS) -> dict:
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(workdir / "checkpoints" / str(step) / "state")


def losses(workdir: pathlib.Path) -> dict[int, float]:
  """train/loss per step (the last entry wins: a resumed run re-logs replayed steps)."""
  return {r["step"]: r["train/loss"] for r in metric_writer.read(workdir) if "train/loss" in r}


def assert_trees_equal(a, b):
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


def _complete_checkpoints(workdir: pathlib.Path) -> list[int]:
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def wait_for_step(proc: subprocess.Popen, workdir: pathlib.Path, step: int, timeout=240,
                  checkpointed: bool = False) -> None:
  """Until step `step` is logged (and, with `checkpointed`, some checkpoint is complete)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}")
    if ((workdir / rundir.METRICS).exists() and max(losses(workdir), default=0) >= step
        and (not checkpointed or _complete_checkpoints(workdir))):
      return
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def uninterrupted(train_shards, env, tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = run(pretrain_args(train_shards["maestro"], workdir), env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir


def test_pretraining_run_writes_config_metrics_tensorboard_and_checkpoints(uninterrupted):
  config = json.loads((uninterrupted / "config.json").read_text())
  assert config["task"] == "pretrain" and config["model"]["encoder"]["width"] == 64
  assert config["optimizer"]["peak_lr"] == 1e-4 and config["optimizer"]["weight_decay"] == 0.01
  records = metric_writer.read(uninterrupted)
  train = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, STEPS + 1))
  for r in train:
    assert np.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0
    assert {"train/info_nce", "train/mse", "train/learning_rate", "perf/steps_per_second",
            "perf/examples_per_second"} <= set(r)
  # warm-up: 10 % of 8 steps rounds to 1 step, so the first update has LR 0, then peak.
  assert train[0]["train/learning_rate"] == 0.0
  assert train[1]["train/learning_rate"] == pytest.approx(1e-4)
  val = [r for r in records if "val/loss" in r]
  assert [r["step"] for r in val] == [4, 8]
  result = json.loads((uninterrupted / "result.json").read_text())
  assert result["status"] == "finished" and result["step"] == STEPS
  assert result["metrics"]["val/loss"] == val[-1]["val/loss"]
  # TensorBoard event files hold the same scalars.
  events = list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
  assert events
  tags = _event_tags(events[0])
  assert {"train/loss", "train/learning_rate", "train/grad_norm", "val/loss",
          "perf/steps_per_second"} <= tags
  # Each checkpoint holds the train state and the Grain iterator state.
  step_dir = uninterrupted / "checkpoints" / str(STEPS)
  assert (step_dir / "state").is_dir()
  data = json.loads((step_dir / "data" / "process_0-of-1.json").read_text())
  assert data  # Grain's iterator state
  state = final_state(uninterrupted)
  assert int(state["step"]) == STEPS and {"params", "opt_state", "rng"} <= set(state)


def _event_tags(path: pathlib.Path) -> set[str]:
  """Scalar tags of a TensorBoard event file (TFRecord framing + Event protos)."""
  from tensorboardX.proto import event_pb2

  data, tags, offset = path.read_bytes(), set(), 0
  while offset < len(data):
    length = int.from_bytes(data[offset:offset + 8], "little")
    payload = data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4
    event = event_pb2.Event.FromString(payload)
    tags.update(v.tag for v in event.summary.value)
  return tags


def test_keeps_the_latest_and_the_best_checkpoint(uninterrupted):
  # keep=3 latest (6, 7, 8) plus the best by val/loss among the evaluated 4 and 8.
  steps = sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir()
                 if p.name.isdigit())
  val = {r["step"]: r["val/loss"] for r in metric_writer.read(uninterrupted) if "val/loss" in r}
  best = min(val, key=val.get)
  assert steps == sorted({6, 7, 8, best})


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(uninterrupted, train_shards,
                                                                    env, tmp_path):
  kill_after = random.randint(2, STEPS - 2)
  proc = start(pretrain_args(train_shards["maestro"], tmp_path), env)
  # At a random step, once some checkpoint is complete (else there is nothing to resume).
  wait_for_step(proc, tmp_path, kill_after, checkpointed=True)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  kill_after = max(losses(tmp_path))
  assert not (tmp_path / "result.json").exists()
  resumed = run(pretrain_args(train_shards["maestro"], tmp_path), env)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  result = json.loads((tmp_path / "result.json").read_text())
  # Resumed from the last checkpoint that was complete at the kill (saves are
  # asynchronous, so it can be a step or two before the kill); nothing was lost.
  assert result["restored_from"] and 1 <= result["first_step"] <= kill_after, (kill_after, result)
  # The killed attempt wrote no result, so only this one's time is counted.
  assert result["total_wall_seconds"] == result["wall_seconds"]
  assert_trees_equal(final_state(tmp_path), final_state(uninterrupted))
  assert losses(tmp_path) == losses(uninterrupted), f"killed after step {kill_after}"


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resumes_identically(uninterrupted, train_shards, env,
                                                         tmp_path):
  args = pretrain_args(train_shards["maestro"], tmp_path,
                       "--config.checkpoint.every_steps=100")  # only SIGTERM / eval saves
  proc = start(args, env)
  wait_for_step(proc, tmp_path, 2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out[-3000:]
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["status"] == "preempted" and 2 <= result["step"] < STEPS
  assert (tmp_path / "checkpoints" / str(result["step"]) / "state").is_dir()
  assert "SIGTERM: saved checkpoint" in out
  resumed = run(args, env)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  final = json.loads((tmp_path / "result.json").read_text())
  assert final["first_step"] == result["step"]
  # Training time adds up over the attempts.
  assert final["total_wall_seconds"] == pytest.approx(
      result["total_wall_seconds"] + final["wall_seconds"], abs=0.11)
  assert_trees_equal(final_state(tmp_path)["params"], final_state(uninterrupted)["params"])


@pytest.mark.slow
def test_resume_flag_takes_precedence_over_the_work_directory(uninterrupted, train_shards, env,
                                                              tmp_path):
  # --resume from step 6 of another run: continue there (not from scratch, not from 8).
  proc = run(pretrain_args(train_shards["maestro"], tmp_path,
                           f"--resume={uninterrupted / 'checkpoints' / '6'}"), env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["first_step"] == 6 and result["restored_from"].endswith("checkpoints/6")
  assert_trees_equal(final_state(tmp_path)["params"], final_state(uninterrupted)["params"])


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(train_shards, env,
                                                                            tmp_path):
  proc = run(pretrain_args(train_shards["maestro"], tmp_path, "--config.optimizer.peak_lr=1e30",
                           "--config.optimizer.warmup_fraction=0",
                           "--config.optimizer.grad_clip_norm=0"), env)
  assert proc.returncode == 1
  message = proc.stderr.strip().splitlines()[-1]
  assert message.startswith("error: non-finite training at step ")
  step = int(message.split("at step ")[1].split(":")[0])
  if step > 1:
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / str(step - 1)}" in message
  else:
    assert "last good checkpoint: none" in message
  assert not (tmp_path / "checkpoints" / str(step)).exists()


@pytest.mark.slow
def test_eight_host_devices_with_fsdp_match_one_device(uninterrupted, train_shards, env, tmp_path):
  eight = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = run(pretrain_args(train_shards["maestro"], tmp_path, "--config.mesh.data=4",
                           "--config.mesh.fsdp=2"), eight)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "mesh {'data': 4, 'fsdp': 2}" in proc.stderr
  one, many = losses(uninterrupted), losses(tmp_path)
  assert sorted(one) == sorted(many)
  # Same examples, rows, dropout and masks; only reduction order differs.
  np.testing.assert_allclose([many[s] for s in sorted(many)], [one[s] for s in sorted(one)],
                             rtol=2e-4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one_process(uninterrupted, train_shards, env,
                                                              tmp_path):
  port = _free_port()
  procs = [start(pretrain_args(train_shards["maestro"], tmp_path,
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}", "--initialization_timeout=60"), env)
           for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert "process 1 of 2" in outs[1] and "mesh {'data': 2, 'fsdp': 1}, 2 process(es)" in outs[0]
  one, two = losses(uninterrupted), losses(tmp_path)
  assert sorted(one) == sorted(two)
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=2e-4)
  assert (tmp_path / "checkpoints" / str(STEPS) / "data" / "process_1-of-2.json").is_file()


def test_finetuning_warm_starts_from_pretraining_and_reports_pearson(uninterrupted, train_shards,
                                                                     env, tmp_path):
  proc = run(["--config=train/configs/finetune.py:tiny", f"--workdir={tmp_path}",
              f"--config.data_dir={train_shards['percepiano']}", *SMALL_ENCODER,
              "--config.num_steps=4", "--config.batch_size=8", "--config.microbatch_size=8",
              "--config.eval_batch_size=8", "--config.log_every_steps=2",
              f"--config.init.checkpoint={uninterrupted}", "--config.optimizer.layer_decay=0.75"],
             env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads((tmp_path / "warm_start.json").read_text())
  # Pre-training at stride 16 (8 x 16 grid); fine-tuning at stride 10 (12 x 25).
  assert report["resized"] == {"encoder/pos_embed": "8x16 -> 12x25"}
  assert "encoder/patch_embed/kernel" in report["loaded"]
  assert "encoder/blocks/attn/qkv/kernel" in report["loaded"]
  assert report["unused"] == ["mask_embed"]
  assert all(p.startswith(("heads/", "loss_log_variances")) for p in report["initialised"])
  assert report["step"] == min(
      (r for r in metric_writer.read(uninterrupted) if "val/loss" in r),
      key=lambda r: r["val/loss"])["step"]  # the best pre-training checkpoint
  final = metric_writer.read(tmp_path)[-1]
  for group in ("timing", "dynamics", "expression", "mean"):
    assert -1 <= final[f"val/pearson/{group}"] <= 1
  assert final["val/performances"] > 0
  train = [r for r in metric_writer.read(tmp_path) if "train/loss" in r]
  assert {"train/mse/timing", "train/weight/dynamics"} <= set(train[0])
  # What eval.report and eval.predict read: the final evaluation's per-performance
  # predictions (scoring them reproduces the logged Pearson) and the target statistics.
  saved = predictions.load_selected(tmp_path)
  assert saved.step == 4 and saved.split == "piece/fold0" and len(saved.keys) == final["val/performances"]
  values = metrics.per_dimension_pearson(saved.predictions, saved.labels, saved.mask)
  assert metrics.summarise(values)["pearson/mean"] == pytest.approx(final["val/pearson/mean"])
  normalizer = targets.TargetNormalizer.from_dict(
      json.loads((tmp_path / targets.FILE).read_text()))
  assert len(normalizer.mean) == 19


@pytest.mark.slow
def test_config_typos_and_missing_data_fail_clearly(env, tmp_path, train_shards):
  typo = run(["--config=train/configs/pretrain.py:tiny", f"--workdir={tmp_path}",
              "--config.optimizer.peak_lrr=1"], env, timeout=120)
  assert typo.returncode != 0 and "peak_lrr" in typo.stderr
  missing = run(["--config=train/configs/pretrain.py:tiny", f"--workdir={tmp_path}"], env,
                timeout=120)
  assert missing.returncode == 1 and "config.data_dir is not set" in missing.stderr
  wrong = run(["--config=train/configs/finetune.py:tiny", f"--workdir={tmp_path}",
               f"--config.data_dir={train_shards['maestro']}"], env, timeout=120)
  assert wrong.returncode == 1 and "fine-tuning needs the PercePiano job's shards" in wrong.stderr
  frames = run(["--config=train/configs/pretrain.py:tiny", f"--workdir={tmp_path}",
                f"--config.data_dir={train_shards['maestro']}"], env, timeout=120)
  assert frames.returncode == 1 and "256 frames" in frames.stderr


def _damage(step_dir: pathlib.Path, how: str) -> None:
  """Breaks one saved checkpoint the ways a crash, a full disk or a bad copy do."""
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  if how == "truncate":  # the largest array file cut short
    files[-1].write_bytes(files[-1].read_bytes()[:files[-1].stat().st_size // 3])
  elif how == "delete":
    files[-1].unlink()
  elif how == "metadata":
    (step_dir / "state" / "_METADATA").write_text("{not json")
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncate", pytest.param("delete", marks=pytest.mark.slow),
                                 pytest.param("metadata", marks=pytest.mark.slow)])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_finishes_identically(
    how, uninterrupted, train_shards, env, tmp_path):
  # The uninterrupted run keeps steps 6, 7, 8 (and the best): damage 8 and resume, as a
  # run killed before its last step and damaged on disk would be.
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  (workdir / "result.json").unlink()
  _damage(workdir / "checkpoints" / str(STEPS), how)
  resumed = run(pretrain_args(train_shards["maestro"], workdir), env)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert f"checkpoints/{STEPS} cannot be restored, skipped" in resumed.stderr
  result = json.loads((workdir / "result.json").read_text())
  assert result["first_step"] == STEPS - 1 and result["restored_from"].endswith(f"/{STEPS - 1}")
  assert_trees_equal(final_state(workdir), final_state(uninterrupted))


def test_no_intact_checkpoint_is_one_line_naming_the_directory(uninterrupted, train_shards, env,
                                                               tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  (workdir / "result.json").unlink()
  for step_dir in (workdir / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      _damage(step_dir, "metadata")
  proc = run(pretrain_args(train_shards["maestro"], workdir), env)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "no intact checkpoint" in last
  assert str(workdir / "checkpoints") in last and "Traceback" not in proc.stderr


# The benchmark's and the demo's stage runner (experiments.stages) over one training stage.
_RUNNER = """
import pathlib, sys
from experiments import stages
work = pathlib.Path(sys.argv[1])
stage = stages.training("pretrain", work, ("train.main", *sys.argv[2:]), "pre-training")
stages.run([stage], work.parent / "logs")
"""


def _gone(pid: int) -> bool:
  """Whether `pid` has exited (a zombie no one reaps counts as exited)."""
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith(("Z", "X"))
  except (FileNotFoundError, ProcessLookupError):
    return True


@pytest.mark.slow  # ~45 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_a_killed_stage_runner_takes_its_stage_along_and_the_rerun_resumes_bitwise(
    uninterrupted, train_shards, env, tmp_path):
  """SIGKILL to the runner mid-stage: its trainer gets SIGTERM, saves and exits (no orphan
  keeps writing); while it runs, a second trainer on its work directory is refused; the same
  command rerun finishes with the weights of an uninterrupted run."""
  work = tmp_path / "run"
  args = pretrain_args(train_shards["maestro"], work)
  command = [sys.executable, "-c", _RUNNER, str(work), *args]
  runner = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  lock, deadline = tmp_path / ".run.lock", time.time() + 240
  while not (lock.is_file() and lock.read_text().strip() and (work / rundir.METRICS).exists()
             and losses(work)):
    assert runner.poll() is None, runner.stdout.read()[-3000:]
    assert time.time() < deadline, "no training step in 240 s"
    time.sleep(0.02)
  # Frozen mid-run (SIGSTOP), so the kill lands before the last step however fast it is.
  trainer_pid = int(lock.read_text())
  os.kill(trainer_pid, signal.SIGSTOP)
  assert trainer_pid != runner.pid and not (work / rundir.RESULT).exists()
  second = run(args, env)
  assert second.returncode != 0, second.stderr[-2000:]
  assert f"is being trained by another process (pid {trainer_pid})" in \
      second.stderr.strip().splitlines()[-1]
  runner.kill()
  runner.wait(timeout=60)
  os.kill(trainer_pid, signal.SIGCONT)  # the SIGTERM its runner's death sent is delivered
  deadline = time.time() + 120
  while not _gone(trainer_pid):
    assert time.time() < deadline, "the stage outlived its runner"
    time.sleep(0.1)
  result = json.loads((work / rundir.RESULT).read_text())
  assert result["status"] == "preempted" and result["step"] < STEPS  # SIGTERM: saved, not cut
  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert rundir.finished(rundir.read_result(work))
  assert rundir.read_result(work)["first_step"] == result["step"]
  assert_trees_equal(final_state(work), final_state(uninterrupted))
