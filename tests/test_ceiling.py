"""eval.ceiling: split-half + Spearman-Brown against the true ceiling of a simulated panel."""

import json
import subprocess
import sys

import numpy as np
import pytest

from eval import ceiling
from pipelines.corpus import rating
from pipelines.datasets import percepiano, taxonomy


def _simulated_release(seed: int, passages: int = 60, performers: int = 5):
  """A rated corpus with known truth: means, a rater pool with biases, the raw answers."""
  rng = np.random.default_rng(seed)
  n = passages * performers
  passage_effect = np.repeat(rng.normal(0, 0.2, (passages, 19)), performers, axis=0)
  # Dimensions of very different reliability: signal sd from 0.1 to 1.2 rating points.
  signal = np.linspace(0.05, 1.2, 19)
  means = 4 + passage_effect + rng.normal(size=(n, 19)) * signal
  bias = rng.normal(0, rating.RATER_BIAS_SD, (40, 19))
  keys = [f"Synth_W{p}_8bars_{k + 1}_{p:02d}" for p in range(passages) for k in range(performers)]
  return means, bias, keys, [percepiano.parse_key(k).passage for k in keys], rng


def _raw(panel: rating.Panel, keys) -> percepiano.RawRatings:
  return percepiano.RawRatings(users=panel.rater, keys=tuple(keys[c] for c in panel.clip),
                               answers=panel.answers)


def test_spearman_brown_doubles_a_test():
  # A half-test reliability of 0.5 steps up to 2/3; 0 and 1 are fixed points.
  np.testing.assert_allclose(ceiling.spearman_brown([0.5, 0.0, 1.0]), [2 / 3, 0.0, 1.0])


def test_ceiling_estimates_the_true_correlation_of_labels_with_expected_labels():
  means, bias, keys, passages, rng = _simulated_release(0, passages=100, performers=4)
  panel = rating.simulate_panel(means, bias, rng, (5, 19))
  labels, _ = rating.labels_from_panel(panel, len(means))
  truth = rating.ceiling(means, labels, passages, bias, rng, (5, 19), replicates=32)
  est = ceiling.split_half(_raw(panel, keys), splits=30, seed=1)
  assert est.performances == len(keys)
  # 19 dimensions whose true ceilings span ~0.5-0.96. Tolerances are the sampling
  # noise of 400 performances (measured over seeds: mean |error| 0.012-0.019 overall,
  # 0.026-0.047 within passage, which has only 4 performances per passage).
  assert truth["overall"].min() < 0.6 and truth["overall"].max() > 0.95
  error = est.pearson - truth["overall"]
  assert abs(error.mean()) < 0.02 and np.abs(error).mean() < 0.025
  assert np.abs(est.pearson_within - truth["within_passage"]).mean() < 0.06
  np.testing.assert_allclose(est.reliability, truth["overall"] ** 2, atol=0.15)
  # Without the Spearman-Brown step the ceiling is biased low by ~0.09.
  half_only = np.sqrt(np.clip(est.split_half, 0, 1))
  assert np.mean(half_only - truth["overall"]) < -0.05


def test_invalid_rows_and_restricting_keys(tmp_path):
  means, bias, keys, _, rng = _simulated_release(1, passages=10)
  panel = rating.simulate_panel(means, bias, rng, (6, 10))
  raw = _raw(panel, keys)
  subset = keys[:20]
  est = ceiling.split_half(raw, subset, splits=5)
  assert est.performances == 20
  with pytest.raises(percepiano.PercePianoError, match="no valid rating row"):
    ceiling.split_half(raw, [*subset, "Synth_Missing_8bars_1_01"], splits=2)
  # A performance left with a single valid row cannot be split.
  answers = raw.answers.copy()
  rows = np.flatnonzero(np.asarray(raw.keys) == keys[0])
  answers[rows[1:], 0] = 9.0  # invalid rows are dropped
  lonely = percepiano.RawRatings(users=raw.users, keys=raw.keys, answers=answers)
  with pytest.raises(percepiano.PercePianoError, match="fewer than 2 valid listeners"):
    ceiling.split_half(lonely, splits=2)
  assert ceiling.split_half(lonely, keys[1:], splits=2).performances == len(keys) - 1


def test_cli_on_the_real_release(percepiano_dir, tmp_path):
  out = tmp_path / "ceiling.json"
  proc = subprocess.run([sys.executable, "-m", "eval.ceiling", f"--percepiano_dir={percepiano_dir}",
                         "--splits=10", f"--output_json={out}"], capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["performances"] == 1202
  for name in taxonomy.DIMENSION_NAMES:
    assert 0 < result["pearson_within"][name] <= result["pearson"][name] <= 1 or \
        0 < result["pearson"][name] <= 1
  assert "timing" in proc.stdout and "1202 performances" in proc.stdout


def _panel_with_repeats(means: np.ndarray, rng, listeners: int = 8, pool: int = 40):
  """Raw answers where each listener answers a clip 1-3 times: the repeats share the listener's
  view of that clip (a listener x clip error), only a small per-answer error differs."""
  users, clips, answers = [], [], []
  for c, mean in enumerate(means):
    for u in rng.choice(pool, listeners, replace=False):
      view = mean + rng.normal(0, 0.8, mean.shape)
      for _ in range(rng.integers(1, 4)):
        users.append(u)
        clips.append(c)
        answers.append(np.clip(view + rng.normal(0, 0.25, mean.shape), 0.5, 7.0))
  return np.array(users), np.array(clips), np.array(answers)


def test_repeated_answers_bias_a_row_split_up_and_the_listener_split_is_unbiased():
  means, _, keys, _, rng = _simulated_release(2, passages=80, performers=5)
  users, clips, answers = _panel_with_repeats(means, rng)
  raw = percepiano.RawRatings(users=users, keys=tuple(keys[c] for c in clips), answers=answers)
  # The true ceiling: how well the expected rating correlates with the panel's label, over
  # fresh panels of the same design (labels average rows, as the release's rule does).
  truth = []
  for _ in range(6):
    u, c, a = _panel_with_repeats(means, rng)
    labels = np.stack([a[c == k].mean(axis=0) for k in range(len(means))])
    truth.append([np.corrcoef(labels[:, d], means[:, d])[0, 1] for d in range(19)])
  truth = np.mean(truth, axis=0)
  by_listener = ceiling.split_half(raw, splits=20, seed=0)
  by_row = ceiling.split_half(raw, splits=20, seed=0, unit="row")
  assert by_listener.unit == "listener" and by_row.unit == "row"
  assert by_listener.listeners_per_performance == (8.0, 8.0, 8.0)
  assert by_listener.raters_per_performance[1] > 12  # ~16 answer rows per clip
  listener_error = by_listener.pearson - truth
  row_error = by_row.pearson - truth
  assert abs(listener_error.mean()) < 0.015
  assert row_error.mean() > 0.03 and row_error.mean() > listener_error.mean() + 0.03
  with pytest.raises(ValueError, match="unit must be"):
    ceiling.split_half(raw, splits=1, unit="answer")
