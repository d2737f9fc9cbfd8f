"""One job per output directory, and no scratch left behind by a job that died.

A job holds an exclusive `flock` on `.NAME.lock` beside its output directory for as
long as it runs. The kernel drops the lock when the process ends, however it ends
(SIGKILL included), so:

- a second job on the same output finds the lock held and is refused, naming the
  holder's pid: two jobs never interleave their shards;
- a job that gets the lock knows that every `.NAME.partial-*` beside the output
  belongs to a job that is no longer running, and removes it before it starts, so
  a killed job rerun with the same command leaves only its own finished output.

The lock file itself stays (removing it would let a job that opened it just before
the removal lock a file no one else sees). Local filesystems only: object stores
(gs://, s3://) have no locks; there a dead job's partial output stays, named as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil

from absl import logging

from pipelines.beam import writer


class OutputLockedError(RuntimeError):
  """Another running job is writing the same output directory."""


@contextlib.contextmanager
def held(output_dir: str):
  """Holds the output's lock for the `with` block; removes dead jobs' partial outputs."""
  if not writer.is_local(output_dir):
    yield
    return
  path = pathlib.Path(output_dir.rstrip("/")).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  # O_CLOEXEC: Beam's worker processes must not inherit (and so keep) the lock.
  fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      raise OutputLockedError(f"{path} is being written by another job (pid {holder}); wait "
                              "for it to finish or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    for stale in sorted(path.parent.glob(f".{path.name}.partial-*")):
      logging.warning("removing %s, left by a job that did not finish", stale)
      shutil.rmtree(stale)
    yield
  finally:
    os.close(fd)  # releases the lock
