"""Multi-task regression losses: masked per-dimension MSE, group losses, loss weighting.

All losses work in *normalised* target space (`model.targets`): per-dimension
standardisation makes the dimensions' MSEs comparable, so a dimension with a
wide rating spread does not dominate its group merely by its scale.

  per_dimension_mse   `[D]` mean squared error per dimension over the examples
                      whose label is valid (label mask AND example weight > 0;
                      augmented windows can invalidate some labels, padded
                      evaluation batches have weight 0).
  group_losses        the mean of its dimensions' MSEs per task group.
  combine             fixed weights: sum_g w_g L_g; or, with learned log-variances
                      s_g (homoscedastic uncertainty, Kendall, Gal & Cipolla 2018),
                      sum_g 0.5 (exp(-s_g) L_g + s_g). At the optimum exp(s_g) = L_g,
                      so a group that is intrinsically noisier gets less weight
                      instead of being over-fitted. The weights are reported as
                      exp(-s_g) for logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp


def per_dimension_mse(predictions: jax.Array, labels: jax.Array, label_mask: jax.Array,
                      weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Returns `(mse [D], count [D])`; a dimension without any valid label has MSE 0."""
  m = label_mask.astype(jnp.float32)
  if weights is not None:
    m = m * weights.astype(jnp.float32)[:, None]
  err = (predictions.astype(jnp.float32) - labels.astype(jnp.float32)) ** 2
  count = m.sum(axis=0)
  # Select rather than multiply: a NaN label where the mask is 0 must not poison the loss.
  return jnp.where(m > 0, err * m, 0.0).sum(axis=0) / jnp.maximum(count, 1.0), count


def group_losses(mse: jax.Array, groups: Sequence[tuple[str, Sequence[int]]],
                 count: jax.Array | None = None) -> dict[str, jax.Array]:
  """Mean MSE of each group's dimensions (over dimensions that have labels if `count`)."""
  out = {}
  for name, dims in groups:
    idx = jnp.asarray(dims)
    if count is None:
      out[name] = mse[idx].mean()
    else:
      present = (count[idx] > 0).astype(jnp.float32)
      out[name] = (mse[idx] * present).sum() / jnp.maximum(present.sum(), 1.0)
  return out


def group_presence(groups: Sequence[tuple[str, Sequence[int]]],
                   count: jax.Array) -> dict[str, jax.Array]:
  """1.0 for a group with at least one valid label in the batch, else 0.0."""
  return {name: (count[jnp.asarray(dims)].sum() > 0).astype(jnp.float32) for name, dims in groups}


def combine(losses: Mapping[str, jax.Array], *, fixed_weights: Mapping[str, float] | None = None,
            log_variances: jax.Array | None = None,
            present: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and the effective weight per group.

  `log_variances` `[G]` (ordered as `losses`) switches on uncertainty weighting;
  otherwise `fixed_weights` (default 1 per group) apply. `present` (per group,
  1/0) drops a group without labels in this batch from the uncertainty term:
  otherwise its `+s_g` regulariser alone would push `s_g` down and raise the
  group's weight on exactly the batches that cannot inform it.
  """
  names = list(losses)
  if log_variances is not None:
    if log_variances.shape != (len(names),):
      raise ValueError(f"log_variances {log_variances.shape} do not match groups {names}")
    s = log_variances.astype(jnp.float32)
    on = {n: jnp.float32(1.0) if present is None else present[n] for n in names}
    total = sum(on[n] * 0.5 * (jnp.exp(-s[i]) * losses[n] + s[i]) for i, n in enumerate(names))
    return total, {n: jnp.exp(-s[i]) for i, n in enumerate(names)}
  fixed_weights = dict(fixed_weights or {})
  unknown = set(fixed_weights) - set(names)
  if unknown:
    raise ValueError(f"loss weights for unknown groups {sorted(unknown)}; groups are {names}")
  weights = {n: jnp.float32(fixed_weights.get(n, 1.0)) for n in names}
  return sum(weights[n] * losses[n] for n in names), weights
