"""The report as one list of blocks: runs, targets, each evaluated set's tables,
the published anchors, the human ceiling, the methods."""

from __future__ import annotations

import pathlib

import numpy as np

from eval.report import leaderboard
from eval.report.common import ANCHORS, EVALUATION_TITLES
from eval.report.rendering import fmt, fmt_ci, fmt_difference, fmt_gain, fmt_p
from eval.report.scoring import headline_rows
from eval.report.targets import target_value
from pipelines.datasets import taxonomy


def _table(evaluation: dict, keys, with_ceiling: bool, inline: bool = True
           ) -> tuple[list[str], list[list[str]]]:
  head = ["", "Pearson [95% CI]", "within passage [CI]", "Spearman", "R² [CI]", "MSE", "MAE"]
  if with_ceiling:
    head += ["ceiling", "÷ ceiling", "÷ ceiling (within)"]
  compare = evaluation["compare"] if inline else {}
  for name in compare:
    head += [f"Δ vs {name} [CI]", "p (boot., Holm)", "p (Williams, Holm)"]
  rows = []
  for k in keys:
    r = evaluation["rows"][k]
    line = [k, fmt_ci(r, "pearson"), fmt_ci(r, "pearson_within"), fmt(r["spearman"]),
            fmt_ci(r, "r2"), fmt(r["mse"], 4), fmt(r["mae"], 4)]
    if with_ceiling:
      line += [fmt(r["ceiling"]), fmt(r["of_ceiling"], 2), fmt(r["of_ceiling_within"], 2)]
    for c in compare.values():
      e = c["rows"][k]
      line += [fmt_difference(e), fmt_p(e.get("p_bootstrap_holm", e["p_bootstrap"])),
               fmt_p(e.get("p_williams_holm"))]
    rows.append(line)
  return head, rows


def _headline_words(evaluation: dict) -> str:
  return ("mean Pearson" if evaluation["headline"] == "pooled"
          else "mean Pearson (mean over folds)")


def _fold_table(evaluation: dict, inline: bool) -> tuple[list[str], list[list[str]]]:
  """Groups and mean: the mean over folds [CI], each fold's value, Δ vs each other run."""
  sizes = evaluation["fold_sizes"]
  head = ["", "mean over folds [95% CI]", *(f"fold {f} (n={n})" for f, n in enumerate(sizes))]
  compare = evaluation["compare"] if inline else {}
  for name in compare:
    head += [f"{name} [CI]", f"Δ vs {name} [CI]", "p (bootstrap)"]
  rows = []
  for k in (*taxonomy.GROUPS, "mean"):
    r = evaluation["fold_rows"][k]
    line = [k, fmt_ci(r, "pearson"), *(fmt(v) for v in r["folds"])]
    for c in compare.values():
      e = c["fold_rows"][k]
      line += [fmt_ci(e, "pearson"), fmt_difference(e), fmt_p(e["p_bootstrap"])]
    rows.append(line)
  return head, rows


def _comparison_table(evaluation: dict) -> tuple[list[str], list[list[str]]]:
  """One row per other run: its group Pearsons, and the main run's mean-Pearson lead
  (on the headline: the mean over folds where the set was scored fold by fold)."""
  head = ["other run", *(f"{g} Pearson" for g in taxonomy.GROUPS), "mean Pearson [CI]",
          "Δ mean [CI]", "p (bootstrap)", "relative gain"]
  rows = []
  for name, c in evaluation["compare"].items():
    r = headline_rows(c)
    rows.append([name, *(fmt(r[g]["pearson"]) for g in taxonomy.GROUPS),
                 fmt_ci(r["mean"], "pearson"), fmt_difference(r["mean"]),
                 fmt_p(r["mean"]["p_bootstrap"]), fmt_gain(c["relative_mean_pearson_gain"])])
  return head, rows


def _difference_table(evaluation: dict) -> tuple[list[str], list[list[str]]]:
  head = ["", *evaluation["compare"]]
  rows = []
  for k in taxonomy.DIMENSION_NAMES:
    line = [k]
    for c in evaluation["compare"].values():
      e = c["rows"][k]
      star = "*" if e["p_bootstrap_holm"] < 0.05 else ""
      line.append(f"{e['difference']:+.3f}{star}" if np.isfinite(e["difference"]) else "–")
    rows.append(line)
  return head, rows


def _run_blocks(report: dict) -> list[tuple]:
  """The title, how the numbers were made, the runs, the notes and what is missing."""
  main = report["runs"][0]
  b: list[tuple] = [("h1", f"Evaluation report: {main['name']}")]
  b.append(("p", f"Generated {report['generated']} from the saved per-performance predictions. "
                 "Windows are averaged per performance before scoring; CIs are percentile "
                 f"bootstrap intervals over performances ({report['resamples']} resamples, seed "
                 f"{report['seed']}); comparisons are paired on the same performances."))
  b.append(("table", ["run", "kind", "backbone", "split", "work directory"],
            [[r["name"], r["kind"], r["backbone"], r["split"] or "–", r["workdir"]]
             for r in report["runs"]]))
  for note in report.get("notes", []):
    b.append(("p", note))
  for field, wording in (("pending", "Not finished yet"), ("not_run", "Not run")):
    grouped: dict[tuple, list[str]] = {}  # one line per set of missing evaluations
    for r in report["runs"]:
      if r.get(field):
        grouped.setdefault(tuple(r[field]), []).append(r["name"])
    for sets, names in grouped.items():
      b.append(("p", f"{wording}, so not in this report: "
                     f"{', '.join(EVALUATION_TITLES[k].lower() for k in sets)} "
                     f"({', '.join(names)})."))
  return b


def _target_blocks(targets: list[dict]) -> list[tuple]:
  """The goals, met or not, and a line naming the missed ones."""
  b: list[tuple] = [("h2", "Targets")]
  b.append(("table", ["set", "goal", "value", "met", "p of Δ ≠ 0 (bootstrap, two-sided)"],
            [[EVALUATION_TITLES.get(t["evaluation"], t["evaluation"]), t["goal"],
              target_value(t), "yes" if t["met"] else "NO", fmt_p(t.get("p"))]
             for t in targets]))
  missed: dict[str, list[str]] = {}
  for t in targets:
    if not t["met"]:
      missed.setdefault(EVALUATION_TITLES.get(t["evaluation"], t["evaluation"]).lower(),
                        []).append(t["goal"])
  b.append(("p", "Every target is met." if not missed else
            "Not met: " + "; ".join(f"{where}: {', '.join(goals)}"
                                    for where, goals in missed.items())
            + ". See the tables below for by how much."))
  return b


def _evaluation_blocks(key: str, evaluation: dict, figure_paths: list[pathlib.Path]
                       ) -> list[tuple]:
  """One evaluated set: its tables by group and per dimension, comparisons, figures."""
  b: list[tuple] = []
  title = EVALUATION_TITLES.get(key, key)
  with_ceiling = evaluation["ceiling"] is not None
  b.append(("h2", f"{title} ({evaluation['performances']} performances, "
                  f"{evaluation['passages']} passages, {evaluation['split']})"))
  # Beyond two baselines the difference columns would make the tables unreadable:
  # the comparisons get tables of their own (every number stays in report.json).
  inline = len(evaluation["compare"]) <= 2
  if "fold_rows" in evaluation:
    b.append(("h3", "By task group, fold by fold (the headline)"))
    b.append(("p", "Each fold model is scored on its own held-out performances and the "
                   "folds' Pearsons are averaged, as k-fold results are reported; the CI "
                   "resamples every fold's performances on its own. Pooling all folds' "
                   "predictions into one correlation (the tables after this one) also "
                   "compares performances predicted by different models: each fold model "
                   "learned its training pieces' label means, so the pooled Pearson can be "
                   "far lower, even negative, when every fold's is positive."))
    b.append(("table", *_fold_table(evaluation, inline)))
    b.append(("h3", "By task group, all folds pooled"))
  else:
    b.append(("h3", "By task group"))
  b.append(("table", *_table(evaluation, (*taxonomy.GROUPS, "mean"), with_ceiling, inline)))
  if inline:
    for name, c in evaluation["compare"].items():
      b.append(("p", f"Relative gain in {_headline_words(evaluation)} over {name}: "
                     f"{fmt_gain(c['relative_mean_pearson_gain'])}."))
  else:
    b.append(("h3", "Against each other run"))
    b.append(("table", *_comparison_table(evaluation)))
  if evaluation.get("not_compared"):
    b.append(("p", f"Not compared on this set (no predictions for it): "
                   f"{', '.join(evaluation['not_compared'])}."))
  b.append(("h3", "Per dimension"))
  b.append(("table", *_table(evaluation, taxonomy.DIMENSION_NAMES, with_ceiling, inline)))
  if not inline:
    b.append(("h3", "Per dimension: Δ Pearson against each other run"))
    b.append(("p", "* = Holm-adjusted paired-bootstrap p < 0.05."))
    b.append(("table", *_difference_table(evaluation)))
  for path in figure_paths:
    b.append(("img", path))
  return b


def _anchor_blocks(report: dict) -> list[tuple]:
  """The published results beside this report's mean R²."""
  main = report["runs"][0]
  b: list[tuple] = [("h2", "Published anchors (mean R² over the 19 dimensions)")]
  rows = [[a["source"], a["split"], fmt(a["r2"]), a["what"]] for a in ANCHORS]
  for key, evaluation in report["evaluations"].items():
    r = evaluation["rows"]["mean"]
    pooled = ", pooled" if "fold_rows" in evaluation else ""
    rows.append([f"this report: {main['name']} ({EVALUATION_TITLES.get(key, key).lower()}"
                 f"{pooled})",
                 evaluation["split"].split("/")[0], f"{fmt_ci(r, 'r2')}",
                 "this project's folds (piece: grouped by movement)"])
  b.append(("table", ["result", "split", "R²", "what it is"], rows))
  b.append(("p", "The published numbers are from symbolic (score-aligned MIDI) and audio models "
                 "on their own folds; ours are on this project's folds of the same release, so "
                 "the comparison is indicative, not paired."))
  return b


def _ceiling_blocks(report: dict) -> list[tuple]:
  """Where the human ceiling comes from, or why there is none."""
  b: list[tuple] = [("h2", "Human ceiling")]
  covered = [e["ceiling"] for e in report["evaluations"].values() if e["ceiling"] is not None]
  if covered:
    c = covered[0]
    b.append(("p", f"From {report['ceiling_source']}: split-half reliability of the rater panel "
                   f"with Spearman-Brown ({c['splits']} random splits of each performance's "
                   "listeners, all of a listener's answers in one half; "
                   f"{c['listeners_per_performance']['median']:g} listeners and "
                   f"{c['raters_per_performance']['median']:g} answer rows per performance in "
                   "the median), computed on each evaluated set's own performances. The "
                   "ceiling on Pearson is sqrt(reliability): what a model predicting every "
                   "performance's expected rating perfectly would score against these labels."))
    for key, evaluation in report["evaluations"].items():
      if evaluation["ceiling"] is None:
        b.append(("p", f"Not computed for {EVALUATION_TITLES.get(key, key).lower()}: "
                       f"{evaluation['ceiling_note']}."))
  else:
    notes = {e.get("ceiling_note") for e in report["evaluations"].values()} - {None}
    b.append(("p", f"Not computed: {'; '.join(sorted(notes)) or report['ceiling_source']}."))
  return b


def blocks(report: dict, figure_paths: dict[str, list[pathlib.Path]]) -> list[tuple]:
  """The whole report, in order."""
  runs = _run_blocks(report)
  # The title and how the numbers were made, then every model against the ridge first.
  b = runs[:2] + leaderboard.blocks(report.get("leaderboard")) + runs[2:]
  if report.get("targets"):
    b += _target_blocks(report["targets"])
  for key, evaluation in report["evaluations"].items():
    b += _evaluation_blocks(key, evaluation, figure_paths.get(key, []))
  b += _anchor_blocks(report)
  b += _ceiling_blocks(report)
  for path in figure_paths.get("", []):
    b.append(("img", path))
  b.append(("h2", "Methods"))
  b.append(("p", "Pearson's r is the primary metric; R² is sklearn's r2_score; within-passage "
                 "Pearson centres labels and predictions on each passage's mean (how well the "
                 "model ranks performances of the same music). Differences: paired bootstrap "
                 "(p from the null-shifted bootstrap distribution) and Williams' t for dependent "
                 "correlations sharing the labels; p-values are Holm-adjusted across the 19 "
                 "dimensions (group and mean rows are unadjusted bootstrap p-values)."))
  return b
