"""Perceptual truth and a simulated listening panel for the generated PercePiano corpus.

Factor -> dimension mapping (weights on factors standardised to [-1, 1] over
their draw ranges; `minor` is +1 for minor-key movements, -1 for major;
`tempo_extremity` is 2|tempo_z| - 1, a deliberately non-linear term):

  dim                      weights                                          strength
  0  timing_stability      jitter +0.8, rubato +0.4                          1.0
  1  articulation_length   articulation +0.9, pedal +0.3                     1.0
  2  articulation_touch    accents +0.6, velocity +0.5                       1.0
  3  pedal_amount          pedal +1.0                                        1.0
  4  pedal_clarity         pedal_blur +0.7, pedal +0.5                       1.0
  5  timbre_variety        dynamic_range +0.5, voicing +0.4                  0.8
  6  timbre_depth          pedal +0.4, velocity +0.3, voicing +0.3           0.8
  7  timbre_brightness     velocity -0.4                                     0.35 (weak)
  8  timbre_loudness       velocity +1.0                                     1.0
  9  dynamic_sophistication accents +0.6, jitter +0.3, voicing -0.3          0.8
  10 dynamic_range         dynamic_range +1.0, accents +0.2                  1.0
  11 pace                  tempo -1.0                                        1.0
  12 spaciousness          rubato +0.5, pedal +0.3, dynamic_range +0.3       0.8
  13 balance               voicing +0.6, jitter -0.3                         0.8
  14 dramatic              dynamic_range +0.5, rubato +0.4, accents +0.3     0.8
  15 mood                  minor +0.6, tempo -0.2                            0.8 (mostly the music)
  16 energy                tempo +0.5, velocity +0.5, accents +0.3           1.0
  17 imagination           rubato +0.2                                       0.35 (weak)
  18 interpretation        jitter -0.5, voicing +0.3, tempo_extremity -0.4   0.6

Per clip, dimension d has a true mean rating
  mu_d = 4 + 1.2 * strength_d * s_d + passage_d,
where s_d is the weighted sum scaled to unit variance over the factor
distribution and passage_d ~ N(0, 0.35) is shared by every rendition of one
passage (in the real data much of the variance is which passage is played).
Raters add a per-(rater, dimension) bias ~ N(0, 0.5) and noise ~ N(0, 0.9);
answers are rounded and clipped to 1..7. The raw CSV follows the release's
quirks: some answers are missing (empty or 0), a few rows hold an answer above
7 and are invalid, a few rows are exact duplicates (and, as in the release,
count twice). Labels = mean of the valid answers / 7; std = population std / 7.

The ceiling of a dimension is the Pearson correlation between the labels and
the best possible predictor, E[label | clip], estimated by re-running the
panel many times on the same clips.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.corpus import performance
from pipelines.datasets import percepiano, taxonomy

# dim name -> ({regressor: weight}, strength)
MAPPING: dict[str, tuple[dict[str, float], float]] = {
    "timing_stability": ({"jitter_s": 0.8, "rubato": 0.4}, 1.0),
    "articulation_length": ({"articulation": 0.9, "pedal": 0.3}, 1.0),
    "articulation_touch": ({"accents": 0.6, "velocity": 0.5}, 1.0),
    "pedal_amount": ({"pedal": 1.0}, 1.0),
    "pedal_clarity": ({"pedal_blur": 0.7, "pedal": 0.5}, 1.0),
    "timbre_variety": ({"dynamic_range": 0.5, "voicing": 0.4}, 0.8),
    "timbre_depth": ({"pedal": 0.4, "velocity": 0.3, "voicing": 0.3}, 0.8),
    "timbre_brightness": ({"velocity": -0.4}, 0.35),
    "timbre_loudness": ({"velocity": 1.0}, 1.0),
    "dynamic_sophistication": ({"accents": 0.6, "jitter_s": 0.3, "voicing": -0.3}, 0.8),
    "dynamic_range": ({"dynamic_range": 1.0, "accents": 0.2}, 1.0),
    "pace": ({"tempo": -1.0}, 1.0),
    "spaciousness": ({"rubato": 0.5, "pedal": 0.3, "dynamic_range": 0.3}, 0.8),
    "balance": ({"voicing": 0.6, "jitter_s": -0.3}, 0.8),
    "dramatic": ({"dynamic_range": 0.5, "rubato": 0.4, "accents": 0.3}, 0.8),
    "mood": ({"minor": 0.6, "tempo": -0.2}, 0.8),
    "energy": ({"tempo": 0.5, "velocity": 0.5, "accents": 0.3}, 1.0),
    "imagination": ({"rubato": 0.2}, 0.35),
    "interpretation": ({"jitter_s": -0.5, "voicing": 0.3, "tempo_extremity": -0.4}, 0.6),
}
REGRESSORS = performance.FACTOR_NAMES + ("minor", "tempo_extremity")
# Variance of each regressor over the generating distribution: uniform on
# [-1, 1] -> 1/3; `minor` is +-1 with P(minor) = 0.4 -> 1 - 0.2**2.
_REGRESSOR_VARIANCE = {**{f: 1 / 3 for f in performance.FACTOR_NAMES},
                       "minor": 0.96, "tempo_extremity": 1 / 3}

SIGNAL_SD = 1.2
PASSAGE_SD = 0.35
RATER_BIAS_SD = 0.5
RATER_NOISE_SD = 0.9
MISSING_RATE = 0.02
INVALID_ROW_RATE = 0.02  # of rows after the first 3 per clip; the release: 1.4 % of all rows
DUPLICATE_ROW_RATE = 0.01
MIN_VALID_RATERS = 3  # the first raters of a clip never skip an answer


def weight_matrix() -> np.ndarray:
  """`[19, len(REGRESSORS)]` weights, each row scaled so s_d has unit variance."""
  weights = np.zeros((taxonomy.NUM_DIMENSIONS, len(REGRESSORS)))
  for d, name in enumerate(taxonomy.DIMENSION_NAMES):
    terms, _ = MAPPING[name]
    for regressor, w in terms.items():
      weights[d, REGRESSORS.index(regressor)] = w
    variance = sum(w**2 * _REGRESSOR_VARIANCE[r] for r, w in terms.items())
    weights[d] /= np.sqrt(variance)
  return weights


def regressors(factors: performance.Factors, minor: bool) -> np.ndarray:
  z = performance.standardized(factors)
  tempo_z = z[performance.FACTOR_NAMES.index("tempo")]
  return np.concatenate([z, [1.0 if minor else -1.0, 2.0 * abs(tempo_z) - 1.0]])


def true_means(regressor_rows: np.ndarray, passage_effects: np.ndarray) -> np.ndarray:
  """`[clips, 19]` true mean ratings on the 1..7 scale."""
  strength = np.array([MAPPING[n][1] for n in taxonomy.DIMENSION_NAMES])
  return 4.0 + SIGNAL_SD * strength * (regressor_rows @ weight_matrix().T) + passage_effects


@dataclasses.dataclass(frozen=True)
class Panel:
  """Raw answers: one row per (rater, clip) answer, as in `total_2rounds.csv`."""

  rater: np.ndarray  # [rows] rater index
  clip: np.ndarray  # [rows] clip index
  answers: np.ndarray  # [rows, 19] float: 1..7, 0 = missing, > 7 = invalid row


def simulate_panel(means: np.ndarray, rater_bias: np.ndarray, rng: np.random.Generator,
                   raters_per_clip: tuple[int, int]) -> Panel:
  """Draws each clip's raters from the pool and their answers."""
  num_raters = rater_bias.shape[0]
  raters, clips, answers = [], [], []
  for c, mu in enumerate(means):
    count = int(rng.integers(raters_per_clip[0], raters_per_clip[1] + 1))
    for i, r in enumerate(rng.choice(num_raters, size=count, replace=False)):
      noise = rng.normal(0.0, RATER_NOISE_SD, size=mu.shape)
      a = np.clip(np.round(mu + rater_bias[r] + noise), 1, 7)
      if i >= MIN_VALID_RATERS:
        a[rng.random(a.shape) < MISSING_RATE] = 0.0
        if rng.random() < INVALID_ROW_RATE:
          a[int(rng.integers(a.shape[0]))] = float(rng.integers(8, 10))
      raters.append(r)
      clips.append(c)
      answers.append(a)
      if rng.random() < DUPLICATE_ROW_RATE:
        raters.append(r)
        clips.append(c)
        answers.append(a.copy())
  return Panel(np.asarray(raters), np.asarray(clips), np.asarray(answers))


def labels_from_panel(panel: Panel, num_clips: int) -> tuple[np.ndarray, np.ndarray]:
  """The release's label rule (`percepiano.RawRatings.labels`) applied to the panel.

  Returns (mean / 7, population std / 7), each `[num_clips, 19]`.
  """
  raw = percepiano.RawRatings(users=panel.rater, keys=tuple(str(c) for c in panel.clip),
                              answers=panel.answers)
  labels = raw.labels()
  missing = set(map(str, range(num_clips))) - labels.keys()
  if missing:
    raise ValueError(f"clips {sorted(missing, key=int)[:10]} have no valid answer")
  return (np.stack([labels[str(c)][0] for c in range(num_clips)]),
          np.stack([labels[str(c)][1] for c in range(num_clips)]))


def ceiling(means: np.ndarray, labels: np.ndarray, passages: list[str],
            rater_bias: np.ndarray, rng: np.random.Generator,
            raters_per_clip: tuple[int, int], replicates: int = 64) -> dict[str, np.ndarray]:
  """Per-dimension Pearson of the labels with E[label | clip], overall and within passage."""
  expected = np.zeros_like(labels)
  for _ in range(replicates):
    panel = simulate_panel(means, rater_bias, rng, raters_per_clip)
    expected += labels_from_panel(panel, len(means))[0]
  expected /= replicates
  groups = np.unique(np.asarray(passages), return_inverse=True)[1]

  def centred(x):
    sums = np.zeros((groups.max() + 1, x.shape[1]))
    np.add.at(sums, groups, x)
    return x - (sums / np.bincount(groups)[:, None])[groups]

  def pearson(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))

  return {"overall": pearson(expected, labels),
          "within_passage": pearson(centred(expected), centred(labels))}
