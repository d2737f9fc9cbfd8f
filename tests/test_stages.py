"""experiments.stages: real subprocess stages, skipped when done, failures named with their log."""

import json
import os
import pathlib
import time

import pytest

from experiments import stages


def test_runs_what_is_not_done_and_skips_what_is(tmp_path, capsys):
  source = tmp_path / "in.json"
  source.write_text('{"a": 1}')
  out = tmp_path / "out.json"
  make = stages.Stage("copy", ("json.tool", str(source), str(out)), out.is_file)
  timings = stages.run([make], tmp_path / "logs")
  assert json.loads(out.read_text()) == {"a": 1} and "copy" in timings
  assert stages.run([make], tmp_path / "logs") == {}
  assert "done earlier, skipped" in capsys.readouterr().out
  again = stages.Stage("report", ("json.tool", str(source), str(out)), out.is_file, always=True)
  assert "report" in stages.run([again], tmp_path / "logs")


def test_a_failing_stage_stops_its_dependents_not_the_others(tmp_path):
  never = tmp_path / "never"
  bad = stages.Stage("bad", ("json.tool", str(tmp_path / "missing.json")), never.is_file)
  dependent = stages.Stage("dependent", ("json.tool", "--help"), lambda: False, needs=("bad",))
  indirect = stages.Stage("indirect", ("json.tool", "--help"), lambda: False,
                          needs=("dependent",))
  source, out = tmp_path / "in.json", tmp_path / "out.json"
  source.write_text("{}")
  other = stages.Stage("other", ("json.tool", str(source), str(out)), out.is_file)
  with pytest.raises(stages.StageError, match="stage bad failed") as e:
    stages.run([bad, dependent, indirect, other], tmp_path / "logs")
  assert "missing.json" in str(e.value)
  assert not (tmp_path / "logs" / "dependent.log").exists()
  assert not (tmp_path / "logs" / "indirect.log").exists()
  assert out.is_file()  # independent work still done


def test_every_failure_is_reported_and_needs_must_come_earlier(tmp_path):
  one = stages.Stage("one", ("json.tool", str(tmp_path / "a.json")), lambda: False)
  two = stages.Stage("two", ("json.tool", str(tmp_path / "b.json")), lambda: False)
  with pytest.raises(stages.StageError) as e:
    stages.run([one, two], tmp_path / "logs")
  assert "stage one failed" in str(e.value) and "stage two failed" in str(e.value)
  with pytest.raises(ValueError, match=r"needs \['two'\], which are not earlier"):
    stages.run([stages.Stage("one", ("json.tool",), lambda: False, needs=("two",)), two],
               tmp_path / "logs")


def test_a_need_left_out_of_the_run_must_be_done_when_its_dependant_starts(tmp_path):
  """`--only=embed` while another call is still pre-training: the stage that needs it fails
  naming it (its dependants with it) instead of reading a half-made run; once the need is
  done, the same call runs it."""
  made = tmp_path / "made.json"
  upstream = stages.Stage("pretrain", ("json.tool", "--help"), made.is_file)
  source, out = tmp_path / "in.json", tmp_path / "out.json"
  source.write_text("{}")
  embed = stages.Stage("embed", ("json.tool", str(source), str(out)), out.is_file,
                       needs=("pretrain",))
  after = stages.Stage("probe", ("json.tool", "--help"), lambda: False, needs=("embed",))
  with pytest.raises(stages.StageError, match="stage embed needs pretrain, which is not done"):
    stages.run([embed, after], tmp_path / "logs", others=[upstream])
  assert not out.exists() and not (tmp_path / "logs" / "probe.log").exists()
  # A report of whatever finished runs anyway.
  written = tmp_path / "report.json"
  report = stages.Stage("report", ("json.tool", str(source), str(written)), written.is_file,
                        always=True, needs=("pretrain",))
  assert "report" in stages.run([report], tmp_path / "logs", others=[upstream])
  made.write_text("{}")
  assert "embed" in stages.run([embed], tmp_path / "logs", others=[upstream])
  assert json.loads(out.read_text()) == {}


def test_an_unreadable_output_check_is_a_stage_error(tmp_path):
  def broken():
    raise json.JSONDecodeError("Expecting value", "", 0)
  stage = stages.Stage("broken", ("json.tool", "--help"), broken)
  with pytest.raises(stages.StageError, match="stage broken: checking its output: JSONDecodeError"):
    stages.run([stage], tmp_path / "logs")


def test_a_resumed_stage_keeps_the_log_of_the_attempt_that_failed(tmp_path):
  source, out = tmp_path / "in.json", tmp_path / "out.json"
  stage = stages.Stage("copy", ("json.tool", str(source), str(out)), out.is_file)
  with pytest.raises(stages.StageError) as e:
    stages.run([stage], tmp_path / "logs")
  assert "in.json" in str(e.value)
  source.write_text("{}")
  stages.run([stage], tmp_path / "logs")
  log = (tmp_path / "logs" / "copy.log").read_text()
  assert log.count("=== ") == 2 and log.count("$ python -m json.tool") == 2
  assert "No such file" in log.split("=== ")[1]  # the first attempt's error is kept


def test_a_stage_that_exits_0_without_its_output_fails(tmp_path):
  silent = stages.Stage("silent", ("json.tool", "--help"), lambda: False)
  with pytest.raises(stages.StageError, match=r"stage silent failed \(exit 0\)"):
    stages.run([silent], tmp_path / "logs")


def test_the_attention_example_needs_the_split_table_and_its_midi(tmp_path):
  release, shards = tmp_path / "release", tmp_path / "shards"
  with pytest.raises(stages.StageError, match="run the PercePiano job first"):
    stages.first_test_midi(release, shards, "piece")
  shards.mkdir()
  (shards / "metadata.json").write_text(json.dumps({"splits": {"piece": {"K_8bars_1_1": "test"}}}))
  with pytest.raises(stages.StageError, match="MIDI folder not found"):
    stages.first_test_midi(release, shards, "piece")
  midi_dir = release / "virtuoso" / "data" / "all_2rounds"
  midi_dir.mkdir(parents=True)
  with pytest.raises(stages.StageError, match="no MIDI for the test performance K_8bars_1_1"):
    stages.first_test_midi(release, shards, "piece")
  with pytest.raises(stages.StageError, match="no performer split table"):
    stages.first_test_midi(release, shards, "performer")


def test_shards_made_with_other_windows_are_refused(tmp_path):
  assert not stages.job_finished(tmp_path / "absent", {"window_s": 5.12})
  (tmp_path / "metadata.json").write_text(json.dumps({"config": {"window_s": 2.56, "hop_s": 1.28}}))
  want = stages.window_flags(["pipelines.beam.maestro_job", "--window_s=2.56", "--hop_s=1.28", "--x=1"])
  assert want == {"window_s": 2.56, "hop_s": 1.28}
  assert stages.job_finished(tmp_path, want) and stages.job_finished(tmp_path)
  with pytest.raises(stages.StageError, match=r"hop_s=1.28 \(this stage: 5.12\)"):
    stages.job_finished(tmp_path, {"window_s": 2.56, "hop_s": 5.12})


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
  config = {"num_steps": 8, "input": {"time_mask": 192}, "init": {"checkpoint": ""},
            "model": {"cnn": {"channels": [8, 16]}}, "optimizer": {"peak_lr": 0.0003}}
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "result.json").write_text(json.dumps(
      {"status": "finished", "step": 8, "total_steps": 8}))
  same = ("train.main", f"--workdir={tmp_path}", "--config.num_steps=8",
          "--config.init.checkpoint=", "--config.model.cnn.channels=(8, 16)",
          "--config.optimizer.peak_lr=3e-4", "--config.input.time_mask=48",
          "--config.input.time_mask=192")  # the last override of a key wins
  assert stages.config_mismatches(config, same) == []
  assert stages.training("t", tmp_path, same, "").done()
  changed = (*same, "--config.input.time_mask=48", "--config.model.depth=2")
  assert stages.config_mismatches(config, changed) == [
      "input.time_mask=192 (this stage: '48')", "model.depth absent (this stage: '2')"]
  with pytest.raises(stages.StageError, match="made with other settings: input.time_mask=192"):
    stages.training("t", tmp_path, changed, "").done()
  assert not stages.training("t", tmp_path / "none", changed, "").done()  # not run yet


def test_num_steps_reads_the_last_override():
  assert stages.num_steps(["train.main", "--config.num_steps=5", "--config.num_steps=7"]) == 7
  assert stages.num_steps(["train.main", "--config.num_epochs=1"]) is None


def test_a_finished_run_of_another_length_is_refused(tmp_path):
  (tmp_path / "result.json").write_text(json.dumps(
      {"status": "finished", "step": 8, "total_steps": 8}))
  assert stages.run_finished(tmp_path) and stages.run_finished(tmp_path, 8)
  with pytest.raises(stages.StageError, match="finished run of 8 steps, not 250"):
    stages.run_finished(tmp_path, 250)
  (tmp_path / "result.json").write_text('{"status": "fini')  # cut mid-write
  assert not stages.run_finished(tmp_path)
  assert not stages.run_finished(tmp_path / "nothing")


def test_a_command_can_depend_on_what_earlier_stages_wrote(tmp_path):
  first = tmp_path / "first.json"
  second = tmp_path / "second.json"
  # Built when the stage starts, from the file the stage before it wrote.
  read = stages.Stage("read", lambda: ("json.tool", json.loads(first.read_text())["path"],
                                       str(second)), second.is_file)
  source = tmp_path / "in.json"
  source.write_text(json.dumps({"path": str(source)}))
  write = stages.Stage("write", ("json.tool", str(source), str(first)), first.is_file)
  stages.run([write, read], tmp_path / "logs")
  assert json.loads(second.read_text()) == {"path": str(source)}
  assert f"$ python -m json.tool {source} {second}\n" in (
      tmp_path / "logs" / "read.log").read_text()


_RENDEZVOUS = '''
import os, pathlib, sys, time
me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
me.write_text(str(os.getpid()))
deadline = time.time() + 60
while not other.exists():  # only a stage running alongside can create it
  if time.time() > deadline:
    sys.exit("the other stage never ran alongside this one")
  time.sleep(0.05)
pathlib.Path(f"{me}.done").touch()
'''


def test_two_jobs_run_independent_stages_side_by_side_and_dependents_after(tmp_path):
  (tmp_path / "rendezvous.py").write_text(_RENDEZVOUS)
  a, b = tmp_path / "a", tmp_path / "b"
  meet = [stages.Stage(n, ("rendezvous", str(me), str(other)),
                       lambda me=me: pathlib.Path(f"{me}.done").is_file())
          for n, me, other in (("a", a, b), ("b", b, a))]
  source, out = tmp_path / "in.json", tmp_path / "out.json"
  source.write_text("{}")

  def after_both():  # built when the stage starts: both of its needs must be complete
    assert pathlib.Path(f"{a}.done").is_file() and pathlib.Path(f"{b}.done").is_file()
    return ("json.tool", str(source), str(out))

  last = stages.Stage("c", after_both, out.is_file, needs=("a", "b"))
  timings = stages.run([*meet, last], tmp_path / "logs", cwd=tmp_path, jobs=2)
  assert set(timings) == {"a", "b", "c"} and out.is_file()


def test_a_failure_among_jobs_lets_the_others_finish_and_run(tmp_path):
  (tmp_path / "rendezvous.py").write_text(_RENDEZVOUS)
  partner, failed_flag = tmp_path / "partner", tmp_path / "bad-failed"
  # "bad" fails only once "slow" runs; "slow" ends only after "bad" was seen to fail
  # (its done check creates the flag), so it is still running when "bad" fails.
  bad = stages.Stage("bad", ("rendezvous", str(tmp_path / "b"), str(partner)),
                     lambda: failed_flag.touch() or False)
  slow = stages.Stage("slow", ("rendezvous", str(partner), str(failed_flag)),
                      lambda: pathlib.Path(f"{partner}.done").is_file())
  never = stages.Stage("never", ("json.tool", "--help"), lambda: False, needs=("bad",))
  source, out = tmp_path / "in.json", tmp_path / "out.json"
  source.write_text("{}")
  later = stages.Stage("later", ("json.tool", str(source), str(out)), out.is_file)
  with pytest.raises(stages.StageError, match="stage bad failed \\(exit 0\\)"):
    stages.run([bad, slow, never, later], tmp_path / "logs", cwd=tmp_path, jobs=2)
  assert pathlib.Path(f"{partner}.done").is_file()  # finished, its work kept
  assert not (tmp_path / "logs" / "never.log").exists()
  assert out.is_file()  # an independent stage still started after the failure


def test_an_interrupt_stops_the_running_stages(tmp_path):
  (tmp_path / "rendezvous.py").write_text(_RENDEZVOUS)
  waiter = tmp_path / "waiter"
  hang = stages.Stage("hang", ("rendezvous", str(waiter), str(tmp_path / "never")),
                      lambda: False)

  def interrupt():  # the user's Ctrl-C, arriving while "hang" runs
    deadline = time.time() + 30
    while not waiter.is_file() and time.time() < deadline:
      time.sleep(0.05)
    raise KeyboardInterrupt

  second = stages.Stage("second", ("json.tool", "--help"), interrupt)
  with pytest.raises(KeyboardInterrupt):
    stages.run([hang, second], tmp_path / "logs", cwd=tmp_path, jobs=2)
  pid = int(waiter.read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)  # stopped and reaped, not left running
