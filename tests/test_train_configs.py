"""train/configs: the paper settings, the size variants, and the shared defaults."""

import pytest

from model import ast, multitask, ssast
from train import tasks
from train.configs import defaults, finetune, pretrain


@pytest.mark.parametrize("size", defaults.SIZES)
def test_every_variant_builds_its_model_config(size):
  pre, ft = pretrain.get_config(size), finetune.get_config(size)
  encoder = ast.EncoderConfig(**pre.model.encoder.to_dict())
  ssast.SSASTConfig(encoder=encoder, num_masked=pre.model.num_masked)  # validates strides
  multitask.MultiTaskConfig(encoder=ast.EncoderConfig(**ft.model.encoder.to_dict()))
  for c in (pre, ft):
    assert c.batch_size % c.microbatch_size == 0
    assert c.size == size


def test_base_configs_are_the_paper_settings():
  pre, ft = pretrain.get_config("base"), finetune.get_config("base")
  for c in (pre, ft):
    o = c.optimizer
    assert (o.peak_lr, o.b1, o.b2, o.weight_decay, o.warmup_fraction) == (1e-4, 0.9, 0.999, 0.01,
                                                                          0.1)
    e = c.model.encoder
    assert (e.width, e.depth, e.heads, e.patch_size, e.dropout) == (768, 12, 12, 16, 0.1)
  assert (pre.batch_size, pre.num_epochs, pre.model.num_masked, pre.model.masking) == (
      128, 100, 400, "cluster")
  assert (pre.model.encoder.freq_stride, pre.model.generative_weight) == (16, 10.0)
  assert (ft.batch_size, ft.num_epochs, ft.model.encoder.freq_stride) == (32, 50, 10)
  assert pre.checkpoint.best_mode == "min" and ft.checkpoint.best_mode == "max"


def test_configs_share_one_definition_of_the_optimiser():
  assert pretrain.get_config("tiny").optimizer == finetune.get_config("base").optimizer


def test_unknown_size_is_refused():
  for get in (pretrain.get_config, finetune.get_config):
    with pytest.raises(ValueError, match="unknown size 'huge'"):
      get("huge")
  with pytest.raises(ValueError, match="unknown size"):
    defaults.trainer_config("pretrain", "huge", batch_size=1, microbatch_size=1, num_epochs=1)


def test_loss_weights_parse_or_fail_clearly():
  assert tasks._parse_weights("timing=1, dynamics=2.5") == (("timing", 1.0), ("dynamics", 2.5))
  assert tasks._parse_weights("") == ()
  with pytest.raises(ValueError, match="GROUP=WEIGHT"):
    tasks._parse_weights("timing:1")
