"""The notes model: a perception ridge learned on exact notes, read from a transcription.

Every training performance has its MIDI, so the ridge that maps note statistics to ratings
can be fitted where the statistics are exact (the MIDI's: what `oracle-notes` is fitted
on), instead of on a transcription's noisy estimate of them. A held-out performance has only
its audio: its statistics are estimated from the transcription, by an estimator fitted on
the training performances to map what the transcription gives (its 39 note statistics and
the 24 statistics of its frame probabilities) to what the MIDI gives (the 39 note
statistics). Between the notes model and `oracle-notes` the only difference is then the
statistics a performance is read from, which is what the bar "notes against oracle-notes"
is meant to measure.

Why not the ridge on the transcription's statistics (the notes model until 2026-12-05)?
Measured on the piece folds: the transcription gets velocity, articulation, pedal and
polyphony statistics a little wrong at once, and a ridge fitted on those errors learns
attenuated weights (errors-in-variables). Fitted on the MIDI it reaches 0.46 over the folds
even read from the raw transcribed statistics, and 0.49-0.52 read from their estimates
(BUILD_NOTES, "The notes model fitted on the MIDI").

The estimate is a blend of two estimators, each fitted on standardised inputs and
targets: a multi-output linear ridge (alpha by leave-one-out) and extremely randomised
trees (non-linear; alone they estimate the statistics worse on average, but some pedal and
articulation statistics better, and the blend gives the ridge's predictions closest to
those from the exact statistics). The blend weight is chosen without the held-out labels: by
grouped inner cross-validation on the training performances, the weight whose estimates
make the MIDI-fitted ridge predict most nearly what it predicts from the exact statistics
(mean Pearson over the dimensions).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.linear_model import RidgeCV

from train import metrics, ridge_fit, tree_arrays

TREES = 300
TREE_FEATURES = 0.3  # fraction of the inputs each split draws from
LINEAR_ALPHAS = tuple(np.logspace(-2, 4, 13))
BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the trees' estimate against the linear one


@dataclasses.dataclass(frozen=True)
class Estimator:
  """Transcription statistics `[N, F]` -> the MIDI's note statistics `[N, S]`."""

  mean: np.ndarray
  scale: np.ndarray
  target_mean: np.ndarray
  target_scale: np.ndarray
  linear: RidgeCV
  trees: ExtraTreesRegressor

  def components(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(linear, trees) estimates, in the MIDI statistics' units."""
    z = (x - self.mean) / self.scale
    return tuple(m.predict(z) * self.target_scale + self.target_mean
                 for m in (self.linear, self.trees))

  def predict(self, x: np.ndarray, blend: float) -> np.ndarray:
    linear, trees = self.components(x)
    return (1 - blend) * linear + blend * trees


def _scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  std = x.std(0)
  return x.mean(0), np.where(std > 0, std, 1.0)  # a constant column stays 0, not NaN


def fit_estimator(x: np.ndarray, midi: np.ndarray, seed: int) -> Estimator:
  mean, scale = _scale(x)
  target_mean, target_scale = _scale(midi)
  z, target = (x - mean) / scale, (midi - target_mean) / target_scale
  linear = RidgeCV(alphas=LINEAR_ALPHAS).fit(z, target)
  trees = ExtraTreesRegressor(TREES, max_features=TREE_FEATURES, random_state=seed,
                              n_jobs=1).fit(z, target)
  return Estimator(mean, scale, target_mean, target_scale, linear, trees)


@dataclasses.dataclass(frozen=True)
class NotesModel:
  """The MIDI-fitted ridge and the estimator it reads a transcription through."""

  ridge: ridge_fit.RidgeModel
  estimator: Estimator
  blend: float
  inner_agreement: dict[float, float]  # blend -> the inner folds' mean agreement

  def statistics(self, x: np.ndarray) -> np.ndarray:
    return self.estimator.predict(x, self.blend)

  def predict(self, x: np.ndarray) -> np.ndarray:
    return self.ridge.predict(self.statistics(x))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over the dimensions of the Pearson correlation of two prediction tables."""
  return metrics.mean_pearson(a, b, np.ones(b.shape, bool))


def fit(x: np.ndarray, midi: np.ndarray, labels: np.ndarray, mask: np.ndarray,
        groups: np.ndarray, *, inner_folds: int = 4, seed: int = 0) -> NotesModel:
  """`x [N, F]`: the transcription's statistics; `midi [N, S]`: the MIDI's note statistics
  of the same training performances; `labels`/`mask [N, D]`; `groups`: what the outer split
  keeps together (the inner folds keep it together too)."""
  if x.shape[0] != midi.shape[0]:
    raise ridge_fit.RidgeError(f"{x.shape[0]} transcriptions against {midi.shape[0]} MIDI rows")
  inner_folds = min(inner_folds, np.unique(groups).size)
  if inner_folds < 2:
    raise ridge_fit.RidgeError("the training performances form one group: no inner "
                               "cross-validation can choose the blend")
  perception = ridge_fit.fit(midi, labels, mask, groups, inner_folds=inner_folds, seed=seed)
  folds = ridge_fit.group_folds(groups, inner_folds, seed)
  scores = np.zeros((inner_folds, len(BLENDS)))
  for k in range(inner_folds):
    train, held = folds != k, folds == k
    # The inner ridges keep the alpha chosen on all training performances: what is being
    # chosen here is the estimate, not the regularisation.
    inner_ridge = ridge_fit.fit(midi[train], labels[train], mask[train], groups[train],
                            alphas=(perception.alpha,))
    exact = inner_ridge.predict(midi[held])
    linear, trees = fit_estimator(x[train], midi[train], seed).components(x[held])
    for b, blend in enumerate(BLENDS):
      scores[k, b] = _agreement(inner_ridge.predict((1 - blend) * linear + blend * trees), exact)
  inner = np.nanmean(scores, axis=0)
  blend = float(BLENDS[int(np.nanargmax(inner))])
  return NotesModel(
      ridge=perception, estimator=fit_estimator(x, midi, seed), blend=blend,
      inner_agreement={float(b): float(v) for b, v in zip(BLENDS, inner)})


# ----------------------------------------------------------------------------- releases

def to_arrays(model: NotesModel) -> dict[str, np.ndarray]:
  """Everything `Packed` predicts from, as named arrays (a release's safetensors file)."""
  e, r = model.estimator, model.ridge
  return {"ridge/mean": r.mean, "ridge/scale": r.scale, "ridge/weights": r.weights,
          "ridge/bias": r.bias, "estimator/mean": e.mean, "estimator/scale": e.scale,
          "estimator/target_mean": e.target_mean, "estimator/target_scale": e.target_scale,
          "estimator/linear_weights": np.asarray(e.linear.coef_, np.float64).T,
          "estimator/linear_bias": np.asarray(e.linear.intercept_, np.float64),
          "blend": np.asarray([model.blend], np.float64),  # safetensors keeps no 0-d array
          **{f"trees/{k}": v for k, v in tree_arrays.pack(e.trees).items()}}


def _trees(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The forest's arrays (`tree_arrays`' names) among the notes model's."""
  return {k.removeprefix("trees/"): v for k, v in arrays.items() if k.startswith("trees/")}


@dataclasses.dataclass(frozen=True)
class Packed:
  """The notes model from `to_arrays`' arrays, predicting with numpy alone (what
  `eval.notes_perception` runs from a release); the same predictions as the fitted model."""

  arrays: dict[str, np.ndarray]

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Packed:
    """Checks that the arrays fit together: `inputs` (the transcription's statistics),
    `statistics` (the MIDI's) and the 19 outputs."""
    if "estimator/linear_weights" not in arrays:
      raise ridge_fit.RidgeError("the notes model lacks ['estimator/linear_weights']")
    inputs, statistics = arrays["estimator/linear_weights"].shape
    shapes = {"estimator/mean": (inputs,), "estimator/scale": (inputs,),
              "estimator/target_mean": (statistics,), "estimator/target_scale": (statistics,),
              "estimator/linear_bias": (statistics,), "ridge/mean": (statistics,),
              "ridge/scale": (statistics,), "ridge/weights": (statistics, 19),
              "ridge/bias": (19,), "blend": (1,)}
    missing = [k for k in shapes if k not in arrays]
    if missing:
      raise ridge_fit.RidgeError(f"the notes model lacks {missing}")
    wrong = {k: arrays[k].shape for k, shape in shapes.items() if arrays[k].shape != shape}
    if wrong:
      raise ridge_fit.RidgeError(f"the notes model's arrays do not fit together: {wrong} for "
                                 f"{inputs} inputs and {statistics} statistics")
    trees = _trees(arrays)
    try:
      tree_arrays.check(trees, inputs)
    except tree_arrays.TreeArraysError as e:
      raise ridge_fit.RidgeError(str(e)) from None
    if trees["leaf_values"].shape[1:] != (statistics,):
      raise ridge_fit.RidgeError(f"the trees estimate {trees['leaf_values'].shape[1:]} "
                                 f"statistics, not {statistics}")
    return cls(dict(arrays))

  @property
  def inputs(self) -> int:
    return self.arrays["estimator/mean"].shape[0]

  def statistics(self, x: np.ndarray) -> np.ndarray:
    a = self.arrays
    z = (np.asarray(x, np.float64) - a["estimator/mean"]) / a["estimator/scale"]
    linear = z @ a["estimator/linear_weights"] + a["estimator/linear_bias"]
    trees = tree_arrays.predict(_trees(a), z)
    blend = float(a["blend"][0])
    return ((1 - blend) * linear + blend * trees) * a["estimator/target_scale"] + a[
        "estimator/target_mean"]

  def predict(self, x: np.ndarray) -> np.ndarray:
    a = self.arrays
    return ((self.statistics(x) - a["ridge/mean"]) / a["ridge/scale"]) @ a["ridge/weights"] + a[
        "ridge/bias"]
