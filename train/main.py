"""Command line of the trainer.

  python -m train.main --config=train/configs/pretrain.py:tiny --workdir=W \
      --config.data_dir=SHARDS [--config.num_steps=100 ...] [--resume=PATH]

Multi-host (a TPU pod slice, or several CPU processes): the same command on
every host, plus `--distributed` (Cloud TPU / SLURM: JAX finds the coordinator
itself) or the explicit `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`. Exit status: 0 finished, 143 stopped by SIGTERM after saving,
1 on errors (NaN/inf included).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pipelines import entry_point, lockfile
from train import checkpointing, configs, trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Training config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints, logs and the resolved config.",
                      required=True)
  flags.DEFINE_string("resume", None, "Checkpoint to resume from (work dir, checkpoints dir "
                      "or step dir); default: the latest in --workdir, else a fresh start.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detected "
                    "cluster), also implied by --coordinator_address.")
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
  flags.DEFINE_integer("num_processes", None, "Number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes.")
  flags.mark_flags_as_required(["config"])


def _initialize_distributed() -> None:
  if not (FLAGS.distributed or FLAGS.coordinator_address):
    return
  kwargs = {"initialization_timeout": FLAGS.initialization_timeout}
  if FLAGS.coordinator_address:
    kwargs.update(coordinator_address=FLAGS.coordinator_address,
                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  jax.distributed.initialize(**kwargs)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpointing.quiet_orbax_logs()
  # Before any other JAX computation: initialize() must come first, and only once.
  _initialize_distributed()
  logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    # One trainer per work directory: a second one (a rerun while an orphaned run still
    # writes, say) would interleave its checkpoints with the first's.
    with lockfile.for_workdir(FLAGS.workdir, "trained", jax.process_index() == 0):
      result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume)
  except (trainer.NonFiniteError, trainer.ConfigError, ValueError, FileNotFoundError,
          lockfile.LockedError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")
  if result.status == "preempted":
    sys.exit(trainer.PREEMPTED_EXIT_CODE)


def cli() -> None:
  """Console entry point (`ppt-train`)."""
  entry_point.run(__doc__, define_flags, main, argv=configs.resolve_argv(sys.argv))


if __name__ == "__main__":
  cli()
