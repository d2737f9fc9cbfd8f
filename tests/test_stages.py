"""experiments.stages: real subprocess stages, skipped when done, failures named with their log."""

import json

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


def test_a_failing_stage_stops_the_chain_with_its_log(tmp_path):
  never = tmp_path / "never"
  bad = stages.Stage("bad", ("json.tool", str(tmp_path / "missing.json")), never.is_file)
  after = stages.Stage("after", ("json.tool", "--help"), lambda: False)
  with pytest.raises(stages.StageError, match="stage bad failed") as e:
    stages.run([bad, after], tmp_path / "logs")
  assert "missing.json" in str(e.value)
  assert not (tmp_path / "logs" / "02_after.log").exists()


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
  assert (tmp_path / "logs" / "02_read.log").read_text().startswith(
      f"$ python -m json.tool {source} {second}")
