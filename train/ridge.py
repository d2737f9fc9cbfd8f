"""The closed-form baseline: ridge regression on clip statistics, in the trainer's run format.

  python -m train.ridge --data_dir=SHARDS --workdir=W [--split=piece|performer] \
      [--folds=0,1|none] [--test]

SHARDS is a PercePiano job's output written with its clean audio (the default;
not `--nowrite_audio`): the statistics (pipelines.audio.clip_statistics) are
computed once per performance from that audio and cached in
`W/clip_statistics.npz` or `--statistics_cache` (recomputed when the shards or the
statistics change). `--features=midi_notes` fits the same ridge on the note
statistics of the performance MIDI stored with the audio
(pipelines.audio.note_statistics; backbone "oracle": what a perfect transcription
would give the notes path, an upper bound, never a headline); `--features=notes
--transcribed_notes=A` reads the same statistics from the model's own transcription
(`eval.shard_transcription`; backbone "notes"): by default the oracle's ridge, fitted on the
training performances' MIDI statistics, applied to each held-out performance's estimate of
them from its transcription (`train.notes_from_midi`); with `--notes_fit=transcription` the
ridge fitted on the transcription's statistics themselves; `--features=embeddings --embeddings=E`
on frozen encoder embeddings (`eval.shard_embeddings`; backbone "probe");
`--features=fusion` with both files on the two side by side (backbone "fusion");
`--features=ast_stats` with both files on everything the notes-aware AST and the audio
give: the transcription's note statistics, the statistics of its probabilities, the
encoder's clip embedding and the audio clip statistics (backbone "ast+stats"). Every
learned model is judged against this bar, so it
goes through the same machinery: the same split tables and folds, a
`W/crossval.json` and one run directory per fold (and `W/test`) with
`config.json`, `predictions/1.npz` and `result.json`, which `eval.report`
reads like any cross-validation (`--compare=W`; backbone "ridge").

The fit itself (standardise, centre, one SVD for all 19 dimensions, the
regularisation chosen by a grouped inner cross-validation over the training
performances) is `train.ridge_fit`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

import ml_collections
from absl import app, flags, logging

from pipelines import entry_point
from pipelines.shards import metadata
from train import crossval, fold_runs, notes_from_midi, statistics_table, trainer
from train.ridge_fit import ALPHAS, RidgeError, fit

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- the runs

# The backbone each kind of statistics reports as: the audio bar, and the notes path's upper
# bound (statistics of the performance MIDI: a perfect transcription).
BACKBONES = {"audio": "ridge", "midi_notes": "oracle", "notes": "notes", "embeddings": "probe",
             "fusion": "fusion", "ast_stats": "ast+stats"}


# What the notes model's ridge is fitted on: the MIDI's statistics of the training
# performances, read from the transcription's estimate of them (train.notes_from_midi), or
# the transcription's statistics themselves (the notes model until 2026-12-05, an ablation).
NOTES_FIT = ("midi", "transcription")


def _config(data_dir: pathlib.Path, split: str, seed: int, inner_folds: int,
            features: str = "audio", features_file=None,
            notes_fit: str = "midi") -> ml_collections.ConfigDict:
  """What identifies these runs, in the trainer's config shape where eval.report reads it."""
  return ml_collections.ConfigDict({
      "task": "finetune", "data_dir": str(data_dir), "split": split, "seed": seed,
      "validation_fold": -1, "model": {"backbone": BACKBONES[features]},
      "ridge": {"alphas": list(ALPHAS), "inner_folds": inner_folds, "statistics": features,
                **({"fit_on": notes_fit} if features == "notes" else {}),
                # A file's width is its own; the fixed statistics name their count.
                **({"features_file": features_file} if features_file else
                   {"features": len(statistics_table.names(features))})}})


def run_fold(table: statistics_table.Table, meta: metadata.ShardMetadata,
             config: ml_collections.ConfigDict, directory: pathlib.Path) -> trainer.Result:
  """Fits on the split's other folds (or every fold for the test set; `config` is
  crossval's fold config), predicts the held-out performances, and writes the run
  directory as the trainer does; returns its result."""
  t0 = time.perf_counter()
  fold = fold_runs.fold_of(meta, config)
  missing = sorted(set(fold.train_keys + fold.held_keys) - set(table.keys))
  if missing:
    raise RidgeError(f"{len(missing)} performances of the split have no statistics, e.g. "
                     f"{missing[:3]}")
  train, held = table.rows(fold.train_keys), table.rows(fold.held_keys)
  groups = statistics_table.groups_of(fold.train_keys, config.split)
  if config.ridge.get("fit_on") == "midi":
    notes_model = notes_from_midi.fit(
        table.x[train], table.midi[train], table.labels[train], table.mask[train], groups,
        inner_folds=config.ridge.inner_folds, seed=config.seed)
    result = fold_runs.write(
        directory, config, meta, fold, notes_model.predict(table.x[held]), table.labels[held],
        table.mask[held], time.perf_counter() - t0,
        {"alpha": notes_model.ridge.alpha, "inner_pearson": notes_model.ridge.inner_pearson,
         "blend": notes_model.blend, "inner_agreement": notes_model.inner_agreement})
    logging.info("%s: alpha %g, blend %g, mean Pearson %.3f", directory.name,
                 notes_model.ridge.alpha, notes_model.blend, result.metrics["val/pearson/mean"])
    return result
  # Fusion and ast_stats: the note statistics first, then the block of everything else.
  second = (len(statistics_table.names("notes"))
            if config.ridge.statistics in ("fusion", "ast_stats") else None)
  model = fit(table.x[train], table.labels[train], table.mask[train], groups,
              inner_folds=config.ridge.inner_folds, seed=config.seed, second_block=second)
  result = fold_runs.write(
      directory, config, meta, fold, model.predict(table.x[held]), table.labels[held],
      table.mask[held], time.perf_counter() - t0,
      {"alpha": model.alpha, "inner_pearson": model.inner_pearson,
       **({"block_weight": model.block_weight} if model.block_weight is not None else {})})
  logging.info("%s: alpha %g, mean Pearson %.3f", directory.name, model.alpha,
               result.metrics["val/pearson/mean"])
  return result


def run(data_dir: str | pathlib.Path, workdir: str | pathlib.Path, split: str,
        only: list[int] | None = None, test: bool = False, *, seed: int = 0,
        inner_folds: int = 4, workers: int = 1,
        statistics_cache: str | pathlib.Path | None = None, features: str = "audio",
        features_file=None, notes_fit: str = "midi") -> dict:
  """Every fold not finished yet (and the test set with `test`), through train.crossval's
  driver (the same fold checks, skipping and summary); returns its summary."""
  data_dir, workdir = pathlib.Path(data_dir).absolute(), pathlib.Path(workdir).absolute()

  @functools.cache
  def table() -> statistics_table.Table:  # only when some fold still has to be fitted
    cache = (pathlib.Path(statistics_cache) if statistics_cache
             else workdir / statistics_table.CACHE[features])
    if features == "notes" and notes_fit == "midi":
      return statistics_table.with_midi(data_dir, cache, features_file, workers)
    return statistics_table.load(data_dir, cache, workers, features, features_file)

  if notes_fit not in NOTES_FIT:
    raise RidgeError(f"notes_fit must be one of {NOTES_FIT}, got {notes_fit!r}")
  meta = metadata.read(data_dir)
  if isinstance(features_file, (tuple, list)):  # the notes archive, the vector table
    if not all(features_file):
      raise statistics_table.StatisticsError(
          f"features={features} needs {statistics_table.FILE_FLAGS[features]}")
    features_file = [str(pathlib.Path(f).absolute()) for f in features_file]
  elif features_file:
    features_file = str(pathlib.Path(features_file).absolute())
  return crossval.run(_config(data_dir, split, seed, inner_folds, features, features_file,
                              notes_fit),
                      workdir, split,
                      only, test,
                      train=lambda config, directory: run_fold(table(), meta, config, directory))


# ----------------------------------------------------------------------------- CLI

def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "A PercePiano job's output (with its audio shards).",
                      required=True)
  crossval.define_fold_flags()
  flags.DEFINE_integer("seed", 0, "Seed of the inner folds.")
  flags.DEFINE_integer("inner_folds", 4, "Inner cross-validation folds for the regularisation.")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes computing the statistics.")
  flags.DEFINE_enum("features", "audio", list(statistics_table.FEATURES),
                    "audio: the clip statistics of the stored audio (the bar, backbone ridge); "
                    "midi_notes: note statistics of the performance MIDI stored with it (the "
                    "notes path's upper bound, backbone oracle); notes: the same statistics "
                    "of a transcription (--transcribed_notes; backbone notes); embeddings: "
                    "frozen encoder embeddings (--embeddings; backbone probe); fusion: the "
                    "transcription's statistics and the embeddings side by side (both flags; "
                    "backbone fusion); ast_stats: fusion plus the statistics of the "
                    "transcription's probabilities and the audio clip statistics (both flags; "
                    "backbone ast+stats).")
  flags.DEFINE_string("transcribed_notes", None, "features=notes: the notes archive "
                      "eval.shard_transcription wrote for these shards.")
  flags.DEFINE_string("embeddings", None, "features=embeddings: the vector table "
                      "eval.shard_embeddings wrote for these shards.")
  flags.DEFINE_enum("notes_fit", "midi", list(NOTES_FIT),
                    "features=notes: midi fits the ridge on the note statistics of the training "
                    "performances' MIDI and reads each held-out performance through the "
                    "transcription's estimate of them (train.notes_from_midi); transcription "
                    "fits it on the transcription's own statistics (the ablation).")
  flags.DEFINE_string("statistics_cache", None, "Where the statistics are cached (default "
                      "WORKDIR/" + ", ".join(f"{v} for {k}" for k, v in
                                             statistics_table.CACHE.items()) +
                      "); runs on the same shards can share one.")


def _features_file():
  given = {"notes": FLAGS.transcribed_notes, "embeddings": FLAGS.embeddings}
  if FLAGS.features in ("fusion", "ast_stats"):
    return [given["notes"], given["embeddings"]]
  wrong = [f for f, v in given.items() if v and f != FLAGS.features]
  if wrong:
    raise RidgeError(f"--{'transcribed_notes' if wrong[0] == 'notes' else 'embeddings'} is "
                     f"for --features={wrong[0]}, not {FLAGS.features}")
  return given.get(FLAGS.features)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fold_runs.main(lambda only: run(
      FLAGS.data_dir, FLAGS.workdir, FLAGS.split, only, FLAGS.test, seed=FLAGS.seed,
      inner_folds=FLAGS.inner_folds, workers=FLAGS.workers,
      statistics_cache=FLAGS.statistics_cache, features=FLAGS.features,
      features_file=_features_file(), notes_fit=FLAGS.notes_fit), (RidgeError,))


def cli() -> None:
  """Console entry point (`ppt-ridge`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
