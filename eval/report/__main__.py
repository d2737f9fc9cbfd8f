"""The evaluation report: per-dimension scores with CIs, baselines, human ceiling, plots.

  python -m eval.report --workdir=W [--compare=W2,W3] [--percepiano_dir=DIR] \
      [--output_dir=W/report] [--resamples=10000] [--attention_audio=FILE]

`W` (and every `--compare` directory) is a fine-tuning work directory (its final
validation predictions are scored) or an `train.crossval` directory (its
out-of-fold predictions once every fold finished, scored fold by fold and pooled,
and the held-out test set once that run finished; a set not finished yet is named
in the report).
The numbers are computed from the saved per-performance predictions only, so
they can be rebuilt without checkpoints or shards; the attention maps
(`--attention_audio`) need the main run's checkpoint. It writes `report.md`, a
self-contained `report.html` (figures embedded) and `report.json` (every
number in the tables), plus the PNG figures, into `--output_dir`.

What it contains, per evaluated set:
- per dimension and per group: Pearson with a 95 % bootstrap CI (performances
  resampled, 10 000 times), Spearman, R² (with CI), MSE, MAE, within-passage
  Pearson (with CI), the human ceiling from the raw ratings and model ÷ ceiling;
- for every `--compare` run (e.g. the CNN and feed-forward baselines trained on
  the same folds): the Pearson difference with its paired-bootstrap CI and
  p-value and Williams' test p-value, both Holm-corrected across the 19
  dimensions;
- out of fold, first the headline: each fold's Pearson and their mean over the
  folds (CI by a bootstrap stratified by fold; differences paired), which is
  what the targets and relative gains are judged by; then the pooled tables;
- relative gains only over a baseline with a positive mean Pearson (relative to
  a negative correlation the ratio flips sign and means nothing);
- the published anchors (PercePiano paper R² 0.397 piece / 0.285 performer;
  best audio model R² ≈ 0.537) beside our mean R²;
- figures: Pearson bars with CIs and the ceiling, prediction-vs-label scatter
  per dimension, training curves, and attention maps when `--attention_audio`
  is given.

Paths in the report are written relative to the directory eval.report runs in
(the repository root when the benchmark or the demo runs it), so a committed
report names the repository's layout, not one machine's directories.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

from eval import ceiling as ceiling_lib
from eval import statistics
from eval.report.build import build
from eval.report.common import EVALUATION_TITLES, ReportError
from eval.report.scoring import headline_rows
from pipelines import entry_point
from pipelines.datasets import taxonomy
from train import crossval, predictions


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  # Orbax logs every restore step at INFO (attention maps load a checkpoint).
  logging.set_verbosity(logging.WARNING)
  compare = [c for c in f.compare.split(",") if c] if f.compare else []
  names = [n for n in f.names.split(",")] if f.names else []
  try:
    report = build(f.workdir, compare, names=names, percepiano_dir=f.percepiano_dir,
                   output_dir=f.output_dir, resamples=f.resamples, seed=f.seed,
                   ceiling_splits=f.ceiling_splits, attention_audio=f.attention_audio,
                   target_pearson=f.target_pearson, target_gain=f.target_gain,
                   notes=f.note)
  except (ReportError, crossval.CrossValidationError, predictions.PredictionsError,
          FileNotFoundError, ceiling_lib.percepiano.PercePianoError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")
  directory = pathlib.Path(f.output_dir) if f.output_dir else pathlib.Path(
      report["runs"][0]["workdir"]) / "report"
  for key, evaluation in report["evaluations"].items():
    r = headline_rows(evaluation)
    how = "" if evaluation["headline"] == "pooled" else f" ({evaluation['headline']})"
    print(f"{EVALUATION_TITLES.get(key, key)}: Pearson{how} " + ", ".join(
        f"{g} {r[g]['pearson']:.3f}" for g in (*taxonomy.GROUPS, "mean"))
        + f"; R² (pooled) {evaluation['rows']['mean']['r2']:.3f}")
  print(f"report: {directory / 'report.md'} (also report.html, report.json)")


def _define_flags():
  flags.DEFINE_string("workdir", None, "Fine-tuning or train.crossval directory to report on.",
                      required=True)
  flags.DEFINE_string("compare", "", "Comma-separated directories to compare with (baselines).")
  flags.DEFINE_string("names", "", "Comma-separated display names (workdir first).")
  flags.DEFINE_string("percepiano_dir", None, "Release with labels/total_2rounds.csv: adds the "
                      "human ceiling.")
  flags.DEFINE_string("output_dir", None, "Where to write (default: WORKDIR/report).")
  flags.DEFINE_integer("resamples", statistics.DEFAULT_RESAMPLES, "Bootstrap resamples.")
  flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
  flags.DEFINE_integer("ceiling_splits", 100, "Random split-halves for the ceiling.")
  flags.DEFINE_string("attention_audio", None, "A recording (wav/flac/mid) to draw attention maps "
                      "of (from the main run; fold 0 of a cross-validation, or its test run).")
  flags.DEFINE_float("target_pearson", None, "Adds a Targets section: is every group's Pearson "
                     "at least this?")
  flags.DEFINE_float("target_gain", None, "Adds to Targets: is the relative mean-Pearson gain over "
                     "each baseline (--compare runs with a non-AST backbone) at least this "
                     "(0.2 = 20 %)?")
  flags.DEFINE_multi_string("note", [], "A paragraph to put under the runs table (repeatable), "
                            "e.g. which runs are still pending.")


def cli() -> None:
  """Console entry point (`ppt-report`; also `python -m eval.report`)."""
  entry_point.run(__doc__, _define_flags, main)


if __name__ == "__main__":
  cli()
