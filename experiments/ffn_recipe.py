"""The training recipe's sanity check: the trainer's feed-forward model on the ridge's statistics.

  python -m experiments.ffn_recipe --data_dir=SHARDS --workdir=W \
      [--statistics=RIDGE_WORKDIR/clip_statistics.npz] [--variants=a,b] [--split=piece]

The closed-form ridge (train.ridge) and a feed-forward network trained by
train.main (`backbone=clip_stats`) see exactly the same clip statistics of the
same performances on the same folds. If the trainer (optimiser, schedule,
evaluation, early stopping, selection) works, the network reaches the ridge's
mean Pearson over the folds; the issue's bar is within 0.03. Each variant is one
`train.crossval` over every fold (minutes on 2 cores); the table prints the mean
over folds of the selected evaluation, the epochs it chose and the wall time,
next to the ridge's folds when `--ridge` names its cross-validation.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
from absl import app, flags

from experiments import cpu_scale
from pipelines import entry_point
from pipelines.datasets import taxonomy
from train import crossval

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent

# Every variant: clip_stats backbone, evaluation every epoch, early stopping on the
# validation fold's mean Pearson (cpu_scale.STATS_FFN_COMMON); overrides on top of it.
# "lr3e-4_drop_flat_mixup" is the recipe the benchmark runs (cpu_scale.STATS_FFN_RECIPE).
VARIANTS = {
    "lr1e-3": ["--config.optimizer.peak_lr=1e-3"],
    "lr3e-4_drop": ["--config.optimizer.peak_lr=3e-4", "--config.model.pooled_stats.dropout=0.3",
                    "--config.model.pooled_stats.input_dropout=0.2",
                    "--config.optimizer.weight_decay=0.05"],
    "lr3e-4_drop_flat": ["--config.optimizer.peak_lr=3e-4",
                         "--config.model.pooled_stats.dropout=0.3",
                         "--config.model.pooled_stats.input_dropout=0.2",
                         "--config.optimizer.weight_decay=0.05", "--config.model.head=flat"],
    "lr1e-3_drop_flat": ["--config.optimizer.peak_lr=1e-3",
                         "--config.model.pooled_stats.dropout=0.3",
                         "--config.model.pooled_stats.input_dropout=0.2",
                         "--config.optimizer.weight_decay=0.05", "--config.model.head=flat"],
    "lr3e-4_drop_flat_mixup": cpu_scale.STATS_FFN_RECIPE,
    "lr1e-4_small": ["--config.optimizer.peak_lr=1e-4", "--config.model.pooled_stats.depth=1",
                     "--config.model.pooled_stats.hidden=256",
                     "--config.model.pooled_stats.dropout=0.5"],
}


def define_flags() -> None:
  flags.DEFINE_string("data_dir", "out/benchmark/shards/percepiano", "PercePiano shards with audio.")
  flags.DEFINE_string("workdir", "out/ffn_recipe", "One cross-validation per variant.")
  flags.DEFINE_string("statistics", "out/benchmark/piece/ridge/clip_statistics.npz",
                      "The clip-statistics cache (computed there when missing).")
  flags.DEFINE_string("ridge", "out/benchmark/piece/ridge", "The ridge's cross-validation "
                      "(train.ridge) on the same split, for the comparison row; '' to skip.")
  flags.DEFINE_list("variants", list(VARIANTS), f"Of {list(VARIANTS)}.")
  flags.DEFINE_enum("split", "piece", ["piece", "performer"], "PercePiano split.")
  flags.DEFINE_bool("test", False, "Also the test run (trained for the folds' median selected "
                    "epoch, scored once).")


def _row(name: str, directory: pathlib.Path) -> str:
  summary = json.loads((directory / "crossval.json").read_text())
  runs = [summary["runs"][str(k)] for k in summary["folds"]]
  means = {g: np.mean([r["scores"][f"pearson/{g}"] for r in runs])
           for g in (*taxonomy.GROUPS, "mean")}
  epochs = [r.get("selected_epoch") for r in runs]
  seconds = sum(r.get("wall_seconds") or 0 for r in runs)
  folds = " ".join(f"{r['scores']['pearson/mean']:.3f}" for r in runs)
  chosen = " ".join("-" if e is None else f"{e:.0f}" for e in epochs)
  own = summary.get("per_fold_own_selection", {}).get("pearson/mean")
  test = summary["runs"].get(crossval.TEST, {})
  test_text = (" / ".join(f"{test['scores'][f'pearson/{g}']:.3f}" for g in ("timing", "mean"))
               if test.get("finished") else "-")
  return (f"| {name} | " + " | ".join(f"{means[g]:.3f}" for g in (*taxonomy.GROUPS, "mean"))
          + f" | {'-' if own is None else f'{own:.3f}'} | {folds} | {chosen} | "
          f"{test_text} | {seconds:.0f} s |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  work = pathlib.Path(FLAGS.workdir).absolute()
  rows = []
  for name in FLAGS.variants:
    directory = work / name
    command = [sys.executable, "-m", "train.crossval", *cpu_scale.STATS_FFN_COMMON, *VARIANTS[name],
               *(["--test"] if FLAGS.test else []),
               f"--workdir={directory}", f"--split={FLAGS.split}",
               f"--config.data_dir={pathlib.Path(FLAGS.data_dir).absolute()}",
               f"--config.clip_statistics_cache={pathlib.Path(FLAGS.statistics).absolute()}"]
    log = work / f"{name}.log"
    work.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
      if subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode:
        sys.exit(f"error: variant {name} failed; see {log}")
    rows.append(_row(name, directory))
    print(rows[-1], flush=True)
  header = ("| variant | " + " | ".join((*taxonomy.GROUPS, "mean")) +
            " | mean, each fold selecting on itself | per fold | epochs chosen | test timing / mean "
            "| wall |")
  print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
  if FLAGS.ridge:
    print(_row("ridge (closed form)", pathlib.Path(FLAGS.ridge)))
  print("\n".join(rows))


def cli() -> None:
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
