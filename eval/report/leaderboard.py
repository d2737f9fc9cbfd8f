"""The report's first table: every model it holds beside the closed-form ridge, per set.

A reader opening a report wants one answer first: which model is best, by how much, and
whether that is more than noise. When the report's runs include exactly one ridge (the
bar every learned model is measured against), each set the ridge was evaluated on gets
one table, before anything else: per model its group and mean Pearson (out of fold: the
mean over folds), the mean's 95 % CI, the mean R², and the paired bootstrap difference
of the mean to the ridge with its p; models sorted by mean, the ridge first; then the
human ceiling of that set's labels (split by listener), where the raw ratings cover it, and
the R² of the training side's mean label (the rating offset a model's R² must overcome).
The numbers are `eval.report.summary.score_split`'s, the ones `summary.json` holds.
"""

from __future__ import annotations

from eval import ceiling as ceiling_lib
from eval import statistics
from eval.report import summary
from eval.report.rendering import fmt, fmt_p
from eval.report.sources import Source
from pipelines.datasets import taxonomy

SET_TITLES = {"out_of_fold": "out of fold (mean over folds)", "test": "held-out test set"}
COLUMNS = (*taxonomy.GROUPS, "mean")


def score(sources: list[Source], raw, *, resamples: int, seed: int, ceiling_splits: int
          ) -> dict | None:
  """{set: {"models": {name: entry}, "ceiling": {group: value} | None}}, or None without
  exactly one ridge among the runs."""
  bars = [s for s in sources if s.backbone == "ridge"]
  if len(bars) != 1:
    return None
  out = {}
  for key, value in summary.score_split(sources, resamples=resamples, seed=seed).items():
    ceiling = None
    if raw is not None:
      try:
        found = ceiling_lib.split_half(raw, bars[0].evaluations[key].keys,
                                       splits=ceiling_splits, seed=seed)
        rows = statistics.with_groups(found.pearson)
        ceiling = {k: float(rows[k]) for k in COLUMNS}
      except ceiling_lib.percepiano.PercePianoError:
        pass  # the raw ratings do not cover this set: the table says so
    out[key] = {"models": value["models"], "ceiling": ceiling,
                "r2_of_training_mean": value.get("r2_of_training_mean")}
  return out


def blocks(leaderboard: dict | None) -> list[tuple]:
  if not leaderboard:
    return []
  out = [("h2", "All models against the ridge"),
         ("p", "Pearson per group (a group is the mean of its dimensions') and of all 19 "
               "dimensions, with the mean's 95 % bootstrap CI; R² is the mean over dimensions "
               "(out of fold, also over folds); Δ vs ridge is the paired bootstrap difference "
               "of the mean Pearson on the same performances. The ceiling row is the human "
               "ceiling of the set's labels (listener split-half reliability, "
               "sqrt). The training-side mean row predicts every performance by the mean "
               "label its model trained on: its R² below 0 is the held-out side's rating "
               "offset, which a model's R² must overcome and Pearson does not see.")]
  head = ["model", "backbone", *taxonomy.GROUPS, "mean [95% CI]", "R²",
          "Δ vs ridge [CI]", "p"]
  for key, scored in leaderboard.items():
    models = scored["models"]
    order = sorted(models, key=lambda n: (models[n]["vs_ridge"] is not None, -models[n]["mean"]))
    rows = []
    for name in order:
      m = models[name]
      versus = m["vs_ridge"]
      rows.append([name, m["backbone"], *(fmt(m[g]) for g in taxonomy.GROUPS),
                   f"{fmt(m['mean'])} [{fmt(m['mean_ci'][0], 2)}, {fmt(m['mean_ci'][1], 2)}]",
                   fmt(m["r2"], 2),
                   "–" if versus is None else
                   f"{versus['delta']:+.3f} [{fmt(versus['low'], 2)}, {fmt(versus['high'], 2)}]",
                   "–" if versus is None else fmt_p(versus["p"])])
    ceiling = scored["ceiling"]
    rows.append(["human ceiling", "", *(fmt(ceiling[g]) if ceiling else "–"
                                        for g in taxonomy.GROUPS),
                 fmt(ceiling["mean"]) if ceiling else "– (no raw ratings for this set)",
                 "", "", ""])
    if scored.get("r2_of_training_mean") is not None:
      rows.append(["training-side mean", "constant", *("–" for _ in taxonomy.GROUPS), "–",
                   fmt(scored["r2_of_training_mean"], 2), "", ""])
    out += [("h3", SET_TITLES.get(key, key)), ("table", head, rows)]
  return out
