"""experiments.percepiano_benchmark: every stage's command parses into a valid config."""

import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from experiments import percepiano_benchmark as benchmark
from train import tasks

REPO = pathlib.Path(__file__).resolve().parent.parent


def _config(args, monkeypatch):
  """The config the trainer would build from a stage's --config flags (absl's real parser)."""
  argv = [sys.argv[0], *[a for a in args if a.startswith("--config")]]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  return values.config


@pytest.mark.parametrize("size", sorted(benchmark.SIZES))
def test_every_training_stage_builds_its_model(size, tmp_path, monkeypatch):
  plan = benchmark.plan(tmp_path / "pp", tmp_path / "asap", tmp_path / "w", size, folds="0")
  names = [s.name for s in plan]
  assert names[:3] == ["asap_shards", "percepiano_shards", "pretrain"]
  assert {f"cv_{v}" for v in benchmark.VARIANTS} <= set(names)
  assert {"performer_ast", "performer_cnn", "report_piece", "report_performer"} <= set(names)
  backbones = {}
  for stage in plan:
    if stage.args[0] in ("train.main", "eval.crossval"):
      config = _config(stage.args, monkeypatch)
      if config.task == "finetune":
        model = tasks.finetuning_model_config(config)
        backbones[stage.name] = (model.backbone, model.head, model.adaptive_weighting,
                                 bool(config.init.checkpoint), config.input.augmented)
        assert "--folds=0" in stage.args and "--test" in stage.args
  assert backbones["cv_ast"] == ("ast", "grouped", True, True, True)
  assert backbones["cv_scratch"][3] is False
  assert backbones["cv_flat"][1] == "flat"
  assert backbones["cv_fixed"][2] is False
  assert backbones["cv_noaug"][4] is False
  assert backbones["cv_cnn"][0] == "cnn" and backbones["performer_ffn"][0] == "pooled_stats"


def test_dry_run_prints_the_commands(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.percepiano_benchmark", "--dry_run",
                         f"--workdir={tmp_path}", "--only=pretrain,cv_cnn"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "python -m train.main --config=train/configs/pretrain.py:tiny" in proc.stdout
  assert "--config.model.backbone=cnn" in proc.stdout and "cv_ast" not in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.percepiano_benchmark", "--only=nope"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode != 0 and "unknown stages" in bad.stderr
