"""The training loop: one code path for pre-training and fine-tuning, any mesh, exact resume.

  state = restore(--resume) or restore(latest in WORKDIR) or initialise (+ warm start)
  for step in range(state.step, total):
    batch = next(grain iterator)  ->  global jax Arrays sharded over (data, fsdp)
    state, metrics = train_step(state, batch)      # jitted, donated, accumulated
    NaN/inf guard -> progress line / TensorBoard -> validation -> checkpoint
  wait for the last asynchronous save

A checkpoint holds the TrainState and every host's Grain iterator state, taken
after the same step, so a restored run reads exactly the next batch and draws
the same dropout/masking keys (`fold_in(rng, step)`): resuming after a kill gives
bitwise the parameters of an uninterrupted run on the same machine and mesh.

SIGTERM (pre-emption, `kill`) sets a flag; the loop saves after the step in
flight, waits for the write, and exits with status 143.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from train import checkpointing, metric_writer, optimizer, rundir, sharding, steps, tasks, warm_start
from train.metric_writer import MetricWriter
from train.train_state import TrainState

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a killed job


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN/inf."""


class ConfigError(ValueError):
  pass


@dataclasses.dataclass
class Result:
  status: str  # "finished" or "preempted"
  step: int
  total_steps: int  # the learning-rate schedule's length
  metrics: dict  # the selected evaluation's
  wall_seconds: float  # this process
  # Every attempt at this run that exited through the trainer (finished or SIGTERM);
  # a process killed outright writes no result, so its time is not counted.
  total_wall_seconds: float
  # Why the run ended: "schedule" (its last step), "stop_after_epochs", "early_stopping",
  # or "sigterm".
  stop: str = "schedule"
  # The evaluation the run is judged by: the best by `checkpoint.best_metric` (the
  # last evaluation when no metric is set), its step and where that falls in epochs.
  selected_step: int | None = None
  selected_epoch: float | None = None
  steps_per_epoch: float | None = None


def _check(config: ml_collections.ConfigDict, mesh) -> int:
  """Validates batch arithmetic; returns the accumulation steps."""
  if config.batch_size % config.microbatch_size:
    raise ConfigError(f"batch_size {config.batch_size} is not a multiple of microbatch_size "
                      f"{config.microbatch_size}")
  sharding.check_batch(config.microbatch_size, mesh, "microbatch_size")
  sharding.check_batch(config.batch_size, mesh, "batch_size")
  sharding.check_batch(config.eval_batch_size, mesh, "eval_batch_size")
  return config.batch_size // config.microbatch_size


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (agreed across hosts)."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def check(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.max(flags))

  def restore(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  path = workdir / rundir.CONFIG
  text = config.to_json_best_effort(indent=1, sort_keys=True) + "\n"
  if path.exists() and path.read_text() != text:
    old, new = json.loads(path.read_text()), json.loads(text)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    logging.warning("%s differs from this run's config in %s; overwriting", path, changed)
  path.write_text(text)


@dataclasses.dataclass
class Built:
  """A task's model, optimiser and shardings on a mesh (no arrays allocated yet)."""

  task: tasks.Task
  config: ml_collections.ConfigDict
  abstract_state: TrainState  # ShapeDtypeStructs with their shardings
  state_shardings: TrainState
  param_shardings: object
  opt_shardings: object
  tx: optax.GradientTransformation
  lr: optax.Schedule
  init_key: jax.Array
  run_key: jax.Array

  def init_params(self):
    dummy = self.task.example_input()
    init = jax.jit(lambda k: nn.unbox(self.task.init(k, jnp.zeros(dummy.shape, dummy.dtype))
                                      ["params"]),
                   out_shardings=self.param_shardings)
    return init(self.init_key)

  def state_from(self, params) -> TrainState:
    replicated = self.state_shardings.step
    opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
    return TrainState(step=jax.device_put(jnp.int32(0), replicated), params=params,
                      opt_state=opt_state,
                      rng=jax.device_put(jax.random.key_data(self.run_key), replicated))

  def train_step(self, accumulation: int):
    """The jitted step; the input state is donated (updated in place)."""
    raw = steps.make_train_step(self.task.loss_fn, self.tx, self.lr, accumulation,
                                self.config.prng_impl)

    def constrained(state, batch):
      new_state, metrics = raw(state, batch)
      return jax.lax.with_sharding_constraint(new_state, self.state_shardings), metrics

    return jax.jit(constrained, donate_argnums=0)


def build(task, config: ml_collections.ConfigDict, mesh, total_steps: int) -> Built:
  """Shapes and shardings of the train state. Call under the mesh and logical rules.

  `task` needs `example_input()` (one microbatch's features, a ShapeDtypeStruct),
  `init(rng, features)`, `loss_fn(params, batch, rng, train)` and, for layer-wise LR
  decay, `depth`.
  """
  dummy = task.example_input()
  init_key, run_key = jax.random.split(jax.random.key(config.seed, impl=config.prng_impl))
  boxed = jax.eval_shape(lambda: task.init(init_key, jnp.zeros(dummy.shape, dummy.dtype)))
  param_shardings = sharding.param_shardings(boxed["params"], mesh)
  abstract_params = sharding.strip_boxes(boxed["params"])
  tx, lr = optimizer.make(config.optimizer, abstract_params, total_steps,
                          getattr(task, "depth", None))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = sharding.replicated(mesh)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated)
  state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                               rng=replicated)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                 opt_state=abstract_opt,
                 rng=jax.eval_shape(lambda: jax.random.key_data(run_key))),
      state_shardings)
  return Built(task=task, config=config, abstract_state=abstract_state,
               state_shardings=state_shardings, param_shardings=param_shardings,
               opt_shardings=opt_shardings, tx=tx, lr=lr, init_key=init_key, run_key=run_key)


@dataclasses.dataclass(frozen=True)
class Plan:
  """How long a run trains and when it evaluates."""

  total_steps: int  # the learning-rate schedule's length
  end_step: int  # where the run ends: total_steps, or earlier with stop_after_epochs
  eval_every: int  # steps between evaluations; 0: only at the end
  steps_per_epoch: float
  patience: int  # evaluations without improvement before stopping; 0: off


def plan(config: ml_collections.ConfigDict, task, accumulation: int, mesh) -> Plan:
  per_epoch = task.examples_per_epoch()
  steps_per_epoch = per_epoch / config.batch_size
  total_steps = config.num_steps or max(1, math.ceil(config.num_epochs * steps_per_epoch))
  end_step = total_steps
  if config.stop_after_epochs > 0:
    end_step = min(total_steps, max(1, math.ceil(config.stop_after_epochs * steps_per_epoch)))
  eval_every = config.eval_every_steps
  if config.eval_every_epochs > 0:
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
  patience = config.early_stopping.patience
  if task.evaluates_test and (eval_every or patience):
    # The held-out test set is scored once, at the end: evaluating it during training
    # would let checkpoint selection and early stopping see it.
    logging.warning("this run evaluates the test set: periodic evaluation and early stopping "
                    "are off (it is scored once, at step %d)", end_step)
    eval_every, patience = 0, 0
  if patience and not config.checkpoint.best_metric:
    raise ConfigError("early_stopping.patience needs checkpoint.best_metric (what to watch)")
  if patience and not eval_every:
    raise ConfigError("early_stopping.patience needs periodic evaluation (eval_every_steps or "
                      "eval_every_epochs)")
  logging.info("%s: %d training examples per epoch (%.1f steps), %d steps of %d (%d x %d "
               "accumulated)%s, evaluated every %s, mesh %s, %d process(es)", task.name,
               per_epoch, steps_per_epoch, total_steps, config.batch_size, accumulation,
               config.microbatch_size, f", ending at {end_step}" if end_step < total_steps else "",
               f"{eval_every} steps" + (f" (patience {patience})" if patience else "")
               if eval_every else "run (at the end)", dict(mesh.shape), jax.process_count())
  return Plan(total_steps=total_steps, end_step=end_step, eval_every=eval_every,
              steps_per_epoch=steps_per_epoch, patience=patience)


class EarlyStopping:
  """The best evaluation so far by one metric, and whether patience has run out.

  Rebuilt on resume from the run's metrics log, so a restored run stops where an
  uninterrupted one would.
  """

  def __init__(self, metric: str, mode: str, patience: int, min_delta: float):
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    self.best: float | None = None
    self.best_step: int | None = None
    self.last_step: int | None = None
    self.since_best = 0

  def update(self, step: int, metrics: dict) -> None:
    self.last_step = step
    value = metrics.get(self.metric) if self.metric else None
    if value is None or not math.isfinite(float(value)):
      self.since_best += 1
      if not self.metric:
        self.best_step = step  # nothing to compare: the last evaluation is selected
      return
    value = float(value)
    better = self.best is None or (value > self.best + self.min_delta if self.mode == "max"
                                   else value < self.best - self.min_delta)
    if better:
      self.best, self.best_step, self.since_best = value, step, 0
    else:
      self.since_best += 1

  @property
  def stop(self) -> bool:
    return self.patience > 0 and self.since_best >= self.patience

  def replay(self, evaluations: dict[int, dict], up_to_step: int) -> None:
    """Feeds the logged evaluations (`logged_evaluations`) up to `up_to_step`."""
    for step in sorted(s for s in evaluations if s <= up_to_step):
      self.update(step, evaluations[step])


def logged_evaluations(workdir: pathlib.Path) -> dict[int, dict]:
  """The evaluations in a run's metrics log, `{step: {"val/...": value}}`; a step logged
  again by a resumed run keeps its last entry."""
  if not (workdir / rundir.METRICS).is_file():
    return {}
  return {e["step"]: {k: v for k, v in e.items() if k.startswith("val/")}
          for e in metric_writer.read(workdir) if any(k.startswith("val/") for k in e)}


def _initial_state(built: Built, workdir: pathlib.Path, lead: bool) -> TrainState:
  """Fresh parameters, warm-started from `config.init` when it names a source (fine-tuning:
  the encoder, resized where needed; pre-training: continued, every shared parameter)."""
  config = built.config
  params = built.init_params()
  report = None
  if config.task == "finetune" and (config.init.checkpoint or config.init.converted):
    source, name, step = warm_start.load_source(config.init)
    params, report = warm_start.apply(params, source, name, step)
  elif config.task == "pretrain" and config.get("init", {}).get("checkpoint"):
    params, report = warm_start.continue_from(params, config.init.checkpoint)
  if report is not None:
    logging.info("%s", report.summary())
    if lead:
      warm_start.write(report, workdir)
  return built.state_from(params)


def _restore_or_initialise(built: Built, checkpointer: checkpointing.Checkpointer, train_iter,
                           workdir: pathlib.Path, resume: str | None, lead: bool
                           ) -> tuple[TrainState, str | None, float]:
  """Resume order: an explicit `resume`, then the latest checkpoint in the work directory,
  then initialisation. Returns (state, where it was restored from, earlier attempts' seconds)."""
  state, restored_from, earlier_seconds = None, None, 0.0
  if resume:
    directory, step = checkpointing.locate(resume)
    reader = checkpointing.Checkpointer(directory, read_only=True)
    step = step if step is not None else reader.latest_step()
    if step is None:
      raise checkpointing.CheckpointNotFoundError(f"{resume} holds no checkpoint")
    state = reader.restore(step, built.abstract_state, train_iter)
    reader.close()
    restored_from = f"{directory}/{step}"
  elif checkpointer.latest_step() is not None:
    state, step, skipped = checkpointer.restore_intact(
        lambda s: checkpointer.restore(s, built.abstract_state, train_iter))
    # The damaged checkpoints are newer than the one restored: removed, so this run can
    # save those steps again.
    for damaged, _ in skipped:
      checkpointer.delete(damaged)
    restored_from = f"{checkpointer.directory}/{step}"
    earlier_seconds = rundir.total_wall_seconds(rundir.read_result(workdir)) or 0.0
  else:
    state = _initial_state(built, workdir, lead)
  if restored_from:
    logging.info("resumed from %s (step %d)", restored_from, int(state.step))
  else:
    logging.info("initialised %d parameters", sum(x.size for x in jax.tree.leaves(state.params)))
  return state, restored_from, earlier_seconds


class _ProgressLog:
  """Averages the training metrics between log lines and times the steady-state steps."""

  def __init__(self, writer: MetricWriter, first_step: int, total_steps: int, batch_size: int):
    self._writer, self._first_step = writer, first_step
    self._total_steps, self._batch_size = total_steps, batch_size
    self._reset()

  def _reset(self) -> None:
    self._window: dict[str, float] = {}
    self._steps, self._timed, self._t0 = 0, 0, time.perf_counter()

  def add(self, step: int, metrics: dict) -> None:
    for k, v in metrics.items():
      if k != "finite":
        self._window[k] = self._window.get(k, 0.0) + float(v)
    self._steps += 1
    if step == self._first_step + 1:
      # The first step compiles: time the steady state from here on.
      self._t0 = time.perf_counter()
    else:
      self._timed += 1

  def write(self, step: int) -> None:
    rate = self._timed / (time.perf_counter() - self._t0) if self._timed else float("nan")
    scalars = {f"train/{k}": v / self._steps for k, v in self._window.items()}
    scalars.update({"perf/steps_per_second": rate,
                    "perf/examples_per_second": rate * self._batch_size})
    self._writer.write(step, scalars)
    logging.info("step %d/%d (%.0f%%) | loss %.4f | %.2f steps/s | %.1f examples/s | ETA %s",
                 step, self._total_steps, 100 * step / self._total_steps, scalars["train/loss"],
                 rate, rate * self._batch_size, _format_eta((self._total_steps - step) / rate))
    self._reset()


def _check_finite(metrics: dict, step: int, checkpointer: checkpointing.Checkpointer) -> None:
  if metrics["finite"]:
    return
  checkpointer.wait()
  last = checkpointer.latest_step()
  raise NonFiniteError(
      f"non-finite training at step {step}: loss {float(metrics['loss'])}, gradient "
      f"norm {float(metrics['grad_norm'])}; last good checkpoint: "
      + (f"{checkpointer.directory}/{last}" if last is not None else "none (no "
         "checkpoint was saved yet)")
      + ". Lower optimizer.peak_lr or check the inputs; --resume from that checkpoint.")


@dataclasses.dataclass
class _Loop:
  """What the step loop needs besides the state."""

  built: Built
  mesh: object
  train_iter: object
  checkpointer: checkpointing.Checkpointer
  workdir: pathlib.Path
  plan: Plan
  accumulation: int
  lead: bool
  stopping: EarlyStopping


def _evaluate(loop: _Loop, eval_step, params, step: int, writer: MetricWriter) -> dict:
  task = loop.built.task
  eval_metrics = task.evaluate(eval_step, params, loop.mesh)
  writer.write(step, eval_metrics)
  if loop.lead:
    task.write_evaluation(loop.workdir, step)
  loop.stopping.update(step, eval_metrics)
  logging.info("validation at step %d: %s", step, ", ".join(
      f"{k} {v:.4f}" for k, v in sorted(tasks.summary_metrics(eval_metrics).items())))
  return eval_metrics


def _train(loop: _Loop, state: TrainState) -> tuple[str, int]:
  """Steps until the plan's end, early stopping or SIGTERM; returns (stop reason, last step)."""
  config, plan = loop.built.config, loop.plan
  train_step = loop.built.train_step(loop.accumulation)
  eval_step = jax.jit(loop.built.task.make_eval_step())
  writer = MetricWriter(loop.workdir, enabled=loop.lead)
  preemption = _Preemption()
  step = int(state.step)
  progress = _ProgressLog(writer, step, plan.end_step, config.batch_size)
  stop = "stop_after_epochs" if plan.end_step < plan.total_steps else "schedule"
  if loop.stopping.stop:  # a resumed run whose patience had already run out
    return "early_stopping", step
  try:
    while step < plan.end_step:
      batch = sharding.global_batch(next(loop.train_iter), loop.mesh)
      state, metrics = train_step(state, batch)
      step += 1
      metrics = jax.device_get(metrics)
      _check_finite(metrics, step, loop.checkpointer)
      progress.add(step, metrics)
      last = step == plan.end_step
      if step % config.log_every_steps == 0 or last:
        progress.write(step)
      evaluate = last or (plan.eval_every and step % plan.eval_every == 0)
      eval_metrics = _evaluate(loop, eval_step, state.params, step, writer) if evaluate else None
      preempted = preemption.check()
      if evaluate or preempted or last or step % config.checkpoint.every_steps == 0:
        loop.checkpointer.save(step, state, loop.train_iter, metrics=eval_metrics)
      if preempted:
        stop = "sigterm"
        logging.warning("SIGTERM: saved checkpoint %s/%d; resume with the same command",
                        loop.checkpointer.directory, step)
        break
      if loop.stopping.stop:
        stop = "early_stopping"
        logging.info("early stopping at step %d: %s has not improved for %d evaluations (best "
                     "%.4f at step %d)", step, loop.stopping.metric, loop.stopping.since_best,
                     loop.stopping.best, loop.stopping.best_step)
        break
  finally:
    preemption.restore()
    writer.close()
  return stop, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       resume: str | None = None) -> Result:
  t_start = time.perf_counter()
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  if lead:
    _write_config(config, workdir)
  task = tasks.make(config, workdir)
  if lead:
    task.write_artifacts(workdir)
  mesh = sharding.make_mesh(config.mesh)
  accumulation = _check(config, mesh)
  task.check_inputs()
  run_plan = plan(config, task, accumulation, mesh)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    built = build(task, config, mesh, run_plan.total_steps)
    train_iter = task.train_iterator()
    checkpointer = checkpointing.Checkpointer(
        workdir / rundir.CHECKPOINTS, keep=config.checkpoint.keep,
        best_metric=config.checkpoint.best_metric, best_mode=config.checkpoint.best_mode,
        async_save=config.checkpoint.async_save)
    try:
      state, restored_from, earlier_seconds = _restore_or_initialise(
          built, checkpointer, train_iter, workdir, resume, lead)
      first_step = int(state.step)
      stopping = EarlyStopping(config.checkpoint.best_metric, config.checkpoint.best_mode,
                               run_plan.patience, config.early_stopping.min_delta)
      if first_step:
        stopping.replay(logged_evaluations(workdir), first_step)
      stop, step = _train(
          _Loop(built=built, mesh=mesh, train_iter=train_iter, checkpointer=checkpointer,
                workdir=workdir, plan=run_plan, accumulation=accumulation, lead=lead,
                stopping=stopping), state)
    finally:
      checkpointer.close()
  seconds = time.perf_counter() - t_start
  selected = stopping.best_step if stopping.best_step is not None else stopping.last_step
  result = Result(
      status="preempted" if stop == "sigterm" else "finished", step=step,
      total_steps=run_plan.total_steps, metrics=logged_evaluations(workdir).get(selected, {}),
      wall_seconds=round(seconds, 1), total_wall_seconds=round(earlier_seconds + seconds, 1),
      stop=stop, selected_step=selected,
      selected_epoch=None if selected is None else round(selected / run_plan.steps_per_epoch, 4),
      steps_per_epoch=round(run_plan.steps_per_epoch, 4))
  if lead:
    (workdir / rundir.RESULT).write_text(json.dumps(
        {**dataclasses.asdict(result), "first_step": first_step,
         "restored_from": restored_from}, indent=1, default=float) + "\n")
  return result
