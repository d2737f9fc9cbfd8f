"""Piano transcription from a notes-aware pre-trained encoder: a recording -> a MIDI file.

  python -m eval.transcribe --checkpoint=PRETRAIN_WORKDIR RECORDING --output_midi=OUT.mid \
      [--step=best] [--reference_midi=REF.mid] [--onset_threshold=0.5 ...]

RECORDING is a WAV/FLAC/MP3 (what `pipelines.audio.decode` reads) or a MIDI file
(rendered with the training data's SoundFont, as `eval.predict` does). The audio is
cut into the training windows without overlap, each window's frames go through the
encoder and the transcription head (`model.transcription.Transcriber`), the
per-frame probabilities are concatenated over the recording and decoded to notes
and sustain pedal (`pipelines.audio.notes.from_rolls`), and written as MIDI (one
piano track, pedal as CC 64). Times are the recording's own: a MIDI input's render
is trimmed of leading silence, and the trimmed start is added back. With
`--reference_midi` the transcription is scored against it with mir_eval
(`eval.transcription_scores`) and the scores printed.

A file that cannot be read (missing, corrupt, unsupported, silent) is a one-line
error and exit status 1.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pretty_midi
from absl import app, flags, logging

from eval import loading, recording, shard_transcription, transcription_scores
from model import transcription
from pipelines import entry_point
from pipelines.audio import decode, frontend, notes, render, windowing

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A pre-training run with a transcription head (work "
                      "directory or checkpoint step directory).", required=True)
  flags.DEFINE_string("step", "best", "best (by val/loss), latest, or a step number.")
  flags.DEFINE_string("output_midi", None, "Where the transcription goes.", required=True)
  flags.DEFINE_string("reference_midi", None, "Score the transcription against this MIDI.")
  flags.DEFINE_string("output_json", None, "Write the scores (with --reference_midi) here.")
  flags.DEFINE_float("onset_threshold", None, "Onset probability that starts a note (default: "
                     "chosen on validation by eval.transcription_report, else 0.5).")
  flags.DEFINE_float("frame_threshold", None, "Frame probability that holds a note (default: "
                     "chosen on validation, else 0.5).")
  flags.DEFINE_float("pedal_threshold", None, "Pedal probability that holds the pedal (default: "
                     "chosen on validation, else 0.5).")
  flags.DEFINE_enum("velocity_at", None, list(notes.VELOCITY_AT),
                    shard_transcription.VELOCITY_HELP)
  flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.", lower_bound=1)


def samples_of(path: pathlib.Path, settings: recording.FeatureSettings) -> tuple[np.ndarray, float]:
  """(16 kHz samples, seconds trimmed from the start): a MIDI file rendered as the job does."""
  if path.suffix.lower() in recording.MIDI_EXTENSIONS:
    rendered = render.render_midi(path, soundfont=settings.soundfont)
    return rendered.samples, rendered.trimmed_start_seconds
  return recording.load_samples(path, settings), 0.0


def probabilities(run: loading.PretrainedRun, samples: np.ndarray,
                  settings: recording.FeatureSettings, name: str, batch_size: int
                  ) -> dict[str, np.ndarray]:
  """Per-frame probabilities over the whole recording (`[frames, 88]`, pedal `[frames]`)."""
  windows = recording.windows_of(samples, settings, name=name)
  x = frontend.model_input(windows, settings.mean, settings.std)
  valid = np.array([w.valid_frames for w in windows], np.int32)
  transcriber = shard_transcription.WindowTranscriber(
      run, batch_size, outputs=(*transcription.ROLLS, "pedal"), dtype=np.float32)
  frames = transcriber(x, valid)  # each window's valid frames, in order
  return {k: np.concatenate([w[k] for w in frames]) for k in frames[0]}


def transcribe_file(run: loading.PretrainedRun, path: pathlib.Path,
                    thresholds: shard_transcription.Thresholds, batch_size: int = 8, *,
                    soundfont: str | None = None) -> tuple[notes.Notes, float]:
  """(the recording's notes in its own time, seconds of audio transcribed); a MIDI input
  renders with `soundfont` (default: the training data's)."""
  transcribed, seconds, _ = transcribe_file_with_probabilities(run, path, thresholds,
                                                               batch_size, soundfont=soundfont)
  return transcribed, seconds


def transcribe_file_with_probabilities(
    run: loading.PretrainedRun, path: pathlib.Path, thresholds: shard_transcription.Thresholds,
    batch_size: int = 8, *, soundfont: str | None = None
) -> tuple[notes.Notes, float, dict[str, np.ndarray]]:
  """`transcribe_file`, and the frame probabilities the notes were decoded from (over the
  audio after silence trimming, as `eval.shard_transcription` keeps them)."""
  settings = recording.FeatureSettings.from_metadata(run.data_metadata, soundfont=soundfont)
  # Windows without overlap: every frame is transcribed once.
  settings = recording.FeatureSettings(
      window=windowing.WindowConfig(settings.window.frames, settings.window.frames,
                                    settings.window.silence_db),
      mean=settings.mean, std=settings.std, soundfont=settings.soundfont)
  samples, trimmed = samples_of(path, settings)
  probs = probabilities(run, samples, settings, str(path), batch_size)
  return (thresholds.decode(probs).shifted(-trimmed), samples.shape[0] / recording.SAMPLE_RATE,
          probs)


def write_midi(path: pathlib.Path, transcribed: notes.Notes) -> None:
  midi = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0, name="piano")
  for onset, offset, key, velocity in transcribed.notes:
    piano.notes.append(pretty_midi.Note(int(velocity), int(round(key)), float(onset),
                                        float(offset)))
  for start, end in transcribed.pedal:
    piano.control_changes += [pretty_midi.ControlChange(64, 127, float(start)),
                              pretty_midi.ControlChange(64, 0, float(end))]
  midi.instruments.append(piano)
  path.parent.mkdir(parents=True, exist_ok=True)
  midi.write(str(path))


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise app.UsageError("expected one RECORDING")
  path = pathlib.Path(argv[1])
  try:
    run = loading.load_transcriber(FLAGS.checkpoint, recording.parse_step(FLAGS.step))
    thresholds, source = shard_transcription.thresholds_for(
        run, FLAGS.onset_threshold, FLAGS.frame_threshold, FLAGS.pedal_threshold,
        FLAGS.velocity_at)
    transcribed, seconds = transcribe_file(run, path, thresholds, FLAGS.batch_size)
    reference = (notes.from_midi(pathlib.Path(FLAGS.reference_midi).read_bytes(),
                                 FLAGS.reference_midi) if FLAGS.reference_midi else None)
  except (decode.AudioError, render.RenderError, loading.RunError, notes.NotesError,
          FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  write_midi(pathlib.Path(FLAGS.output_midi), transcribed)
  print(f"{path}: {len(transcribed.notes)} notes, {len(transcribed.pedal)} pedal presses in "
        f"{seconds:.1f} s -> {FLAGS.output_midi} "
        f"(checkpoint step {run.step}, thresholds from {source})")
  if reference is not None:
    scores = transcription_scores.score(reference, transcribed)
    print(", ".join(f"{k} {v:.3f}" for k, v in scores.items()
                    if k.endswith("/f1") or (k == "velocity/r" and v is not None)))
    if FLAGS.output_json:
      pathlib.Path(FLAGS.output_json).write_text(json.dumps(
          {"recording": str(path), "step": run.step, **scores}, indent=1) + "\n")
  logging.info("transcribed %s", path)
  return 0


def cli() -> None:
  """Console entry point (`ppt-transcribe`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
