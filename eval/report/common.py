"""What the report's modules share: the error, the rows, the sets' titles, the anchors."""

from __future__ import annotations

import numpy as np

from pipelines.datasets import taxonomy

# Published results to put beside ours (REFERENCE.md): mean R² over the 19 dimensions.
ANCHORS = (
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "piece", "r2": 0.397},
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "performer", "r2": 0.285},
    {"source": "Best published audio model (frozen MuQ features, rendered audio, 2026)",
     "split": "piece", "r2": 0.537},
)
ROWS = (*taxonomy.DIMENSION_NAMES, *taxonomy.GROUPS, "mean")
EVALUATION_TITLES = {"validation": "Validation fold", "out_of_fold": "Cross-validation, out of fold",
                     "test": "Held-out test set"}


class ReportError(ValueError):
  pass


def finite(value):
  """`value` with every NaN/inf float as None: strict JSON (NaN is not JSON)."""
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else None
  return value
