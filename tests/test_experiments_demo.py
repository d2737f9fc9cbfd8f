"""experiments.demo (`make demo`): the plan, and the whole chain at smoke scale as a user runs it."""

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import demo, stages

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_the_attention_example_is_the_first_test_performance(tmp_path):
  release, shards = tmp_path / "percepiano", tmp_path / "shards"
  midi = release / "virtuoso" / "data" / "all_2rounds"
  midi.mkdir(parents=True)
  shards.mkdir()
  for key in ("B_piece_8bars_1_2", "A_piece_8bars_1_1", "C_piece_8bars_1_3"):
    (midi / f"{key}.mid").write_bytes(b"MThd")
  (shards / "metadata.json").write_text(json.dumps({"splits": {"piece": {
      "A_piece_8bars_1_1": "fold0", "B_piece_8bars_1_2": "test", "C_piece_8bars_1_3": "test"}}}))
  assert stages.first_test_midi(release, shards, "piece") == midi / "B_piece_8bars_1_2.mid"
  plan = demo.plan(tmp_path / "corpus", tmp_path / "work", 1.0, 100)
  assert [s.name for s in plan] == ["maestro_shards", "percepiano_shards", "pretrain",
                                    "finetune_ast", "finetune_cnn", "ridge", "report"]
  assert callable(plan[-1].args)  # completed once the PercePiano job has run
  names = [s.name for s in plan]
  for k, stage in enumerate(plan):  # every need names an earlier stage
    assert set(stage.needs) <= set(names[:k]), stage.name
  assert plan[-1].needs == ("finetune_ast", "finetune_cnn", "ridge")
  ridge = plan[names.index("ridge")]
  assert ridge.args[0] == "train.ridge" and ridge.needs == ("percepiano_shards",)
  assert {"--folds=none", "--test"} <= set(ridge.args)  # the demo scores the test set only


@pytest.mark.slow
def test_make_demo_end_to_end_at_smoke_scale(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.demo", f"--corpus_dir={tmp_path / 'corpus'}",
       f"--workdir={tmp_path / 'work'}", "--steps_scale=0.02", "--resamples=50"],
      cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Report:" in proc.stdout and "target timing Pearson >= 0.7" in proc.stdout
  report = json.loads((tmp_path / "work" / "report" / "report.json").read_text())
  assert set(report["evaluations"]) == {"test"}
  assert [r["backbone"] for r in report["runs"]] == ["ast", "cnn", "ridge"]
  assert any("attention" in f for f in report["figures"])
  # The report names the scale its numbers come from (the smoke run's 3 SSAST steps).
  (scale,) = [n for n in report["notes"] if n.startswith("Scale:")]
  assert "3 SSAST pre-training steps, 5 fine-tuning steps" in scale
  assert {t["goal"] for t in report["targets"]} >= {
      "mean Pearson >= 20 % over CNN baseline",
      "mean Pearson >= 20 % over ridge on clip statistics"}
  timings = json.loads((tmp_path / "work" / "timings.json").read_text())
  assert set(timings) >= {"maestro_shards", "pretrain", "finetune_cnn", "ridge", "report"}
  # A rerun skips every finished stage (only the report is rebuilt).
  again = subprocess.run(
      [sys.executable, "-m", "experiments.demo", f"--corpus_dir={tmp_path / 'corpus'}",
       f"--workdir={tmp_path / 'work'}", "--steps_scale=0.02", "--resamples=50"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 6
  rerun = json.loads((tmp_path / "work" / "timings.json").read_text())
  assert {k: rerun[k] for k in timings if k not in ("report", "total_wall_seconds")} == {
      k: timings[k] for k in timings if k not in ("report", "total_wall_seconds")}
