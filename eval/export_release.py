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

The parameters are stored as float16 safetensors (`model.release`); the release records
the training config, the shards' feature settings and SoundFont, the step, the command
that made it, the git revision and the machine.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import jax
import numpy as np
from absl import flags

from eval import loading, machine, predict, shard_transcription, transcribe, transcription_scores
from model import release
from pipelines import entry_point, provenance
from pipelines.audio import notes

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


def main(argv: list[str]) -> int:
  del argv
  try:
    out = export_transcriber(FLAGS.checkpoint, predict.parse_step(FLAGS.step),
                             pathlib.Path(FLAGS.output_dir), FLAGS.command,
                             FLAGS.transcription_report, FLAGS.check_midi)
  except (loading.RunError, release.ReleaseError, FileNotFoundError, ValueError) as e:
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
