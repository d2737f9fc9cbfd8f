"""train.steps: gradient accumulation equals the full batch; the finite flag."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import steps
from train.train_state import TrainState


def _loss(params, batch, rng, train):
  del rng, train
  pred = batch["x"] @ params["w"] + params["b"]
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, {"loss": loss}


def _state(params, tx):
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(0)))


def test_accumulated_microbatches_give_the_full_batch_update():
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(16,)), jnp.float32)}
  params = {"w": jnp.asarray(rng.normal(size=(5,)), jnp.float32), "b": jnp.float32(0.3)}
  tx, lr = optax.sgd(0.1), optax.constant_schedule(0.1)
  full, m_full = jax.jit(steps.make_train_step(_loss, tx, lr, 1))(_state(params, tx), batch)
  accumulated, m_acc = jax.jit(steps.make_train_step(_loss, tx, lr, 4))(_state(params, tx), batch)
  np.testing.assert_allclose(accumulated.params["w"], full.params["w"], rtol=1e-6)
  np.testing.assert_allclose(accumulated.params["b"], full.params["b"], rtol=1e-6)
  np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-6)
  assert int(accumulated.step) == 1 and bool(m_acc["finite"])
  # And it is not a no-op: the parameters moved.
  assert not np.allclose(accumulated.params["w"], params["w"])


def test_each_microbatch_draws_its_own_rng():
  def loss(params, batch, rng, train):
    noise = jax.random.normal(rng, ())
    value = jnp.sum(params["w"]) * noise
    return value, {"loss": value, "noise": noise}

  tx, lr = optax.sgd(0.0), optax.constant_schedule(0.0)
  params = {"w": jnp.ones(())}
  _, metrics = jax.jit(steps.make_train_step(loss, tx, lr, 2))(
      _state(params, tx), {"x": jnp.zeros((4, 1))})
  _, single = jax.jit(steps.make_train_step(loss, tx, lr, 1))(
      _state(params, tx), {"x": jnp.zeros((4, 1))})
  assert float(metrics["noise"]) != float(single["noise"])  # mean of two different draws


def test_non_finite_loss_is_flagged():
  tx, lr = optax.sgd(0.1), optax.constant_schedule(0.1)
  params = {"w": jnp.ones((5,)), "b": jnp.float32(0.0)}
  batch = {"x": jnp.full((4, 5), jnp.nan), "y": jnp.zeros((4,))}
  _, metrics = jax.jit(steps.make_train_step(_loss, tx, lr, 2))(_state(params, tx), batch)
  assert not bool(metrics["finite"])
