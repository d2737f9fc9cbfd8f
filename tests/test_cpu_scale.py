"""experiments.cpu_scale: the 2-core sizing shared by the demo and the benchmark."""

from experiments import cpu_scale, demo
from pipelines import input_pipeline


def test_the_time_mask_keeps_asts_share_of_the_window():
  assert (cpu_scale.AST_TIME_MASK, cpu_scale.AST_FRAMES) == (
      input_pipeline.InputConfig().time_mask, 1024)
  assert cpu_scale.spec_augment(1024) == ["--config.input.time_mask=192"]
  assert cpu_scale.spec_augment(256) == ["--config.input.time_mask=48"]


def test_the_demo_fine_tunes_with_the_scaled_mask(tmp_path):
  plan = {s.name: s for s in demo.plan(tmp_path / "corpus", tmp_path / "work", 1.0, 100)}
  for name in ("finetune_ast", "finetune_cnn"):
    assert "--config.input.time_mask=48" in plan[name].args
    assert "--config.model.encoder.num_frames=256" in plan[name].args
