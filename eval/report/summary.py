"""`python -m eval.report.summary`: every model of a benchmark against the ridge, in one JSON file.

  python -m eval.report.summary --runs_dir=out/benchmark --output=reports/benchmark/summary.json

RUNS_DIR holds one directory per split (`piece`, `performer`), each with one
`train.crossval` / `train.ridge` directory per model (`RUNS_DIR/piece/ridge`, ...). Every
model with a finished set is scored on it beside the closed-form bar, the model whose
backbone is "ridge", with the report's own statistics (`eval.report.scoring`): for each
set (`<split>/out_of_fold`: the mean over folds of each fold's Pearson; `<split>/test`)
and each model, by its directory name (underscores as hyphens: `oracle-notes`):

  backbone                     the run's config (ridge, oracle, notes, probe, ast, ...)
  timing, dynamics, expression, mean   Pearson (a group: the mean of its dimensions')
  mean_ci                      [low, high] of the mean, bootstrap over performances
                               (stratified by fold out of fold)
  r2                           the mean over dimensions of R² (out of fold: over folds too)
  vs_ridge                     {delta, low, high, p}: the paired bootstrap of the mean
                               Pearson against the ridge on the same performances (null
                               for the ridge itself)

`about.<set>.r2_of_training_mean` is the R² of predicting every held-out performance by the
mean label of its training side: where it is below 0 the held-out side's mean rating differs
from the training side's (on the piece split, a held-out piece's offset), which a model's R²
must overcome and its Pearson does not see.

A model without a finished set is listed under `pending` with what it lacks.

`--pairs=A:B,...` adds head-to-head comparisons beside the bar (an ablation: the same
encoder pre-trained with and without an objective): `pairs.<set>["A vs B"]` is
{delta, low, high, p}, the same paired bootstrap of A's mean Pearson against B's, for each set
both have.

`--carry_from=EARLIER.json` is for a machine that reran only part of the benchmark (run
directories are not committed, and a full rerun takes many sessions): a model of a set that
the earlier summary holds and RUNS_DIR lacks is kept as it was, named under
`about.carried`, provided the ridge scored here on that set equals the earlier summary's
ridge in every figure (same shards, same folds, same bootstrap); otherwise the command
refuses, because the carried paired differences would be against another bar.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys

import numpy as np
from absl import flags

from eval import machine, statistics
from eval.report import common, scoring, sources
from eval.report.common import ReportError
from pipelines import entry_point
from pipelines.datasets import taxonomy
from train import crossval, metrics

FLAGS = flags.FLAGS
SETS = ("out_of_fold", "test")


def _mean_r2(p, folds) -> float:
  """The mean over dimensions of R², averaged over the folds where there are folds (pooled
  R² mixes fold models that each learned their training passages' means)."""
  parts = [p.subset(f) for f in folds] if folds else [p]
  values = [np.nanmean(metrics.score(q.predictions, q.labels, q.mask, q.passages)["r2"])
            for q in parts]
  return float(np.mean(values))


def _training_mean_r2(out_of_fold, folds, held=None) -> float:
  """The mean R² of a model that knows nothing of the audio: each held-out performance is
  predicted by the mean label of the performances its model trained on (the other folds; all
  folds for `held`, the test set). Below 0 where a held-out side's mean rating differs from its
  training side's (piece-grouped folds: a piece's performances share a rating offset); a
  model's own R² must predict that offset to rise above 0, which Pearson never asks."""
  def r2(train, test) -> float:
    mean = np.where(train.mask, train.labels, 0).sum(0) / train.mask.sum(0)
    constant = np.broadcast_to(mean, test.labels.shape)
    return float(np.nanmean(metrics.per_dimension("r2", constant, test.labels, test.mask)))
  if held is not None:
    return r2(out_of_fold, held)
  return float(np.mean([r2(out_of_fold.subset([k for f in folds if f is not fold for k in f]),
                           out_of_fold.subset(fold)) for fold in folds]))


def _entry(source: sources.Source, rows: dict, r2: float, versus: dict | None) -> dict:
  return {"backbone": source.backbone,
          **{g: rows[g]["pearson"] for g in (*taxonomy.GROUPS, "mean")},
          "mean_ci": [rows["mean"]["pearson_low"], rows["mean"]["pearson_high"]], "r2": r2,
          "vs_ridge": versus}


def _versus(compared: dict) -> dict:
  """{delta, low, high, p} of the compared run against the main one (the report's difference
  is the main run's lead: negated here)."""
  rows = compared.get("fold_rows") or compared["rows"]
  return {"delta": -rows["mean"]["difference"], "low": -rows["mean"]["difference_high"],
          "high": -rows["mean"]["difference_low"], "p": rows["mean"]["p_bootstrap"]}


def score_pairs(runs: list[sources.Source], pairs, *, resamples: int,
                seed: int) -> dict[str, dict]:
  """{set: {"A vs B": versus}} for each (A, B) of `pairs` whose runs both have the set."""
  by_name = {s.name: s for s in runs}
  out = {}
  for a, b in pairs:
    if a not in by_name or b not in by_name:
      continue
    first, second = by_name[a], by_name[b]
    for key in SETS:
      if key not in first.evaluations or key not in second.evaluations:
        continue
      evaluation = scoring.evaluate(second.evaluations[key], {a: first.evaluations[key]}, None,
                                    resamples=resamples, seed=seed,
                                    folds=second.folds.get(key),
                                    other_folds={a: first.folds.get(key)})
      out.setdefault(key, {})[f"{a} vs {b}"] = _versus(evaluation["compare"][a])
  return out


def score_split(runs: list[sources.Source], *, resamples: int, seed: int) -> dict[str, dict]:
  """{set: {model name: entry}} of one split's runs against its ridge."""
  bars = [s for s in runs if s.backbone == "ridge"]
  if len(bars) != 1:
    raise ReportError(f"a split needs exactly one ridge run to compare against, found "
                      f"{[s.name for s in bars]}")
  ridge = bars[0]
  out = {}
  for key in SETS:
    if key not in ridge.evaluations:
      continue
    others = {s.name: s.evaluations[key] for s in runs if s is not ridge and key in s.evaluations}
    folds = ridge.folds.get(key)
    evaluation = scoring.evaluate(ridge.evaluations[key], others, None, resamples=resamples,
                                  seed=seed, folds=folds,
                                  other_folds={s.name: s.folds.get(key) for s in runs})
    models = {ridge.name: _entry(ridge, scoring.headline_rows(evaluation),
                                 _mean_r2(ridge.evaluations[key], folds), None)}
    for s in runs:
      if s.name not in others:
        continue
      compared = evaluation["compare"][s.name]
      rows = compared.get("fold_rows") or compared["rows"]
      models[s.name] = _entry(s, rows, _mean_r2(s.evaluations[key], s.folds.get(key)),
                              _versus(compared))
    out[key] = {"headline": evaluation["headline"], "performances": evaluation["performances"],
                "models": models}
    if "out_of_fold" in ridge.evaluations:
      everyone = ridge.evaluations["out_of_fold"]
      fold_keys = ridge.folds["out_of_fold"]
      out[key]["r2_of_training_mean"] = (
          _training_mean_r2(everyone, fold_keys) if key == "out_of_fold"
          else _training_mean_r2(everyone, fold_keys, held=ridge.evaluations[key]))
  return out


def summarise(runs_dir: pathlib.Path, splits=("piece", "performer"), *,
              resamples: int = statistics.DEFAULT_RESAMPLES, seed: int = 0,
              pairs=()) -> dict:
  """The summary of `splits`; `pairs`: (A, B) model names compared head to head."""
  summary = {"about": {
      "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "resamples": resamples, "seed": seed, "machine": machine.describe(),
      "metric": "Pearson; a group's = the mean of its dimensions'; out_of_fold = the mean over "
                "folds"}, "pending": {}, "pairs": {}}
  for split in splits:
    runs = []
    for directory in sorted(p for p in (runs_dir / split).glob("*")
                            if (p / crossval.SUMMARY).is_file()):
      name = directory.name.replace("_", "-")
      try:
        runs.append(sources.load_source(directory, name))
      except ReportError as e:  # nothing finished yet
        summary["pending"][f"{split}/{name}"] = str(e)
    if not runs:
      continue
    for key, value in score_split(runs, resamples=resamples, seed=seed).items():
      summary[f"{split}/{key}"] = value["models"]
      summary["about"][f"{split}/{key}"] = {
          k: value[k] for k in ("headline", "performances", "r2_of_training_mean") if k in value}
    for key, value in score_pairs(runs, pairs, resamples=resamples, seed=seed).items():
      summary["pairs"][f"{split}/{key}"] = value
  return summary


def _same_figures(a, b, tolerance: float = 1e-6) -> bool:
  """Equal entries, numbers within `tolerance` (the last bits of a fit move with the CPU's
  vector width; a different bar moves the figures by far more)."""
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same_figures(a[k], b[k], tolerance) for k in a)
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same_figures(x, y, tolerance) for x, y in zip(a, b))
  if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
    return abs(a - b) <= tolerance
  return a == b


def carry(summary: dict, earlier: dict, source: str = "") -> dict:
  """`summary` with the models of `earlier` it lacks, set by set (see the module doc)."""
  carried = {}
  for key, models in earlier.items():
    if "/" not in key:
      continue
    if key not in summary:
      raise ReportError(f"{key}: the earlier summary has it, the runs here do not (rerun its "
                        "ridge at least, so the carried rows can be checked against it)")
    ridge = [n for n, m in summary[key].items() if m["backbone"] == "ridge"]
    before = [n for n, m in models.items() if m["backbone"] == "ridge"]
    if ridge != before or not _same_figures(summary[key][ridge[0]], models[before[0]]):
      raise ReportError(f"{key}: the ridge scored here differs from the earlier summary's "
                        f"({summary[key][ridge[0]]['mean']} against "
                        f"{models[before[0]]['mean'] if before else None}): its rows cannot be "
                        "carried")
    for name, entry in models.items():
      if name not in summary[key]:
        summary[key][name] = entry
        carried.setdefault(key, []).append(name)
  for key, compared in earlier.get("pairs", {}).items():
    for name, entry in compared.items():
      if name not in summary["pairs"].setdefault(key, {}):
        summary["pairs"][key][name] = entry
        carried.setdefault(f"pairs/{key}", []).append(name)
  for name, why in earlier.get("pending", {}).items():
    summary["pending"].setdefault(name, why)
  if carried:
    summary["about"]["carried"] = {"from": source or earlier["about"].get("generated", ""),
                                   "generated": earlier["about"].get("generated", ""),
                                   "models": carried}
  return summary


def define_flags() -> None:
  flags.DEFINE_string("runs_dir", None, "One directory per split, one run per model.",
                      required=True)
  flags.DEFINE_string("output", None, "Where summary.json goes.", required=True)
  flags.DEFINE_list("splits", ["piece", "performer"], "The splits to summarise.")
  flags.DEFINE_integer("resamples", statistics.DEFAULT_RESAMPLES, "Bootstrap resamples.")
  flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
  flags.DEFINE_string("carry_from", None, "An earlier summary.json whose models missing from "
                      "--runs_dir are kept, if its ridge matches the one scored here exactly.")
  flags.DEFINE_list("pairs", [], "A:B,... models (by summary name, e.g. probe-both:probe-ssast) "
                    "compared head to head: pairs.<set>['A vs B'].")


def main(argv: list[str]) -> int:
  del argv
  try:
    pairs = [tuple(pair.split(":")) for pair in FLAGS.pairs]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
      raise ValueError(f"--pairs takes A:B,... (two model names each): {FLAGS.pairs}")
    summary = summarise(pathlib.Path(FLAGS.runs_dir), FLAGS.splits, resamples=FLAGS.resamples,
                        seed=FLAGS.seed, pairs=pairs)
    if FLAGS.carry_from:
      summary = carry(summary, json.loads(pathlib.Path(FLAGS.carry_from).read_text()),
                      FLAGS.carry_from)
  except (ReportError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  out = pathlib.Path(FLAGS.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(common.finite(summary), indent=1, allow_nan=False) + "\n")
  for key in (k for k in summary if "/" in k):
    print(f"{key}: " + ", ".join(
        f"{name} {m['mean']:.3f}" + (f" ({m['vs_ridge']['delta']:+.3f}, p {m['vs_ridge']['p']:.3f})"
                                     if m["vs_ridge"] else "")
        for name, m in summary[key].items()))
  for key, compared in summary["pairs"].items():
    print(f"pairs {key}: " + ", ".join(f"{name} {v['delta']:+.3f} (p {v['p']:.3f})"
                                       for name, v in compared.items()))
  return 0


def cli() -> None:
  """Console entry point (`ppt-summary`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
