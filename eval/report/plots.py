"""The report's figures, drawn from its numbers and the main run's predictions."""

from __future__ import annotations

import pathlib

from eval import figures
from eval.report.common import EVALUATION_TITLES
from eval.report.sources import Source
from pipelines.datasets import taxonomy


def draw(report: dict, sources: list[Source], directory: pathlib.Path,
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
