"""train.checkpointing on real Orbax checkpoints and real Grain iterators."""

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpointing


def _iterator():
  return iter(grain.MapDataset.range(100).seed(0).shuffle().batch(4).to_iter_dataset())


def test_state_and_iterator_restore_to_the_next_batch(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", keep=2)
  it = _iterator()
  for _ in range(3):
    next(it)
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
  ckpt.save(3, state, it)
  expected_next = next(it)
  ckpt.close()

  reader = checkpointing.Checkpointer(tmp_path / "checkpoints", read_only=True)
  fresh = _iterator()
  restored = reader.restore(reader.latest_step(), {"w": jnp.zeros((2, 3)),
                                                   "step": jnp.int32(0)}, fresh)
  reader.close()
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert int(restored["step"]) == 3
  np.testing.assert_array_equal(next(fresh), expected_next)


@pytest.mark.parametrize("mode, best", [("max", 2), ("min", 4)])
def test_keeps_the_latest_n_plus_the_best(tmp_path, mode, best):
  ckpt = checkpointing.Checkpointer(tmp_path, keep=1, best_metric="val/score", best_mode=mode)
  scores = {1: 0.5, 2: 0.9, 3: None, 4: 0.1, 5: None}
  for step, score in scores.items():
    ckpt.save(step, {"w": jnp.float32(step)}, None,
              metrics=None if score is None else {"val/score": score})
    ckpt.wait()
  assert sorted(ckpt.all_steps()) == sorted({5, best})
  assert ckpt.best_step() == best
  ckpt.close()


def test_locate_accepts_workdir_checkpoints_dir_or_step(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path / "w" / "checkpoints")
  ckpt.save(7, {"w": jnp.float32(1)}, None)
  ckpt.close()
  assert checkpointing.locate(tmp_path / "w") == (tmp_path / "w" / "checkpoints", None)
  assert checkpointing.locate(tmp_path / "w" / "checkpoints") == (
      tmp_path / "w" / "checkpoints", None)
  assert checkpointing.locate(tmp_path / "w" / "checkpoints" / "7") == (
      tmp_path / "w" / "checkpoints", 7)
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="does not exist"):
    checkpointing.locate(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpointing.CheckpointNotFoundError, match="neither"):
    checkpointing.locate(tmp_path / "empty")


def _saved(directory, steps=(1, 2, 3)):
  ckpt = checkpointing.Checkpointer(directory, keep=5)
  for step in steps:
    ckpt.save(step, {"w": jnp.full((64,), float(step))}, None)
  ckpt.close()


@pytest.mark.parametrize("how", ["truncate", "delete", "metadata"])
def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, how):
  _saved(tmp_path)
  state_dir = tmp_path / "3" / "state"
  files = sorted((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  if how == "truncate":
    files[-1].write_bytes(files[-1].read_bytes()[:files[-1].stat().st_size // 3])
  elif how == "delete":
    files[-1].unlink()
  else:
    (state_dir / "_METADATA").write_bytes(b"\x00garbage")
  reader = checkpointing.Checkpointer(tmp_path, read_only=True)
  state, step, skipped = reader.restore_intact(reader.restore_raw_state)
  reader.close()
  assert step == 2 and float(state["w"][0]) == 2.0
  assert [s for s, _ in skipped] == [3] and skipped[0][1]  # the reason is named


def test_no_intact_checkpoint_names_the_directory(tmp_path):
  _saved(tmp_path, steps=(1, 2))
  for step in (1, 2):
    (tmp_path / str(step) / "state" / "_METADATA").write_text("{")
  reader = checkpointing.Checkpointer(tmp_path, read_only=True)
  with pytest.raises(checkpointing.CheckpointNotFoundError,
                     match=rf"{tmp_path}: no intact checkpoint \(steps 2, 1 cannot be restored"):
    reader.restore_intact(reader.restore_raw_state)
  # A chosen order is followed as given (eval.loading puts the best step first).
  _saved(tmp_path / "other")
  reader = checkpointing.Checkpointer(tmp_path / "other", read_only=True)
  _, step, skipped = reader.restore_intact(reader.restore_raw_state, [1, 3, 2])
  assert step == 1 and skipped == []
