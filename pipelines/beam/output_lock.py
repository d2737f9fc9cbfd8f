"""One job per output directory, and no scratch left behind by a job that died.

A job holds its output's lock (`pipelines.lockfile`: an exclusive `flock` on
`.NAME.lock` beside the output directory) for as long as it runs, so:

- a second job on the same output finds the lock held and is refused, naming the
  holder's pid: two jobs never interleave their shards;
- a job that gets the lock knows that every `.NAME.partial-*` beside the output
  belongs to a job that is no longer running, and removes it before it starts, so
  a killed job rerun with the same command leaves only its own finished output.

Local filesystems only: object stores (gs://, s3://) have no locks; there a dead
job's partial output stays, named as such.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil

from absl import logging

from pipelines import lockfile
from pipelines.beam import writer


class OutputLockedError(lockfile.LockedError):
  """Another running job is writing the same output directory."""


@contextlib.contextmanager
def held(output_dir: str):
  """Holds the output's lock for the `with` block; removes dead jobs' partial outputs."""
  if not writer.is_local(output_dir):
    yield
    return
  path = pathlib.Path(output_dir.rstrip("/")).absolute()
  with lockfile.exclusive(path, "written", OutputLockedError):
    for stale in sorted(path.parent.glob(f".{path.name}.partial-*")):
      logging.warning("removing %s, left by a job that did not finish", stale)
      shutil.rmtree(stale)
    yield
