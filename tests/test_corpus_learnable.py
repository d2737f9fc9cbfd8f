"""The demo corpus's factors are audible: pooled log-mel statistics predict its labels.

A ridge regression on simple statistics of the rendered audio (band means and
spreads, loudness percentiles, onset-strength regularity) must reach Pearson
>= 0.5 on held-out movements for the Timing and Dynamics groups. This proves
the labels come from what is heard, not only from what was written into them.
"""


import numpy as np
import pytest

from pipelines import process_pool
from pipelines.audio import features, render
from pipelines.corpus import make_corpus
from pipelines.datasets import percepiano, splits, taxonomy

# Renders all 320 demo clips (~45 s on 2 cores): in make test-slow (and CI), to keep make test
# under 15 minutes; make demo's ridge row shows the same property on every demo run.
pytestmark = pytest.mark.slow


def _pooled_statistics(path) -> np.ndarray:
  logmel = features.log_mel(render.render_midi(path).samples)  # [frames, 128]
  energy = np.log(np.exp(logmel).sum(axis=1))
  flux = np.maximum(np.diff(logmel, axis=0), 0.0).sum(axis=1)  # onset strength
  onset = flux - flux.mean()
  autocorr = np.correlate(onset, onset, "full")[len(onset) - 1:]
  autocorr /= autocorr[0] + 1e-9
  periodic = autocorr[20:150]  # 0.2-1.5 s: beat periodicity, smeared by jitter and rubato
  peaks = np.flatnonzero((flux[1:-1] > flux[:-2]) & (flux[1:-1] >= flux[2:])
                         & (flux[1:-1] > flux.mean() + flux.std())) + 1
  ioi = np.diff(peaks) / 100.0 if len(peaks) > 2 else np.array([0.5, 0.5])
  return np.concatenate([
      logmel.mean(axis=0)[::4], logmel.std(axis=0)[::4],
      np.percentile(energy, [10, 50, 90]),
      [energy.std(), flux.mean(), flux.std(), periodic.max(), periodic.std(),
       np.log(ioi.mean()), ioi.std() / ioi.mean(), len(peaks) / len(logmel) * 100,
       len(logmel) / 100.0],
  ])


@pytest.fixture(scope="module")
def demo_statistics(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo") / "corpus"
  make_corpus.make_corpus(out, "demo", seed=0, parts=("percepiano",))
  release = percepiano.read_release(out / "percepiano")
  # In make test-slow this process has started JAX's threads by now: spawn, never fork.
  with process_pool.spawning(2) as pool:
    x = np.stack(list(pool.map(_pooled_statistics, [p.midi_path for p in release.performances],
                               chunksize=8)))
  y = np.stack([p.labels for p in release.performances])
  split = splits.piece_split(release.performances, test_fraction=0.25, num_folds=1, seed=0)
  test = np.isin([p.key.text for p in release.performances], split.test)
  return x, y, test


def _ridge_group_pearson(x, y, test, alpha=100.0):
  train = ~test
  mean, std = x[train].mean(0), x[train].std(0) + 1e-9
  xs = (x - mean) / std
  y_mean = y[train].mean(0)
  w = np.linalg.solve(xs[train].T @ xs[train] + alpha * np.eye(xs.shape[1]),
                      xs[train].T @ (y[train] - y_mean))
  pred = xs[test] @ w + y_mean
  r = [np.corrcoef(pred[:, d], y[test][:, d])[0, 1] for d in range(taxonomy.NUM_DIMENSIONS)]
  return {g: float(np.mean([r[i] for i in dims])) for g, dims in taxonomy.GROUPS.items()}


def test_timing_and_dynamics_are_learnable_from_audio(demo_statistics):
  x, y, test = demo_statistics
  assert 50 <= test.sum() <= 100  # whole held-out movements
  pearson = _ridge_group_pearson(x, y, test)
  assert pearson["timing"] >= 0.5, pearson
  assert pearson["dynamics"] >= 0.5, pearson


def test_the_same_probe_fails_on_shuffled_labels(demo_statistics):
  x, y, test = demo_statistics
  shuffled = y[np.random.default_rng(0).permutation(len(y))]
  pearson = _ridge_group_pearson(x, shuffled, test)
  assert pearson["timing"] < 0.3 and pearson["dynamics"] < 0.3, pearson
