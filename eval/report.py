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

import base64
import dataclasses
import datetime
import html
import json
import os
import pathlib
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from eval import ceiling as ceiling_lib
from eval import figures, statistics
from train import crossval, metrics, predictions, rundir
from pipelines.datasets import taxonomy
from train import metric_writer

# Published results to put beside ours (REFERENCE.md): mean R² over the 19 dimensions.
ANCHORS = (
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "piece", "r2": 0.397},
    {"source": "PercePiano paper, best symbolic model (score-aligned BiLSTM + HAN)",
     "split": "performer", "r2": 0.285},
    {"source": "Best published audio model (frozen MuQ features, rendered audio, 2026)",
     "split": "piece", "r2": 0.537},
)
BACKBONE_NAMES = {"ast": "AST", "cnn": "CNN baseline", "pooled_stats": "feed-forward baseline"}
ROWS = (*taxonomy.DIMENSION_NAMES, *taxonomy.GROUPS, "mean")
EVALUATION_TITLES = {"validation": "Validation fold", "out_of_fold": "Cross-validation, out of fold",
                     "test": "Held-out test set"}


class ReportError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Source:
  """One run to report on or compare with."""

  name: str
  workdir: pathlib.Path
  kind: str  # "run" | "crossval"
  config: dict
  evaluations: dict[str, predictions.Predictions]
  curves: dict[str, list[dict]]
  pending: tuple[str, ...] = ()  # sets a cross-validation started but has not finished
  not_run: tuple[str, ...] = ()  # sets it never started (e.g. `--folds=none`: no fold)
  # The performances of each fold, per set scored fold by fold (the out-of-fold set).
  folds: dict[str, tuple[tuple[str, ...], ...]] = dataclasses.field(default_factory=dict)

  @property
  def backbone(self) -> str:
    return self.config["model"]["backbone"]

  @property
  def split(self) -> str:
    return self.config.get("split") or ""

  @property
  def run_dir(self) -> pathlib.Path:
    """A fine-tuning work directory with checkpoints (a cross-validation's fold 0, or its
    test run when fold 0 has not finished)."""
    if self.kind != "crossval":
      return self.workdir
    fold0 = crossval.fold_dir(self.workdir, 0)
    return fold0 if crossval.finished(fold0) else crossval.fold_dir(self.workdir, crossval.TEST)


def default_name(config: dict) -> str:
  name = BACKBONE_NAMES.get(config["model"]["backbone"], config["model"]["backbone"])
  if config["model"]["backbone"] == "ast":
    name += f" {config.get('size', '')}".rstrip()
    if config.get("init", {}).get("checkpoint") or config.get("init", {}).get("converted"):
      name += ", pre-trained"
    if config["model"].get("head") == "flat":
      name += ", flat head"
  return name


def _curves(workdir: pathlib.Path) -> list[dict]:
  return metric_writer.read(workdir) if (workdir / rundir.METRICS).is_file() else []


def load_source(path: str | pathlib.Path, name: str | None = None) -> Source:
  workdir = pathlib.Path(path).absolute()
  if not workdir.is_dir():
    raise ReportError(f"{workdir} does not exist")
  if (workdir / crossval.SUMMARY).is_file():
    summary = crossval.read_summary(workdir)
    config = summary["config"]
    config = {**config, "split": summary["split"]}
    # A cross-validation reports what is complete: the out-of-fold set once every
    # fold finished, the test set once it finished (`--folds=none --test` runs only it);
    # what is not is named in the report.
    available = crossval.available_sets(workdir)
    if not any(available.values()):
      raise ReportError(f"{workdir}: no finished evaluation yet (neither every fold nor the "
                        "test set)")
    evaluations, folds = {}, {}
    if available["out_of_fold"]:
      parts = crossval.fold_predictions(workdir)
      evaluations["out_of_fold"] = crossval.pool(parts, summary["split"])
      folds["out_of_fold"] = tuple(p.keys for p in parts)
    if available["test"]:
      evaluations["test"] = predictions.load_final(crossval.fold_dir(workdir, crossval.TEST))
    # A set with any run directory is under way; one without was never started
    # (an ablation on the test set alone): the report words the two differently.
    present = [k for k in [*summary["folds"], crossval.TEST]
               if crossval.fold_dir(workdir, k).is_dir()]
    started = {"out_of_fold": any(k != crossval.TEST for k in present),
               "test": crossval.TEST in present}
    pending = [k for k, ready in available.items() if not ready and started[k]]
    not_run = [k for k, ready in available.items() if not ready and not started[k]]
    curves = {("test" if k == crossval.TEST else f"fold {k}"): _curves(crossval.fold_dir(workdir, k))
              for k in present}
    kind = "crossval"
  elif (workdir / rundir.CONFIG).is_file():
    config = json.loads((workdir / rundir.CONFIG).read_text())
    if config.get("task") != "finetune":
      raise ReportError(f"{workdir} is a {config.get('task')!r} run; reports score fine-tuning")
    final = predictions.load_final(workdir)
    config = {**config, "split": final.split.split("/")[0] if "/" in final.split else ""}
    evaluations = {"test" if final.split.endswith("test") else "validation": final}
    curves = {"run": _curves(workdir)}
    kind = "run"
    pending, not_run, folds = [], [], {}
  else:
    raise ReportError(f"{workdir} is neither a fine-tuning work directory nor an "
                      "train.crossval directory")
  return Source(name=name or default_name(config), workdir=workdir, kind=kind, config=config,
                evaluations=evaluations, curves=curves, pending=tuple(pending),
                not_run=tuple(not_run), folds=folds)


def _common(main: predictions.Predictions, other: predictions.Predictions, name: str
            ) -> predictions.Predictions:
  if set(other.keys) != set(main.keys):
    raise ReportError(
        f"{name} was evaluated on other performances ({len(other.keys)} vs {len(main.keys)}, "
        f"{len(set(other.keys) ^ set(main.keys))} differ): compare runs on the same split and "
        "folds")
  other = other.subset(main.keys)
  if not np.allclose(np.where(main.mask, main.labels, 0), np.where(other.mask, other.labels, 0)):
    raise ReportError(f"{name} has different labels for the same performances")
  return other


def _rows(values: np.ndarray) -> dict[str, float]:
  """`[19]` -> {dimension, group, "mean"} (groups average their dimensions)."""
  return {k: float(v) for k, v in statistics.with_groups(values).items()}


def relative_gain(value: float, baseline: float) -> float | None:
  """(value - baseline) / baseline; None when the baseline's Pearson is not positive:
  a gain relative to a negative correlation has no meaning (the sign flips it)."""
  if not (np.isfinite(value) and np.isfinite(baseline)) or baseline <= 0:
    return None
  return (value - baseline) / baseline


class _FoldScores:
  """Pearson scored fold by fold and averaged over the folds, as k-fold results are
  reported: pooling the folds' predictions instead mixes models that each learned
  their own training pieces' label means, which can turn every model's correlation
  negative although each fold's is positive. The bootstrap resamples each fold's
  performances on their own (stratified), with the same draws for every run; it holds
  the fold models fixed and treats performances as independent, so its CI is narrower
  than the spread between folds (see each fold's value beside it)."""

  def __init__(self, keys: Sequence[str], folds: Sequence[Sequence[str]], resamples: int,
               seed: int):
    index = {k: i for i, k in enumerate(keys)}
    self.members = [np.array([index[k] for k in fold], int) for fold in folds]
    if sorted(np.concatenate(self.members)) != list(range(len(keys))):
      raise ReportError("the folds do not partition the out-of-fold performances")
    if min(len(m) for m in self.members) < 3:
      raise ReportError(f"a fold of {[len(m) for m in self.members]} performances has too few "
                        "for a correlation")
    # Seeds apart from the pooled bootstrap's (seed) so the two never share draws.
    self.weights = [statistics.bootstrap_weights(len(m), resamples, seed + 1 + f)
                    for f, m in enumerate(self.members)]

  def __call__(self, p: predictions.Predictions) -> tuple[np.ndarray, np.ndarray]:
    """(`[F, D]` each fold's Pearson, `[F, B, D]` its bootstrap replicates)."""
    per_fold = np.stack([metrics.per_dimension_pearson(p.predictions[m], p.labels[m], p.mask[m])
                         for m in self.members])
    reps = np.stack([statistics.replicate_scores("pearson", p.predictions[m], p.labels[m],
                                                 p.mask[m], w)
                     for m, w in zip(self.members, self.weights)])
    return per_fold, reps


def _over_folds(per_fold: np.ndarray, reps: np.ndarray, valid: np.ndarray | None = None,
                valid_reps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(`[D]`, `[B, D]`): the mean over the folds where a dimension's Pearson is defined
  (no signal in a fold: NaN, left out) or, for a paired difference, over `valid` ones:
  the folds defined for both runs, so the two means average the same folds."""
  valid = np.isfinite(per_fold) if valid is None else valid
  valid_reps = np.isfinite(reps) if valid_reps is None else valid_reps
  with warnings.catch_warnings():  # a dimension defined in no fold: NaN, as intended
    warnings.simplefilter("ignore", RuntimeWarning)
    return (np.nanmean(np.where(valid, per_fold, np.nan), axis=0),
            np.nanmean(np.where(valid_reps, reps, np.nan), axis=0))


def _fold_rows(per_fold: np.ndarray, reps: np.ndarray) -> dict[str, dict]:
  mean, reps = _over_folds(per_fold, reps)
  low, high = statistics.percentile_interval(reps)
  folds = [_rows(f) for f in per_fold]
  return {k: {"pearson": v, "pearson_low": lo, "pearson_high": hi,
              "folds": [f[k] for f in folds]}
          for (k, v), lo, hi in zip(_rows(mean).items(), _rows(low).values(),
                                    _rows(high).values())}


def evaluate(main: predictions.Predictions, others: dict[str, predictions.Predictions],
             ceiling: ceiling_lib.Ceiling | None, *, resamples: int, seed: int,
             folds: Sequence[Sequence[str]] | None = None,
             other_folds: dict[str, Sequence[Sequence[str]]] | None = None) -> dict:
  """Every number of one evaluated set: rows per dimension/group, comparisons, ceiling.

  With `folds` (the performances of each cross-validation fold) the headline is the
  mean over folds of each fold's Pearson (`fold_rows`); the pooled rows stay beside it.
  A compared run must have been cross-validated on the same folds (`other_folds`).
  """
  passages = main.passages
  n = len(main.keys)
  weights = statistics.bootstrap_weights(n, resamples, seed)
  full = np.ones((1, n))

  def replicate(p: predictions.Predictions, metric: str, w):
    return statistics.replicate_scores(metric, p.predictions, p.labels, p.mask, w, passages)

  def described(p: predictions.Predictions) -> tuple[dict, dict]:
    scores = metrics.score(p.predictions, p.labels, p.mask, passages)
    rows = {k: {} for k in ROWS}
    reps = {}
    for metric, values in scores.items():
      for k, v in _rows(values).items():
        rows[k][metric] = v
    for metric in ("pearson", "pearson_within", "r2"):
      reps[metric] = replicate(p, metric, weights)
      low, high = statistics.percentile_interval(reps[metric])
      for k, v in _rows(low).items():
        rows[k][f"{metric}_low"] = v
      for k, v in _rows(high).items():
        rows[k][f"{metric}_high"] = v
    return rows, reps

  rows, reps = described(main)
  by_fold = _FoldScores(main.keys, folds, resamples, seed) if folds is not None else None
  if by_fold is not None:
    main_folds = by_fold(main)
    fold_rows = _fold_rows(*main_folds)
  if ceiling is not None:
    for key, values in (("ceiling", ceiling.pearson), ("ceiling_within", ceiling.pearson_within)):
      for k, v in _rows(values).items():
        rows[k][key] = v
    ratio = lambda v, c: v / c if c > 0 else float("nan")  # a zero ceiling: no reliable signal
    for k in ROWS:
      rows[k]["of_ceiling"] = ratio(rows[k]["pearson"], rows[k]["ceiling"])
      rows[k]["of_ceiling_within"] = ratio(rows[k]["pearson_within"], rows[k]["ceiling_within"])
  compare = {}
  for name, other in others.items():
    other = _common(main, other, name)
    other_rows, other_reps = described(other)
    paired = statistics.paired_summary(
        reps["pearson"], other_reps["pearson"],
        replicate(main, "pearson", full)[0] - replicate(other, "pearson", full)[0])
    williams = statistics.dependent_correlations(main.predictions, other.predictions,
                                                 main.labels, main.mask)
    p_boot = statistics.holm([paired[d]["p"] for d in taxonomy.DIMENSION_NAMES])
    p_williams = [w["p"] for w in williams]
    p_williams_holm = statistics.holm(p_williams)
    table = {}
    for k in ROWS:
      entry = {"pearson": other_rows[k]["pearson"], "pearson_low": other_rows[k]["pearson_low"],
               "pearson_high": other_rows[k]["pearson_high"], "r2": other_rows[k]["r2"],
               "pearson_within": other_rows[k]["pearson_within"],
               "difference": paired[k]["difference"], "difference_low": paired[k]["low"],
               "difference_high": paired[k]["high"], "p_bootstrap": paired[k]["p"]}
      if k in taxonomy.DIMENSION_NAMES:
        d = taxonomy.DIMENSION_NAMES.index(k)
        entry.update(p_bootstrap_holm=float(p_boot[d]), p_williams=float(p_williams[d]),
                     p_williams_holm=float(p_williams_holm[d]))
      table[k] = entry
    compare[name] = {"rows": table}
    headline, other_headline = rows["mean"]["pearson"], other_rows["mean"]["pearson"]
    if by_fold is not None:
      theirs = (other_folds or {}).get(name)
      if theirs is not None and {frozenset(f) for f in theirs} != {frozenset(f) for f in folds}:
        raise ReportError(f"{name} was cross-validated on other folds: its fold models cannot "
                          "be compared fold by fold (use the same split and --folds)")
      scores = by_fold(other)
      valid = np.isfinite(main_folds[0]) & np.isfinite(scores[0])
      valid_reps = np.isfinite(main_folds[1]) & np.isfinite(scores[1]) & valid[:, None, :]
      (mine, mine_reps), (its, its_reps) = (_over_folds(*x, valid, valid_reps)
                                            for x in (main_folds, scores))
      fold_paired = statistics.paired_summary(mine_reps, its_reps, mine - its)
      compare[name]["fold_rows"] = {
          k: {**v, "difference": fold_paired[k]["difference"],
              "difference_low": fold_paired[k]["low"], "difference_high": fold_paired[k]["high"],
              "p_bootstrap": fold_paired[k]["p"]}
          for k, v in _fold_rows(*scores).items()}
      headline = fold_rows["mean"]["pearson"]
      other_headline = compare[name]["fold_rows"]["mean"]["pearson"]
    compare[name]["relative_mean_pearson_gain"] = relative_gain(headline, other_headline)
  out = {"performances": n, "passages": len(set(passages)), "split": main.split,
         "rows": rows, "compare": compare,
         "headline": "pooled" if by_fold is None else "mean over folds"}
  if by_fold is not None:
    out["fold_rows"] = fold_rows
    out["fold_sizes"] = [len(m) for m in by_fold.members]
  return out


def headline_rows(evaluation: dict) -> dict[str, dict]:
  """The rows a set (or a comparison on it) is judged by: the mean over folds where
  scored by fold, else pooled."""
  return evaluation.get("fold_rows") or evaluation["rows"]


# ---- rendering: one list of blocks, written as Markdown and as HTML
def _fmt(v, digits=3) -> str:
  if v is None or (isinstance(v, float) and not np.isfinite(v)):
    return "–"
  return f"{v:.{digits}f}"


def _p(v) -> str:
  if v is None or not np.isfinite(v):
    return "–"
  return "<0.001" if v < 0.001 else f"{v:.3f}"


def _ci(row: dict, metric: str) -> str:
  return (f"{_fmt(row[metric])} [{_fmt(row[f'{metric}_low'], 2)}, "
          f"{_fmt(row[f'{metric}_high'], 2)}]")


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
    line = [k, _ci(r, "pearson"), _ci(r, "pearson_within"), _fmt(r["spearman"]), _ci(r, "r2"),
            _fmt(r["mse"], 4), _fmt(r["mae"], 4)]
    if with_ceiling:
      line += [_fmt(r["ceiling"]), _fmt(r["of_ceiling"], 2), _fmt(r["of_ceiling_within"], 2)]
    for c in compare.values():
      e = c["rows"][k]
      line += [_difference(e), _p(e.get("p_bootstrap_holm", e["p_bootstrap"])),
               _p(e.get("p_williams_holm"))]
    rows.append(line)
  return head, rows


def _gain(value: float | None) -> str:
  return ("not computable (baseline Pearson <= 0 or undefined)" if value is None
          else f"{100 * value:+.1f} %")


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
    line = [k, _ci(r, "pearson"), *(_fmt(v) for v in r["folds"])]
    for c in compare.values():
      e = c["fold_rows"][k]
      line += [_ci(e, "pearson"), _difference(e), _p(e["p_bootstrap"])]
    rows.append(line)
  return head, rows


def _difference(e: dict) -> str:
  diff = f"{e['difference']:+.3f}" if np.isfinite(e["difference"]) else "–"
  return f"{diff} [{_fmt(e['difference_low'], 2)}, {_fmt(e['difference_high'], 2)}]"


def _comparison_table(evaluation: dict) -> tuple[list[str], list[list[str]]]:
  """One row per other run: its group Pearsons, and the main run's mean-Pearson lead
  (on the headline: the mean over folds where the set was scored fold by fold)."""
  head = ["other run", *(f"{g} Pearson" for g in taxonomy.GROUPS), "mean Pearson [CI]",
          "Δ mean [CI]", "p (bootstrap)", "relative gain"]
  rows = []
  for name, c in evaluation["compare"].items():
    r = headline_rows(c)
    rows.append([name, *(_fmt(r[g]["pearson"]) for g in taxonomy.GROUPS), _ci(r["mean"], "pearson"),
                 _difference(r["mean"]), _p(r["mean"]["p_bootstrap"]),
                 _gain(c["relative_mean_pearson_gain"])])
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


def _blocks(report: dict, figure_paths: dict[str, list[pathlib.Path]]) -> list[tuple]:
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
  if report.get("targets"):
    b.append(("h2", "Targets"))
    b.append(("table", ["set", "goal", "value", "met", "p of Δ ≠ 0 (bootstrap, two-sided)"],
              [[EVALUATION_TITLES.get(t["evaluation"], t["evaluation"]), t["goal"],
                target_value(t), "yes" if t["met"] else "NO", _p(t.get("p"))]
               for t in report["targets"]]))
    missed: dict[str, list[str]] = {}
    for t in report["targets"]:
      if not t["met"]:
        missed.setdefault(EVALUATION_TITLES.get(t["evaluation"], t["evaluation"]).lower(),
                          []).append(t["goal"])
    b.append(("p", "Every target is met." if not missed else
              "Not met: " + "; ".join(f"{where}: {', '.join(goals)}"
                                      for where, goals in missed.items())
              + ". See the tables below for by how much."))
  for key, evaluation in report["evaluations"].items():
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
                       f"{_gain(c['relative_mean_pearson_gain'])}."))
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
    for path in figure_paths.get(key, []):
      b.append(("img", path))
  b.append(("h2", "Published anchors (mean R² over the 19 dimensions)"))
  rows = [[a["source"], a["split"], _fmt(a["r2"])] for a in ANCHORS]
  for key, evaluation in report["evaluations"].items():
    r = evaluation["rows"]["mean"]
    pooled = ", pooled" if "fold_rows" in evaluation else ""
    rows.append([f"this report: {main['name']} ({EVALUATION_TITLES.get(key, key).lower()}"
                 f"{pooled})",
                 evaluation["split"].split("/")[0], f"{_ci(r, 'r2')}"])
  b.append(("table", ["result", "split", "R²"], rows))
  b.append(("p", "The published numbers are from symbolic (score-aligned MIDI) and audio models "
                 "on their own folds; ours are on this project's folds of the same release, so "
                 "the comparison is indicative, not paired."))
  b.append(("h2", "Human ceiling"))
  covered = [e["ceiling"] for e in report["evaluations"].values() if e["ceiling"] is not None]
  if covered:
    c = covered[0]
    b.append(("p", f"From {report['ceiling_source']}: split-half reliability of the rater panel "
                   f"with Spearman-Brown ({c['splits']} random splits of each performance's "
                   f"raters; {c['raters_per_performance']['median']:g} raters per performance "
                   "in the median), computed on each evaluated set's own performances. The "
                   "ceiling on Pearson is sqrt(reliability): what a model predicting every "
                   "performance's expected rating perfectly would score against these labels."))
    for key, evaluation in report["evaluations"].items():
      if evaluation["ceiling"] is None:
        b.append(("p", f"Not computed for {EVALUATION_TITLES.get(key, key).lower()}: "
                       f"{evaluation['ceiling_note']}."))
  else:
    notes = {e.get("ceiling_note") for e in report["evaluations"].values()} - {None}
    b.append(("p", f"Not computed: {'; '.join(sorted(notes)) or report['ceiling_source']}."))
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


def to_markdown(blocks, directory: pathlib.Path) -> str:
  out = []
  for block in blocks:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
      out.append("#" * int(kind[1]) + " " + block[1])
    elif kind == "p":
      out.append(block[1])
    elif kind == "table":
      head, rows = block[1], block[2]
      out.append("| " + " | ".join(head) + " |")
      out.append("|" + "|".join("---" for _ in head) + "|")
      out.extend("| " + " | ".join(r) + " |" for r in rows)
    elif kind == "img":
      rel = block[1].relative_to(directory)
      out.append(f"![{rel.stem}]({rel.as_posix()})")
    out.append("")
  return "\n".join(out)


def to_html(blocks, title: str) -> str:
  out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
         f"<title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
         "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
         "</head><body>"]
  for block in blocks:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
      out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
    elif kind == "p":
      out.append(f"<p>{html.escape(block[1])}</p>")
    elif kind == "table":
      out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                 + "</tr>")
      out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                 for r in block[2])
      out.append("</table>")
    elif kind == "img":
      data = base64.b64encode(block[1].read_bytes()).decode("ascii")
      out.append(f"<p><img alt='{html.escape(block[1].stem)}' "
                 f"src='data:image/png;base64,{data}'></p>")
  out.append("</body></html>")
  return "\n".join(out)


def _figures(report: dict, sources: list[Source], directory: pathlib.Path,
             attention_audio: str | None) -> dict[str, list[pathlib.Path]]:
  main = sources[0]
  paths: dict[str, list[pathlib.Path]] = {}
  for key, evaluation in report["evaluations"].items():
    rows = evaluation["rows"]
    dims = taxonomy.DIMENSION_NAMES
    runs = {main.name: {"value": [rows[d]["pearson"] for d in dims],
                        "low": [rows[d]["pearson_low"] for d in dims],
                        "high": [rows[d]["pearson_high"] for d in dims]}}
    for name, c in evaluation["compare"].items():
      runs[name] = {"value": [c["rows"][d]["pearson"] for d in dims],
                    "low": [c["rows"][d]["pearson_low"] for d in dims],
                    "high": [c["rows"][d]["pearson_high"] for d in dims]}
    title = EVALUATION_TITLES.get(key, key)
    p = main.evaluations[key]
    paths[key] = [
        figures.pearson_bars(directory / f"{key}_pearson.png", runs,
                             [rows[d]["ceiling"] for d in dims] if "ceiling" in rows["mean"]
                             else None, f"{title}: Pearson r"
                             + (", all folds pooled" if "fold_rows" in evaluation else "")),
        figures.scatter(directory / f"{key}_scatter.png", p.predictions, p.labels, p.mask,
                        [rows[d]["pearson"] for d in dims], f"{main.name}, {title.lower()}"),
    ]
  paths[""] = [figures.curves(directory / "training_curves.png", main.curves,
                              f"{main.name}: training")]
  if attention_audio:
    from eval import attention_figures, loading
    # The model the reported predictions came from (the run's last step), not the
    # best-on-validation checkpoint.
    run = loading.load(main.run_dir, step="latest")
    paths[""] += attention_figures.figures_for_audio(run, attention_audio, directory / "attention")
  return paths


def targets(evaluations: dict, pearson: float | None, gain: float | None,
            baselines: Sequence[str]) -> list[dict]:
  """Plain checks of the goals: Pearson >= `pearson` per group, relative gain >= `gain`
  over each run named in `baselines`."""
  out = []
  for key, evaluation in evaluations.items():
    rows = headline_rows(evaluation)
    if pearson is not None:
      for group in taxonomy.GROUPS:
        value = rows[group]["pearson"]
        out.append({"evaluation": key, "goal": f"{group} Pearson >= {pearson:g}",
                    "value": value, "met": bool(value >= pearson)})
    if gain is not None:
      # The gain goal is over the baselines, not over the AST's own ablations, and
      # every baseline gets a row on every set: never "every target is met" with a
      # baseline unchecked.
      if not baselines:
        out.append({"evaluation": key, "goal": f"mean Pearson >= {100 * gain:g} % over the "
                    "baselines", "value": None, "met": False, "kind": "gain",
                    "note": "no baseline compared on this set"})
      for name in baselines:
        goal = f"mean Pearson >= {100 * gain:g} % over {name}"
        c = evaluation["compare"].get(name)
        if c is None:
          out.append({"evaluation": key, "goal": goal, "value": None, "met": False,
                      "kind": "gain", "note": f"{name} has no predictions for this set"})
          continue
        value = c["relative_mean_pearson_gain"]
        # The point estimate decides "met"; the paired p-value of the lead says how
        # far to trust it.
        lead = headline_rows(c)["mean"]
        if value is None:
          out.append({"evaluation": key, "goal": goal, "value": None, "met": False,
                      "kind": "gain", "note": f"not computable: {name}'s mean Pearson is "
                      f"{_fmt(lead['pearson'])} (<= 0 or undefined)"})
          continue
        out.append({"evaluation": key, "goal": goal, "value": value,
                    "met": bool(value >= gain), "kind": "gain", "p": lead["p_bootstrap"]})
  return out


def target_value(target: dict) -> str:
  """A target's value as the report shows it: a gain in percent, a Pearson as is."""
  if target.get("note"):
    return target["note"]
  if target.get("kind") == "gain":
    return f"{100 * target['value']:+.1f} %"
  return _fmt(target["value"])


def _shown(path: str | pathlib.Path) -> str:
  """`path` as the report writes it: relative to the working directory."""
  return os.path.relpath(path)


def _raw_ratings(main: Source, percepiano_dir: str | None):
  """The raw per-rater answers for the ceiling, and where they came from.

  `--percepiano_dir` must hold them; without it, the release the run's data
  were made from is used when it is still there (else the report says so).
  """
  if percepiano_dir is not None:
    path = pathlib.Path(percepiano_dir) / ceiling_lib.percepiano.RAW_RATINGS_FILE
    return ceiling_lib.percepiano.read_raw_ratings(path), _shown(path)
  metadata = main.run_dir / rundir.DATA_METADATA
  release = None
  if metadata.is_file():
    release = json.loads(metadata.read_text()).get("config", {}).get("percepiano_dir")
  if not release:
    return None, "no --percepiano_dir given and the run's data name no release"
  path = pathlib.Path(release) / ceiling_lib.percepiano.RAW_RATINGS_FILE
  if not path.is_file():
    return None, (f"the run's release has no raw ratings at {_shown(path)} "
                  "(pass --percepiano_dir)")
  return ceiling_lib.percepiano.read_raw_ratings(path), _shown(path)


def build(workdir, compare=(), *, names=(), percepiano_dir: str | None = None,
          output_dir: str | pathlib.Path | None = None, resamples: int =
          statistics.DEFAULT_RESAMPLES, seed: int = 0, ceiling_splits: int = 100,
          attention_audio: str | None = None, target_pearson: float | None = None,
          target_gain: float | None = None, notes=()) -> dict:
  """Builds the report; returns its JSON content (also written with the Markdown/HTML)."""
  paths = [workdir, *compare]
  if len(names) > len(paths):
    raise ReportError(f"{len(names)} --names for {len(paths)} runs")
  names = list(names) + [None] * (len(paths) - len(names))
  sources = [load_source(p, n) for p, n in zip(paths, names)]
  if len({s.name for s in sources}) != len(sources):
    raise ReportError(f"run names must differ: {[s.name for s in sources]} (pass --names)")
  main = sources[0]
  for s in sources[1:]:
    # A run sharing no set with the main run, with none of them under way or still to
    # run (a single fold's validation run beside a cross-validation), is a mistake,
    # not a pending baseline.
    if not set(main.evaluations) & {*s.evaluations, *s.pending, *s.not_run}:
      raise ReportError(f"{s.name} has no {' or '.join(main.evaluations)} predictions (it has "
                        f"{', '.join(s.evaluations) or 'none'}): compare runs evaluated on "
                        "the same sets")
  directory = pathlib.Path(output_dir) if output_dir else main.workdir / "report"
  directory.mkdir(parents=True, exist_ok=True)
  raw, ceiling_note = _raw_ratings(main, percepiano_dir)
  evaluations = {}
  for key, p in main.evaluations.items():
    others = {s.name: s.evaluations[key] for s in sources[1:] if key in s.evaluations}
    absent = [s.name for s in sources[1:] if key not in s.evaluations]
    # The ceiling of exactly these performances' labels.
    ceiling, note = None, ceiling_note if raw is None else None
    if raw is not None:
      try:
        ceiling = ceiling_lib.split_half(raw, p.keys, splits=ceiling_splits, seed=seed)
      except ceiling_lib.percepiano.PercePianoError as e:
        note = f"the raw ratings do not cover these performances ({e})"
    evaluations[key] = evaluate(p, others, ceiling, resamples=resamples, seed=seed,
                                folds=main.folds.get(key),
                                other_folds={s.name: s.folds.get(key) for s in sources[1:]})
    evaluations[key]["ceiling"] = None if ceiling is None else ceiling.to_dict()
    evaluations[key]["ceiling_note"] = note  # why there is no ceiling for this set
    # A baseline evaluated on other sets only (e.g. an ablation run on the test set
    # alone) is named, not silently left out of this set's comparisons.
    evaluations[key]["not_compared"] = absent
  report = {
      "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "resamples": resamples, "seed": seed,
      "runs": [{"name": s.name, "workdir": _shown(s.workdir), "kind": s.kind,
                "backbone": s.backbone, "split": s.split, "pending": list(s.pending),
                "not_run": list(s.not_run)}
               for s in sources],
      "evaluations": evaluations,
      "ceiling_source": ceiling_note,
      "anchors": list(ANCHORS),
      "notes": list(notes),
  }
  report["targets"] = targets(evaluations, target_pearson, target_gain,
                              [s.name for s in sources[1:] if s.backbone != "ast"])
  figure_paths = _figures(report, sources, directory, attention_audio)
  report["figures"] = [str(p.relative_to(directory)) for ps in figure_paths.values() for p in ps]
  blocks = _blocks(report, figure_paths)
  (directory / "report.md").write_text(to_markdown(blocks, directory))
  (directory / "report.html").write_text(to_html(blocks, f"Evaluation report: {main.name}"))
  (directory / "report.json").write_text(
      json.dumps(_finite(report), indent=1, default=float, allow_nan=False) + "\n")
  return report


def _finite(value):
  """`value` with every NaN/inf float as None: strict JSON (NaN is not JSON)."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else None
  return value


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


if __name__ == "__main__":
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
  app.run(main)
