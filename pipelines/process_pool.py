"""Process pools whose workers start clean: spawned, never forked.

The callers of these pools (the ridge and benchmark CLIs, tests, notebooks) have often started
JAX's or numba's thread pools already. A forked child inherits those threads' locks in whatever
state they were in and no thread to release them: CI saw librosa's numba peak picker segfault in
a forked worker, and the hung pool then ran the job into its time limit. A spawned worker imports
what it needs afresh (a few seconds, once per pool), so it is safe under any caller. As with any
spawning pool, a script that uses one needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing


def spawning(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """A process pool of `workers` (at least 1) spawned workers."""
  return concurrent.futures.ProcessPoolExecutor(
      max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))
