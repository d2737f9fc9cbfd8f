"""What the report's modules share: the error, the rows, the sets' titles, the anchors."""

from __future__ import annotations

import numpy as np

from pipelines.datasets import taxonomy

# Published results to put beside ours (REFERENCE.md): mean R² over the 19 dimensions.
# Published results on PercePiano, each with what it is: a reader must not take a leaky or
# looser split's number as the bar (shared/REFERENCE.md).
ANCHORS = (
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "piece", "r2": 0.397,
     "what": "PercePiano's own piece folds group clips by passage segment, not movement: other "
             "segments and the overlapping 8- and 16-bar cuts of a movement sit on both sides, "
             "so they are looser than this project's movement-grouped folds"},
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "performer", "r2": 0.285, "what": "4 folds by performer, score-aligned MIDI input"},
    {"source": "Frozen MuQ features + MLP, audio rendered through Pianoteq (arXiv 2601.19029)",
     "split": "piece", "r2": 0.537,
     "what": "withdrawn by its author for fold leakage; on clean folds the author reports 6 "
             "merged dimensions only (frozen MuQ probe R² 0.46), not comparable with 19"},
    {"source": "Mel-CNN trained from scratch, same work (arXiv 2601.19029)", "split": "piece",
     "r2": 0.19, "what": "on the same (leaky) folds as the withdrawn result"},
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
