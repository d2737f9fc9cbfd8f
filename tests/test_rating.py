"""pipelines.corpus.rating: the mapping, the panel and the release's label rule."""

import numpy as np
import pytest

from pipelines.corpus import performance, rating
from pipelines.datasets import taxonomy


def test_mapping_covers_every_dimension_with_known_regressors():
  assert set(rating.MAPPING) == set(taxonomy.DIMENSION_NAMES)
  for terms, strength in rating.MAPPING.values():
    assert set(terms) <= set(rating.REGRESSORS) and 0 < strength <= 1


def test_latent_scores_have_unit_variance_over_the_factor_distribution():
  rng = np.random.default_rng(0)
  rows = np.stack([rating.regressors(performance.draw_factors(rng), bool(rng.random() < 0.4))
                   for _ in range(20_000)])
  scores = rows @ rating.weight_matrix().T
  np.testing.assert_allclose(scores.std(axis=0), 1.0, atol=0.05)


def test_labels_follow_the_release_rule():
  panel = rating.Panel(
      rater=np.array([0, 1, 2, 3, 3]),
      clip=np.array([0, 0, 0, 0, 1]),
      answers=np.array([[7.0] * 19, [5.0] * 19, [9.0] + [1.0] * 18, [0.0] + [3.0] * 18,
                        [2.0] * 19]))
  labels, stds = rating.labels_from_panel(panel, 2)
  # Row 2 holds a 9: dropped whole. Row 3's dimension 0 is missing (0).
  assert labels[0, 0] == pytest.approx(6 / 7)  # (7 + 5) / 2
  assert labels[0, 1] == pytest.approx(5 / 7)  # (7 + 5 + 3) / 3
  assert stds[0, 0] == pytest.approx(1 / 7)  # population std of {7, 5}
  assert labels[1, 0] == pytest.approx(2 / 7) and stds[1, 0] == 0.0


def test_a_clip_without_valid_answers_is_an_error():
  panel = rating.Panel(rater=np.array([0]), clip=np.array([0]),
                       answers=np.array([[9.0] * 19]))
  with pytest.raises(ValueError, match="no valid answer"):
    rating.labels_from_panel(panel, 1)


def test_panel_answers_are_integers_1_to_7_or_quirks():
  rng = np.random.default_rng(0)
  means = rng.uniform(1, 7, (200, 19))
  bias = rng.normal(0, rating.RATER_BIAS_SD, (30, 19))
  panel = rating.simulate_panel(means, bias, rng, (5, 10))
  invalid = np.any(panel.answers > 7, axis=1)
  valid = panel.answers[~invalid]
  assert set(np.unique(valid)) <= set(range(8))
  # The release's quirks appear: invalid rows, missing answers, exact duplicate rows.
  assert 0 < invalid.mean() < 0.05 and np.any(valid == 0)
  rows = {(r, c, a.tobytes()) for r, c, a in zip(panel.rater, panel.clip, panel.answers)}
  assert len(rows) < len(panel.rater)
  assert np.all(panel.answers == np.round(panel.answers))
  # Every clip keeps at least MIN_VALID_RATERS complete answers.
  labels, _ = rating.labels_from_panel(panel, 200)
  assert np.all((labels >= 1 / 7) & (labels <= 1))


def test_ceiling_is_high_for_clean_signal_and_low_for_pure_noise():
  rng = np.random.default_rng(1)
  bias = rng.normal(0, rating.RATER_BIAS_SD, (30, 19))
  passages = [f"p{i // 4}" for i in range(200)]
  spread = np.repeat(rng.uniform(2, 6, (200, 1)), 19, axis=1)
  flat = np.full((200, 19), 4.0)
  for means, low, high in ((spread, 0.9, 1.0), (flat, -0.3, 0.3)):
    panel = rating.simulate_panel(means, bias, rng, (8, 12))
    labels, _ = rating.labels_from_panel(panel, 200)
    c = rating.ceiling(means, labels, passages, bias, rng, (8, 12), replicates=16)
    assert np.all((c["overall"] > low) & (c["overall"] < high))
