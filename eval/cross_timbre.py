"""Perception models across piano timbres: fitted on one SoundFont's renders, tested on others'.

  python -m eval.cross_timbre --train_data=SHARDS --test_data=OTHER,... \
      [--transcribed_notes=A.npz --test_transcribed_notes=B.npz,...] \
      [--embeddings=A.npz --test_embeddings=B.npz,...] \
      --cache_dir=out/cross_timbre --output=reports/benchmark/cross_timbre.json

Users score recordings, not our TimGM6mb renders. Each model here is a closed-form
ridge (`train.ridge_fit.fit`, regularisation chosen by the same grouped inner
cross-validation; the notes model's as `train.ridge --features=notes` fits it) fitted
once on every training fold of `--train_data` (a PercePiano job) and scored on the
split's held-out test set as rendered in each timbre: the training job's own, then each
`--test_data` job (the same release rendered with another `--soundfont`, `--variants=0`).
Models:

  ridge   the clip statistics of the audio (the project's bar)
  notes   the notes model (`train.notes_from_midi`): the ridge fitted on the training
          performances' MIDI statistics, read from each test performance's estimate of them
          from the notes-aware encoder's transcription of that audio (its note and
          probability statistics; `eval.shard_transcription` of each job, in the same order
          as the jobs); the estimator is fitted on the training timbre's transcriptions
  ast_stats  AST+stats (`train.ridge --features=ast_stats`: the transcription's note and
          probability statistics, the same encoder's frozen clip embedding of that audio
          (`eval.shard_embeddings` of each job, in order), and the audio statistics), with its
          block weight; a timbre where some performance was transcribed to no note
          cannot be scored by it and says so (`skipped`) instead

Per model and timbre: the mean Pearson per group with a bootstrap CI over performances,
mean R², `untranscribed` (notes: performances whose transcription found no note; they
get the training mean) and `agreement`: the Pearson, per dimension and averaged, between a
performance's predictions in that timbre and in the training timbre (1 would mean the
timbre does not move the prediction at all). Writes `--output` (JSON) and prints a table.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import flags

from eval import machine, statistics
from pipelines import entry_point
from pipelines.audio import note_statistics, notes
from pipelines.datasets import taxonomy
from pipelines.shards import metadata
from train import metrics, notes_from_midi, ridge_fit, statistics_table

FLAGS = flags.FLAGS
# model -> statistics_table features
MODELS = {"ridge": "audio", "notes": "notes", "ast_stats": "ast_stats"}


class CrossTimbreError(ValueError):
  pass


def _timbre(meta: metadata.ShardMetadata) -> str:
  return metadata.soundfont_name(meta.raw)


def _check_same_release(train: metadata.ShardMetadata, other: metadata.ShardMetadata,
                        split: str) -> None:
  """The test job must assign the same performances to the same sides of the split."""
  if other.split_table(split) != train.split_table(split):
    raise CrossTimbreError(f"{other.root}: its {split} split differs from {train.root}'s "
                           "(render the same release with the same split flags)")


def scores(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray, *,
           resamples: int, seed: int) -> dict:
  """Mean Pearson per group and overall, the overall's bootstrap CI, and mean R²."""
  pearson = metrics.summarise(metrics.per_dimension_pearson(predictions, labels, mask))
  interval = statistics.confidence_intervals("pearson", predictions, labels, mask,
                                             resamples=resamples, seed=seed)["mean"]
  r2 = metrics.per_dimension("r2", predictions, labels, mask)
  return {**{g: pearson[f"pearson/{g}"] for g in (*taxonomy.GROUPS, "mean")},
          "mean_ci": [float(v) for v in interval],
          "r2": float(np.nanmean(r2))}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
  """Mean over dimensions of the Pearson between two predictions of the same performances."""
  return float(np.nanmean([metrics.pearson(a[:, d], b[:, d]) for d in range(a.shape[1])]))


def _predict_transcribed(fitted: notes_from_midi.NotesModel, archive: str, keys
                         ) -> tuple[np.ndarray, int]:
  """The notes model's predictions from each performance's transcription in `archive`, and
  how many transcriptions found no note: those get the training performances' mean (the
  ridge's bias), what the model says knowing nothing, and are counted, not dropped."""
  performances, durations, _ = notes.load_archive(archive)
  absent = sorted(set(keys) - set(performances))
  if absent:
    raise CrossTimbreError(f"{archive} has no transcription of {len(absent)} test "
                           f"performances, e.g. {absent[:3]}")
  _, posteriors = notes.load_posteriors(archive)
  out, empty = [], 0
  for key in keys:
    if len(performances[key].notes) == 0:
      out.append(fitted.ridge.bias)
      empty += 1
    else:
      x = np.concatenate([note_statistics.compute(performances[key], durations[key]),
                          posteriors[key]])
      out.append(fitted.predict(x[None])[0])
  return np.stack(out), empty


def _untranscribed(archive) -> list[str]:
  """The performances whose transcription in `archive` found no note, in key order."""
  performances, _, _ = notes.load_archive(archive)
  return sorted(k for k, p in performances.items() if len(p.notes) == 0)


def evaluate(train_dir: str | pathlib.Path, test_dirs, cache_dir: str | pathlib.Path, *,
             models=("ridge", "notes"), transcribed=None, embeddings=None, split: str = "piece",
             workers: int = 1, resamples: int = statistics.DEFAULT_RESAMPLES,
             seed: int = 0) -> dict:
  """`transcribed`: the notes archives of the training job then of each test job (notes,
  ast_stats); `embeddings`: the clip-embedding tables, in the same order (ast_stats)."""
  jobs = [metadata.read(train_dir), *(metadata.read(d) for d in test_dirs)]
  names = [_timbre(m) for m in jobs]
  if len(set(names)) < len(names):
    raise CrossTimbreError(f"two jobs rendered with the same SoundFonts: {names}")
  for other in jobs[1:]:
    _check_same_release(jobs[0], other, split)
  transcribing = [m for m in models if m in ("notes", "ast_stats")]
  if transcribing and (transcribed is None or len(transcribed) != len(jobs)):
    raise CrossTimbreError(f"the {transcribing[0]} model needs one transcription per job "
                           f"({len(jobs)}: --transcribed_notes for the training job, "
                           "--test_transcribed_notes for the others, in order)")
  if "ast_stats" in models and (embeddings is None or len(embeddings) != len(jobs)):
    raise CrossTimbreError(f"the ast_stats model needs one embedding table per job "
                           f"({len(jobs)}: --embeddings for the training job, --test_embeddings "
                           "for the others, in order)")
  assignment = jobs[0].split_table(split)
  train_keys = sorted(k for k, side in assignment.items() if side.startswith("fold"))
  test_keys = sorted(k for k, side in assignment.items() if side == "test")
  if not train_keys or not test_keys:
    raise CrossTimbreError(f"{train_dir}: the {split} split has no training folds or no test set")
  cache_dir = pathlib.Path(cache_dir)
  if transcribing:  # which encoder step transcribed each job
    abouts = [notes.load_archive(path)[2] for path in transcribed]
  out = {"split": split, "set": "test", "performances": len(test_keys),
         "trained_on": {"shards": str(pathlib.Path(train_dir).absolute()), "timbre": names[0],
                        "soundfonts": metadata.soundfonts(jobs[0].raw),
                        "performances": len(train_keys)},
         "timbres": {n: {"shards": str(m.root.absolute()),
                         "soundfonts": metadata.soundfonts(m.raw)} for n, m in zip(names, jobs)},
         **({"transcriptions": [{"file": str(pathlib.Path(p).absolute()),
                                  "checkpoint": a.get("checkpoint"), "step": a.get("step")}
                                 for p, a in zip(transcribed, abouts)]}
            if transcribing else {}),
         "resamples": resamples, "machine": machine.describe(), "models": {}}
  def files(features: str, i: int):
    return {"notes": transcribed[i] if transcribed else None,
            "ast_stats": (transcribed[i], embeddings[i]) if embeddings else None}.get(features)

  for model in models:
    features = MODELS[model]
    # The fit reads the training job's table; the test timbres are scored on the same
    # performances, with the training job's labels (the same release, checked above).
    cache = cache_dir / f"{model}_0_{names[0]}.npz"
    train_table = (statistics_table.with_midi(jobs[0].root, cache, files(features, 0), workers)
                   if features == "notes" else
                   statistics_table.load(jobs[0].root, cache, workers, features,
                                         files(features, 0)))
    rows = train_table.rows(train_keys)
    groups = statistics_table.groups_of(train_keys, split)
    if features == "notes":
      fitted = notes_from_midi.fit(train_table.x[rows], train_table.midi[rows],
                                   train_table.labels[rows], train_table.mask[rows], groups,
                                   seed=seed)
    else:
      # AST+stats: the note statistics first, then the block of everything else (train.ridge).
      second = len(statistics_table.names("notes")) if features == "ast_stats" else None
      fitted = ridge_fit.fit(train_table.x[rows], train_table.labels[rows], train_table.mask[rows],
                         groups, seed=seed, second_block=second)
    missing = sorted(set(test_keys) - set(train_table.keys))
    if missing:
      raise CrossTimbreError(f"{names[0]}: {len(missing)} test performances have no statistics, "
                             f"e.g. {missing[:3]}")
    test = train_table.rows(test_keys)
    labels, mask = train_table.labels[test], train_table.mask[test]
    reference = None
    out["models"][model] = ({"alpha": fitted.ridge.alpha, "blend": fitted.blend}
                            if features == "notes" else {"alpha": fitted.alpha})
    for i, (name, job) in enumerate(zip(names, jobs)):
      untranscribed = 0
      if i == 0:
        predicted = fitted.predict(train_table.x[test])
      elif features == "notes":
        predicted, untranscribed = _predict_transcribed(fitted, transcribed[i], test_keys)
      else:
        empty = _untranscribed(transcribed[i]) if features == "ast_stats" else []
        if empty:
          # A transcription without notes has no note statistics: not scored, and said so
          # (before its table's minutes of audio statistics).
          out["models"][model][name] = {
              "skipped": f"{len(empty)} performances have no transcribed note, e.g. {empty[:3]}"}
          continue
        other = statistics_table.load(job.root, cache_dir / f"{model}_{i}_{name}.npz",
                                      workers, features, files(features, i))
        absent = sorted(set(test_keys) - set(other.keys))
        if absent:
          raise CrossTimbreError(f"{name}: {len(absent)} test performances have no "
                                 f"statistics, e.g. {absent[:3]}")
        predicted = fitted.predict(other.x[other.rows(test_keys)])
      entry = scores(predicted, labels, mask, resamples=resamples, seed=seed)
      if features == "notes":
        entry["untranscribed"] = untranscribed
      if reference is None:
        reference = predicted
      else:
        entry["agreement"] = agreement(reference, predicted)
      out["models"][model][name] = entry
  return out


def table(result: dict) -> str:
  """A Markdown table: one row per model and timbre."""
  lines = ["| model | timbre | " + " | ".join(taxonomy.GROUPS) + " | mean [95% CI] | R² | "
           "agreement |", "|---|---|" + "---|" * (len(taxonomy.GROUPS) + 3)]
  for model, entry in result["models"].items():
    for name in result["timbres"]:
      s = entry[name]
      trained = " (trained on)" if name == result["trained_on"]["timbre"] else ""
      if "skipped" in s:
        lines.append(f"| {model} | {name}{trained} | not scored: {s['skipped'][:80]} |")
        continue
      lines.append(f"| {model} | {name}{trained} | "
                   + " | ".join(f"{s[g]:.3f}" for g in taxonomy.GROUPS)
                   + f" | {s['mean']:.3f} [{s['mean_ci'][0]:.3f}, {s['mean_ci'][1]:.3f}] | "
                   f"{s['r2']:.3f} | " + (f"{s['agreement']:.2f}" if "agreement" in s else "-")
                   + " |")
  return "\n".join(lines)


def define_flags() -> None:
  flags.DEFINE_string("train_data", None, "The PercePiano job the models are fitted on (its "
                      "training folds).", required=True)
  flags.DEFINE_list("test_data", [], "PercePiano jobs of the same release rendered with other "
                    "SoundFonts.")
  flags.DEFINE_list("models", ["ridge", "notes"], f"Models: {', '.join(MODELS)} (ast_stats "
                    "needs --embeddings and --test_embeddings).")
  flags.DEFINE_string("transcribed_notes", None, "notes: the training job's transcription "
                      "(eval.shard_transcription).")
  flags.DEFINE_string("embeddings", None, "ast_stats: the training job's clip embeddings "
                      "(eval.shard_embeddings).")
  flags.DEFINE_list("test_embeddings", [], "ast_stats: each test job's clip embeddings, in "
                    "--test_data's order.")
  flags.DEFINE_list("test_transcribed_notes", [], "notes: each test job's transcription, in "
                    "the order of --test_data.")
  flags.DEFINE_enum("split", "piece", ["piece", "performer"], "The split whose test set is "
                    "scored.")
  flags.DEFINE_string("cache_dir", None, "Where the statistics tables are cached.",
                      required=True)
  flags.DEFINE_string("output", None, "The JSON report.", required=True)
  flags.DEFINE_integer("workers", 2, "Processes computing the audio statistics.", lower_bound=1)
  flags.DEFINE_integer("resamples", statistics.DEFAULT_RESAMPLES, "Bootstrap resamples.",
                       lower_bound=100)
  flags.DEFINE_integer("seed", 0, "Seed of the inner folds and the bootstrap.")


def main(argv: list[str]) -> int:
  del argv
  unknown = sorted(set(FLAGS.models) - set(MODELS))
  if unknown:
    sys.exit(f"error: unknown models {unknown} (choose from {sorted(MODELS)})")
  transcribed = ([FLAGS.transcribed_notes, *FLAGS.test_transcribed_notes]
                 if FLAGS.transcribed_notes else None)
  embeddings = [FLAGS.embeddings, *FLAGS.test_embeddings] if FLAGS.embeddings else None
  try:
    result = evaluate(FLAGS.train_data, FLAGS.test_data, FLAGS.cache_dir, models=FLAGS.models,
                      transcribed=transcribed, embeddings=embeddings, split=FLAGS.split,
                      workers=FLAGS.workers,
                      resamples=FLAGS.resamples, seed=FLAGS.seed)
  except (CrossTimbreError, statistics_table.StatisticsError, ridge_fit.RidgeError,
          metadata.MetadataError, notes.NotesError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  output = pathlib.Path(FLAGS.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(result, indent=1) + "\n")
  print(table(result))
  print(f"-> {output}")
  return 0


def cli() -> None:
  """Console entry point (`ppt-cross-timbre`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
