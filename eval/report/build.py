"""Builds the report: loads the runs, scores each set, writes report.md/.html/.json and PNGs."""

from __future__ import annotations

import datetime
import json
import pathlib

from eval import ceiling as ceiling_lib
from eval import statistics
from eval.report import common, leaderboard, plots, rendering, sections
from eval.report.common import ANCHORS, ReportError
from eval.report.scoring import evaluate
from eval.report.sources import Source, load_source, raw_ratings, shown
from eval.report.targets import targets


def _sources(paths: list, names) -> list[Source]:
  """The runs, main first; refused when their names clash or a compared run can never
  share a set with the main run."""
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
  return sources


def _evaluation(key: str, sources: list[Source], raw, ceiling_note: str, *, resamples: int,
                seed: int, ceiling_splits: int) -> dict:
  """One set of the main run scored, with its ceiling and every run compared on it."""
  main = sources[0]
  p = main.evaluations[key]
  others = {s.name: s.evaluations[key] for s in sources[1:] if key in s.evaluations}
  absent = [s.name for s in sources[1:] if key not in s.evaluations]
  # The ceiling of exactly these performances' labels.
  ceiling, note = None, ceiling_note if raw is None else None
  if raw is not None:
    try:
      ceiling = ceiling_lib.split_half(raw, p.keys, splits=ceiling_splits, seed=seed)
    except ceiling_lib.percepiano.PercePianoError as e:
      note = f"the raw ratings do not cover these performances ({e})"
  evaluation = evaluate(p, others, ceiling, resamples=resamples, seed=seed,
                        folds=main.folds.get(key),
                        other_folds={s.name: s.folds.get(key) for s in sources[1:]})
  evaluation["ceiling"] = None if ceiling is None else ceiling.to_dict()
  evaluation["ceiling_note"] = note  # why there is no ceiling for this set
  # A baseline evaluated on other sets only (e.g. an ablation run on the test set
  # alone) is named, not silently left out of this set's comparisons.
  evaluation["not_compared"] = absent
  return evaluation


def _write(report: dict, figure_paths: dict[str, list[pathlib.Path]], directory: pathlib.Path,
           title: str) -> None:
  """report.md, report.html and report.json into `directory`."""
  blocks = sections.blocks(report, figure_paths)
  (directory / "report.md").write_text(rendering.to_markdown(blocks, directory))
  (directory / "report.html").write_text(rendering.to_html(blocks, title))
  (directory / "report.json").write_text(
      json.dumps(common.finite(report), indent=1, default=float, allow_nan=False) + "\n")


def build(workdir, compare=(), *, names=(), percepiano_dir: str | None = None,
          output_dir: str | pathlib.Path | None = None, resamples: int =
          statistics.DEFAULT_RESAMPLES, seed: int = 0, ceiling_splits: int = 100,
          attention_audio: str | None = None, target_pearson: float | None = None,
          target_gain: float | None = None, notes=()) -> dict:
  """Builds the report; returns its JSON content (also written with the Markdown/HTML)."""
  sources = _sources([workdir, *compare], names)
  main = sources[0]
  directory = pathlib.Path(output_dir) if output_dir else main.workdir / "report"
  directory.mkdir(parents=True, exist_ok=True)
  raw, ceiling_note = raw_ratings(main, percepiano_dir)
  evaluations = {key: _evaluation(key, sources, raw, ceiling_note, resamples=resamples,
                                  seed=seed, ceiling_splits=ceiling_splits)
                 for key in main.evaluations}
  report = {
      "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "resamples": resamples, "seed": seed,
      "runs": [{"name": s.name, "workdir": shown(s.workdir), "kind": s.kind,
                "backbone": s.backbone, "split": s.split, "pending": list(s.pending),
                "not_run": list(s.not_run)}
               for s in sources],
      "evaluations": evaluations,
      "ceiling_source": ceiling_note,
      # Every run beside the ridge, when one of them is the ridge: the report's first table.
      "leaderboard": leaderboard.score(sources, raw, resamples=resamples, seed=seed,
                                       ceiling_splits=ceiling_splits),
      "anchors": list(ANCHORS),
      "notes": list(notes),
  }
  report["targets"] = targets(evaluations, target_pearson, target_gain,
                              [s.name for s in sources[1:] if s.backbone != "ast"])
  figure_paths = plots.draw(report, sources, directory, attention_audio)
  report["figures"] = [str(p.relative_to(directory)) for ps in figure_paths.values() for p in ps]
  _write(report, figure_paths, directory, f"Evaluation report: {main.name}")
  return report
