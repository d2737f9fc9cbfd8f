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
