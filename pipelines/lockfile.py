"""One process at a time per output: an exclusive `flock` on `.NAME.lock` beside it.

The kernel drops the lock when its process ends, however it ends (SIGKILL
included), so a second process on the same output finds it held and is refused,
naming the holder's pid, while a rerun after a crash simply gets it. The lock file
itself stays (removing it would let a process that opened it just before the
removal lock a file no one else sees). Local filesystems only: object stores have
no locks. The Beam jobs (`pipelines.beam.output_lock`) and the trainer's work
directory (`train.main`) use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib


class LockedError(RuntimeError):
  """Another running process holds the output's lock."""


@contextlib.contextmanager
def exclusive(path: str | pathlib.Path, doing: str, error: type[LockedError] = LockedError):
  """Holds `path`'s lock for the `with` block; raises `error` ("PATH is being `doing` by
  another process ...") when a live process holds it."""
  path = pathlib.Path(str(path).rstrip("/")).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  # O_CLOEXEC: subprocesses (Beam's workers) must not inherit, and so keep, the lock.
  fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      raise error(f"{path} is being {doing} by another process (pid {holder}); wait for it "
                  "to finish or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def for_workdir(workdir: str, doing: str, lead: bool = True):
  """`exclusive(workdir)` for the lead process of a local work directory; a no-op for the
  other hosts of a multi-host run (the lead's lock speaks for them) and for object stores."""
  if not lead or "://" in str(workdir):
    return contextlib.nullcontext()
  return exclusive(workdir, doing)
