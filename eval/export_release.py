"""`python -m eval.export_release`: a run's checkpoint -> a release committed to the repository.

  python -m eval.export_release --checkpoint=out/benchmark/pretrain_notes \
      --output_dir=release/transcriber --command="make benchmark-percepiano ..." \
      [--transcription_report=reports/benchmark/transcription.json] [--step=latest]

Kinds (from the run's config):
  transcriber   a pre-training run with the transcription head: the encoder and the head,
                the decoding thresholds chosen on validation for that step, and its
                held-out scores from the transcription report. `eval.transcribe`,
                `eval.shard_transcription` read it as `--checkpoint=DIR`, and a later
                pre-training continues from it (`--config.init.checkpoint=DIR`). With
                `--check_midi` a performance (generated, not from a dataset) is copied in
                with its transcription scores; `tests/test_shipped_models.py` checks that
                the committed weights still give them.
  notes_perception  the notes model (eval.notes_perception): the transcriber above, plus the
                benchmark's notes model (train.notes_from_midi: the ridge on the MIDI's
                note statistics, read through their estimate from the transcription) of a
                PercePiano job (`--data_dir`, `--transcribed_notes` from
                eval.shard_transcription with the same checkpoint), fitted on the
                `--split`'s training folds as the benchmark's test run is, with its test
                scores. `eval.predict` uses it
                (by default `release/perception`). With `--check_midi` the release's
                ratings of that performance are recorded beside the weights.

The parameters are stored as float16 safetensors (`model.release`); the release records
the training config, the shards' feature settings and SoundFont, the step, the command
that made it, the git revision and the machine.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile

import jax
import numpy as np
from absl import flags

from eval import (loading, machine, notes_perception, recording, shard_transcription, transcribe,
                  transcription_scores)
from model import release
from pipelines import entry_point, provenance
from pipelines.audio import note_statistics, notes, posterior_statistics
from pipelines.shards import metadata
from train import metrics, notes_from_midi, ridge_fit, statistics_table

FLAGS = flags.FLAGS
MAX_MB = 25.0  # what the repository accepts for a committed model


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "The run to release.", required=True)
  flags.DEFINE_string("step", "latest", "latest, best, or a step number.")
  flags.DEFINE_string("output_dir", None, "The release directory.", required=True)
  flags.DEFINE_string("command", None, "The command that produced the run (recorded).",
                      required=True)
  flags.DEFINE_string("transcription_report", None, "transcription.json of this run: the "
                      "step's held-out scores are recorded with the release.")
  flags.DEFINE_enum("kind", "transcriber", ["transcriber", notes_perception.KIND],
                    "What to release (see the module docstring).")
  flags.DEFINE_string("data_dir", None, "notes_perception: the PercePiano job the ridge is "
                      "fitted on.")
  flags.DEFINE_string("transcribed_notes", None, "notes_perception: that job transcribed by "
                      "--checkpoint (eval.shard_transcription).")
  flags.DEFINE_enum("split", "piece", ["piece", "performer"], "notes_perception: the split "
                    "whose training folds fit the ridge and whose test set scores it.")
  flags.DEFINE_string("check_midi", None, "A MIDI performance (not from a dataset) copied into "
                      "the release with its transcription scores, so a test can check that the "
                      "committed weights still give them.")


CHECK_MIDI = "check.mid"


def check_scores(run: loading.PretrainedRun, midi: pathlib.Path) -> dict:
  """The release's transcription of `midi` (rendered as its training data), scored."""
  thresholds = shard_transcription.Thresholds(**run.thresholds)
  transcribed, seconds = transcribe.transcribe_file(run, midi, thresholds)
  reference = notes.from_midi(midi.read_bytes(), str(midi))
  return {"seconds": round(seconds, 2), "notes": len(transcribed.notes),
          **transcription_scores.score(reference, transcribed)}


def export_transcriber(checkpoint: str, step: int | str, output_dir: pathlib.Path, command: str,
                       transcription_report: str | None = None,
                       check_midi: str | None = None) -> pathlib.Path:
  run = loading.load_transcriber(checkpoint, step)
  if run.thresholds is None:
    raise ValueError(f"{checkpoint} step {run.step} has no decoding thresholds chosen on "
                     "validation: run eval.transcription_report on it first")
  scores = None
  if transcription_report:
    report = json.loads(pathlib.Path(transcription_report).read_text())
    scores = next((s for s in report["steps"] if s.get("run") == str(run.workdir)
                   and s.get("run_step") == run.step), None)
    if scores is None:
      raise ValueError(f"{transcription_report} has no scores of {run.workdir} step {run.step}")
    # `step` counts the pre-training of the run's whole lineage (the runs it continues).
    scores = {"held_out": scores["report"], "pretraining_steps": scores["step"],
              "data": report["data"], "lineage": report.get("lineage"),
              **({"timbres": scores["timbres"]} if "timbres" in scores else {})}
  about = {"kind": "transcriber", "step": run.step, "config": run.config.to_dict(),
           "data_metadata": run.data_metadata, "thresholds": run.thresholds,
           "scores": scores, "command": command, "source": str(run.workdir),
           "git_revision": provenance.git_revision(), "machine": machine.describe()}
  size_mb = 2 * sum(np.size(v) for v in jax.tree.leaves(run.params)) / 2**20  # float16
  if size_mb > MAX_MB:
    raise ValueError(f"{checkpoint}: {size_mb:.1f} MB of float16 parameters, over the "
                     f"{MAX_MB:.0f} MB a committed release may take")
  release.write(output_dir, run.params, about)
  if check_midi:
    # Scored with the released (float16) weights, as a user of the release gets them.
    shutil.copyfile(check_midi, output_dir / CHECK_MIDI)
    released = loading.load_transcriber(output_dir)
    about["check"] = {"midi": CHECK_MIDI, **check_scores(released, output_dir / CHECK_MIDI)}
    release.write(output_dir, released.params, about)
  return output_dir


def export_notes_perception(checkpoint: str, step: int | str, output_dir: pathlib.Path,
                            command: str, data_dir: str, transcribed_notes: str,
                            split: str = "piece", check_midi: str | None = None) -> pathlib.Path:
  run = loading.load_transcriber(checkpoint, step)
  if run.thresholds is None:
    raise ValueError(f"{checkpoint} step {run.step} has no decoding thresholds chosen on "
                     "validation: run eval.transcription_report on it first")
  made_by = notes.load_archive(transcribed_notes)[2]
  # Compared as decoding settings: an archive spells out every field (`velocity_at` too),
  # thresholds saved before a field existed leave it at its default.
  saved = made_by.get("thresholds")
  if made_by.get("step") != run.step or saved is None or (
      shard_transcription.Thresholds(**saved) != shard_transcription.Thresholds(**run.thresholds)):
    raise ValueError(f"{transcribed_notes} was transcribed by step {made_by.get('step')} with "
                     f"thresholds {saved}, not by {checkpoint} step "
                     f"{run.step} with {run.thresholds}")
  meta = metadata.read(data_dir)
  with tempfile.TemporaryDirectory() as tmp:
    table = statistics_table.with_midi(data_dir, pathlib.Path(tmp) / "notes.npz",
                                       transcribed_notes)
  assignment = meta.split_table(split)
  train_keys = sorted(k for k, side in assignment.items() if side.startswith("fold"))
  test_keys = sorted(k for k, side in assignment.items() if side == "test")
  train, test = table.rows(train_keys), table.rows(test_keys)
  # As train.ridge --features=notes fits the benchmark's test run (seed 0, 4 inner folds).
  fitted = notes_from_midi.fit(table.x[train], table.midi[train], table.labels[train],
                               table.mask[train], statistics_table.groups_of(train_keys, split))
  scores = metrics.summarise(metrics.per_dimension_pearson(
      fitted.predict(table.x[test]), table.labels[test], table.mask[test]))
  about = {"kind": notes_perception.KIND, "step": run.step, "config": run.config.to_dict(),
           "data_metadata": run.data_metadata, "thresholds": run.thresholds,
           "perception": {"alpha": fitted.ridge.alpha, "blend": fitted.blend,
                          "inner_agreement": fitted.inner_agreement,
                          "statistics": list(note_statistics.names()),
                          "inputs": [*note_statistics.names(), *posterior_statistics.names()],
                          "fitted_on": {"shards": str(pathlib.Path(data_dir).absolute()),
                                        "split": split, "folds": meta.folds(split),
                                        "performances": len(train_keys),
                                        "soundfonts": metadata.soundfonts(meta.raw)}},
           "scores": {f"{split}/test": {"performances": len(test_keys),
                                        **{k.removeprefix("pearson/"): v
                                           for k, v in scores.items()}}},
           "label_space": "mean rating / 7 (ratings = label x 7, on PercePiano's 1-7 scale)",
           "transcription": made_by, "command": command, "source": str(run.workdir),
           "git_revision": provenance.git_revision(), "machine": machine.describe()}
  arrays = notes_from_midi.to_arrays(fitted)
  size_mb = (2 * sum(np.size(v) for v in jax.tree.leaves(run.params))  # float16
             + sum(v.nbytes for v in arrays.values())) / 2**20
  if size_mb > MAX_MB:  # refused before anything is written
    raise ValueError(f"the transcriber and the notes model take {size_mb:.1f} MB, over the "
                     f"{MAX_MB:.0f} MB a committed release may take")
  output_dir.mkdir(parents=True, exist_ok=True)
  about["perception"].update(notes_perception.write_model(output_dir, arrays))
  release.write(output_dir, run.params, about)
  if check_midi:
    # Scored with the released (float16) weights, as a user of the release gets them.
    shutil.copyfile(check_midi, output_dir / CHECK_MIDI)
    predicted = notes_perception.NotesPerception.from_release(output_dir).predict_file(
        output_dir / CHECK_MIDI)
    about["check"] = {"midi": CHECK_MIDI, "label_space": predicted.scores.tolist()}
    release.write(output_dir, run.params, about)
  return output_dir


def main(argv: list[str]) -> int:
  del argv
  try:
    if FLAGS.kind == notes_perception.KIND:
      if not (FLAGS.data_dir and FLAGS.transcribed_notes):
        raise ValueError(f"--kind={notes_perception.KIND} needs --data_dir and "
                         "--transcribed_notes")
      out = export_notes_perception(FLAGS.checkpoint, recording.parse_step(FLAGS.step),
                                    pathlib.Path(FLAGS.output_dir), FLAGS.command,
                                    FLAGS.data_dir, FLAGS.transcribed_notes, FLAGS.split,
                                    FLAGS.check_midi)
    else:
      out = export_transcriber(FLAGS.checkpoint, recording.parse_step(FLAGS.step),
                               pathlib.Path(FLAGS.output_dir), FLAGS.command,
                               FLAGS.transcription_report, FLAGS.check_midi)
  except (loading.RunError, release.ReleaseError, FileNotFoundError, ValueError,
          notes.NotesError, statistics_table.StatisticsError, ridge_fit.RidgeError) as e:
    sys.exit(f"error: {e}")
  about = json.loads((out / release.ABOUT).read_text())
  print(f"{about['kind']} at step {about['step']}: {about['weights']['parameters']:,} parameters "
        f"-> {out}")
  return 0


def cli() -> None:
  """Console entry point (`ppt-release`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
