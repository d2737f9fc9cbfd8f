"""Per-dimension target standardisation from training statistics.

Labels are mean ratings / 7 in [1/7, 1]; their spread differs a lot between
dimensions (and between the real release and generated corpora), so the heads
regress `(y - mean_d) / std_d` with statistics taken from the *training* split
only (validation statistics would leak), and `denormalize` maps predictions back
to the label scale before any metric is computed. Masked-out labels (invalid
after an augmentation) do not enter the statistics. Serialisable to JSON so it
travels with checkpoints.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The fine-tuning work directory's copy of the statistics (train.tasks writes it).
FILE = "targets.json"


@dataclasses.dataclass(frozen=True)
class TargetNormalizer:
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @classmethod
  def fit(cls, labels: np.ndarray, label_mask: np.ndarray | None = None,
          min_std: float = 1e-3) -> TargetNormalizer:
    """Statistics of `labels [N, D]` over entries where `label_mask` is set.

    A dimension with fewer than two valid labels cannot be standardised and
    raises; `min_std` keeps a near-constant dimension from blowing up.
    """
    labels = np.asarray(labels, np.float64)
    if labels.ndim != 2:
      raise ValueError(f"labels must be [examples, dimensions], got {labels.shape}")
    mask = np.ones_like(labels, bool) if label_mask is None else np.asarray(label_mask, bool)
    if mask.shape != labels.shape:
      raise ValueError(f"label_mask {mask.shape} does not match labels {labels.shape}")
    if not np.isfinite(labels[mask]).all():
      raise ValueError("labels contain NaN or inf where the mask says they are valid")
    count = mask.sum(axis=0)
    if (count < 2).any():
      raise ValueError(f"dimensions {np.flatnonzero(count < 2).tolist()} have fewer than 2 "
                       "valid labels; cannot standardise")
    mean = np.where(mask, labels, 0).sum(axis=0) / count
    var = np.where(mask, (labels - mean) ** 2, 0).sum(axis=0) / count
    std = np.maximum(np.sqrt(var), min_std)
    return cls(tuple(mean.tolist()), tuple(std.tolist()))

  @classmethod
  def identity(cls, num_dimensions: int) -> TargetNormalizer:
    return cls((0.0,) * num_dimensions, (1.0,) * num_dimensions)

  def normalize(self, labels):
    return (labels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def denormalize(self, predictions):
    return predictions * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)

  def to_dict(self) -> dict:
    return {"mean": list(self.mean), "std": list(self.std)}

  @classmethod
  def from_dict(cls, d: dict) -> TargetNormalizer:
    mean, std = tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"])
    if len(mean) != len(std) or not all(s > 0 for s in std):
      raise ValueError(f"invalid target normaliser: {d}")
    return cls(mean, std)
