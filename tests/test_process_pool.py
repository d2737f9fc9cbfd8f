"""The library's process pools spawn their workers: nothing of the caller's threads is inherited.

CI saw a forked worker segfault in librosa's numba peak picker after the pytest process had
started JAX, and the broken pool then hung the run into its time limit.
"""

import sys

import jax.numpy as jnp
import numpy as np

from pipelines import process_pool
from pipelines.audio import clip_statistics


def test_workers_start_without_the_callers_modules():
  float(jnp.ones(4).sum())  # the caller has JAX (and its threads) running
  assert "jax" in sys.modules
  with process_pool.spawning(2) as pool:
    # A forked worker would hold every module this process has imported, JAX included.
    loaded = pool.submit(eval, "'jax' in __import__('sys').modules").result(timeout=120)
  assert loaded is False


def test_clip_statistics_match_in_and_out_of_the_pool():
  rng = np.random.default_rng(0)
  clips = [(0.1 * rng.standard_normal(16000 * 3)).astype(np.float32) for _ in range(3)]
  clip_statistics.compute(clips[0])  # numba's kernels compiled and its threads started here
  with process_pool.spawning(2) as pool:
    pooled = list(pool.map(clip_statistics.compute, clips))
  # To float32 rounding: the onset-strength statistics sum in an order that depends on the
  # process's BLAS threads (seen: 4 of 828 values one ulp apart under make test's load).
  np.testing.assert_allclose(np.stack(pooled), np.stack([clip_statistics.compute(c) for c in clips]),
                             rtol=1e-6, atol=1e-7)
