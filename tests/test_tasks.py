"""train.tasks: which performances a fine-tuning run trains and validates on."""

import dataclasses

import pytest

from pipelines import input_pipeline
from pipelines.datasets import percepiano
from train import tasks
from train.configs import finetune


def _task(data_dir, **overrides):
  config = finetune.get_config("tiny")
  config.data_dir = str(data_dir)
  config.model.encoder.num_frames = 256
  for k, v in overrides.items():
    setattr(config, k, v)
  return tasks.make(config)


def _keys_read(data_dir, input_config) -> set[str]:
  batches = input_pipeline.evaluation(data_dir, input_config)
  return {str(k) for b in batches for k, w in zip(b["key"], b["weight"]) if w > 0}


@pytest.mark.parametrize("split", ["piece", "performer"])
def test_each_split_table_selects_its_folds_and_test_set(train_shards, split):
  data = train_shards["percepiano"]
  task = _task(data, split=split, validation_fold=1)
  table = task.metadata.split_table(split)
  assert task.train_keys == {k for k, v in table.items() if v.startswith("fold") and v != "fold1"}
  assert task.eval_keys == {k for k, v in table.items() if v == "fold1"}
  assert task.split_name == f"{split}/fold1"
  # The windows actually read are exactly those performances'.
  assert _keys_read(data, task.eval_input_config()) == task.eval_keys
  train = dataclasses.replace(task.train_input_config(), spec_augment=False)
  assert _keys_read(data, train) == task.train_keys
  test = _task(data, split=split, validation_fold=-1)
  assert test.eval_keys == {k for k, v in table.items() if v == "test"}
  assert test.train_keys == {k for k, v in table.items() if v.startswith("fold")}
  assert not test.train_keys & test.eval_keys


def test_the_performer_split_of_piece_split_shards_differs_from_the_piece_split(train_shards):
  data = train_shards["percepiano"]
  piece, performer = _task(data, split="piece"), _task(data, split="performer")
  assert piece.metadata.splits["shards_follow"] == "piece"
  assert piece.eval_keys != performer.eval_keys
  # No performer of the performer split's test set is trained on.
  test = _task(data, split="performer", validation_fold=-1)
  performers = lambda keys: {percepiano.parse_key(k).performer for k in keys}
  assert not performers(test.eval_keys) & performers(test.train_keys)


def test_bad_split_or_fold_fails_clearly(train_shards):
  with pytest.raises(ValueError, match="not 'piece' or 'performer'"):
    _task(train_shards["percepiano"], split="composer")
  with pytest.raises(ValueError, match="validation_fold 7 is not one of the piece split's folds"):
    _task(train_shards["percepiano"], validation_fold=7)


def test_level_and_colour_reach_training_input_only(train_shards):
  """`--config.input.gain_db/tilt_db/eq_db` augment the training stream; evaluation reads the
  windows as stored."""
  config = finetune.get_config("tiny")
  config.data_dir = str(train_shards["percepiano"])
  config.model.encoder.num_frames = 256
  config.input.gain_db, config.input.tilt_db, config.input.eq_db = 9.0, 3.0, 15.0
  task = tasks.make(config)
  train, evaluation = task.train_input_config(), task.eval_input_config()
  assert (train.gain_db, train.tilt_db, train.eq_db) == (9.0, 3.0, 15.0)
  assert (evaluation.gain_db, evaluation.tilt_db, evaluation.eq_db) == (0.0, 0.0, 0.0)
