"""Transcribe a job's window shards, performance by performance: held-out scores, the notes path.

  python -m eval.shard_transcription --checkpoint=PRETRAIN_WORKDIR \
      --data_dir=out/benchmark/shards/percepiano --output=WORK/transcribed_notes.npz

The windows a Beam job stored (features already computed, no rendering) go through a
notes-aware pre-trained encoder and its transcription head (`model.transcription.
Transcriber`) in fixed-shape batches. Each performance's windows are tiled without
overlap (a job run with a hop shorter than its window keeps every window that starts
after the previous kept one ends), their valid frames are placed at the windows' start
times, and the per-frame probabilities are decoded to notes (`notes.from_rolls`) with
the thresholds chosen on validation (`eval.transcription_report` saves them in the run;
a release carries its own), unless given.

Where the shards carry note targets, a performance's reference is assembled from its
windows the same way: each window contributes the notes whose onset falls in its valid
frames, and the sustain-pedal intervals of every window, merged. So the scores compare
like with like: the same frames the model heard.

The CLI writes every performance's transcribed notes (the clean variant 0) to an `.npz`
(`notes.save_archive`) that `train.ridge --features=notes` reads: the benchmark's
`notes` model; beside them, statistics of the probabilities they were decoded from
(`pipelines.audio.posterior_statistics`), which `--features=ast_stats` adds.
Features are normalised with the *transcriber's* statistics, so any job's
shards made with the project's front end and the transcriber's window length can be read.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import flags, logging

from eval import loading, recording
from model import ast, transcription
from pipelines import entry_point
from pipelines.audio import frontend, notes, posterior_statistics
from pipelines.shards import metadata, tiled_windows
from pipelines.shards.tiled_windows import FRAME_S, Window

FLAGS = flags.FLAGS
DECODED = ("onset", "frame", "velocity", "pedal")  # what decoding reads; offsets are not kept


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Decoding thresholds of `notes.from_rolls`."""

  onset: float = 0.5
  frame: float = 0.5
  pedal: float = 0.5
  min_pedal_s: float = 0.0  # shorter pedal presses are dropped
  # Where a velocity is read (notes.VELOCITY_AT). "onset" is what thresholds saved before
  # the choice existed meant, so a release decodes as it did when its ridge was fitted.
  velocity_at: str = "onset"

  def decode(self, probabilities: dict[str, np.ndarray]) -> notes.Notes:
    return notes.from_rolls(probabilities, FRAME_S, onset_threshold=self.onset,
                            frame_threshold=self.frame, pedal_threshold=self.pedal,
                            min_pedal_s=self.min_pedal_s, velocity_at=self.velocity_at)


@dataclasses.dataclass
class Performance:
  """One performance's tiled windows, transcribed."""

  key: str
  group: str  # what it shares with others of one composition (ASAP folder, title)
  probabilities: dict[str, np.ndarray]  # float16 onset/frame/velocity [frames, 88], pedal [frames]
  reference: notes.Notes | None  # the note targets of the same frames; None without MIDI
  duration_s: float  # the frames covered

  def decode(self, thresholds: Thresholds) -> notes.Notes:
    return thresholds.decode(self.probabilities)


def _reference(windows: list[Window], total_frames: int) -> notes.Notes | None:
  if any(w.notes is None for w in windows):
    return None
  end_s = total_frames * FRAME_S
  rows, pedal = [], []
  for w in windows:
    start, valid_s = w.header["start_s"], w.header["valid_frames"] * FRAME_S
    own = w.notes.notes[(w.notes.notes[:, 0] >= 0) & (w.notes.notes[:, 0] < valid_s)].copy()
    own[:, :2] += np.float32(start)
    rows.append(own)
    pedal += [(a + start, b + start) for a, b in w.notes.pedal]
  merged = notes.merge_intervals(pedal)  # a press across windows is in both
  # What lies past the frames the model heard is not asked of it.
  n = np.concatenate(rows) if rows else np.zeros((0, 4), np.float32)
  n[:, 1] = np.minimum(n[:, 1], end_s)
  p = np.array([(max(a, 0.0), min(b, end_s)) for a, b in merged if a < end_s],
               np.float32).reshape(-1, 2)
  return notes.Notes(n, p)


def padded_batches(x: np.ndarray, valid: np.ndarray, batch_size: int):
  """(features, valid_frames, real count) of each batch of `batch_size` windows; the last
  is padded with copies of its last window, so one compiled shape serves them all."""
  for i in range(0, len(x), batch_size):
    f, v = x[i:i + batch_size], valid[i:i + batch_size]
    pad = batch_size - len(f)
    yield (np.concatenate([f, np.repeat(f[-1:], pad, 0)]),
           np.concatenate([v, np.repeat(v[-1:], pad)]), len(f))


def model_inputs(run: loading.PretrainedRun, key: str, windows: list[Window]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(features `[n, mel, frames]` normalised with the run's statistics, valid frames `[n]`)
  of one performance's windows; windows of another length than the encoder's are refused."""
  expected = int(run.config.model.encoder.num_frames)
  frames = {w.header["num_frames"] for w in windows}
  if frames != {expected}:
    raise ValueError(f"{key}: windows of {sorted(frames)} frames, but the encoder reads "
                     f"{expected} (make the shards with its window length)")
  mean, std = (float(run.data_metadata["normalization"][k]) for k in ("mean", "std"))
  x = np.stack([frontend.normalize(w.features.astype(np.float32), mean, std) for w in windows])
  return x, np.array([w.header["valid_frames"] for w in windows], np.int32)


class WindowTranscriber:
  """`(features [n, mel, frames] normalised, valid_frames [n])` -> each window's
  probabilities over its valid frames, through one compiled batch shape."""

  def __init__(self, run: loading.PretrainedRun, batch_size: int = 16,
               outputs: Sequence[str] = DECODED, dtype=np.float16):
    self.encoder = ast.EncoderConfig(**run.config.model.encoder.to_dict())
    self.params, self.batch_size = run.params, batch_size
    m = run.config.model
    model = transcription.Transcriber(self.encoder, m.transcription_hidden,
                                      m.get("transcription_frame_features", False))
    self._apply = jax.jit(lambda p, f, v: {k: o.astype(dtype) for k, o in
                                           model.apply({"params": p}, f, v).items()
                                           if k in outputs})

  def __call__(self, x: np.ndarray, valid: np.ndarray) -> list[dict[str, np.ndarray]]:
    out_windows = []
    for f, v, n in padded_batches(x, valid, self.batch_size):
      out = jax.device_get(self._apply(self.params, f, v))
      out_windows += [{k: a[j, :v[j]] for k, a in out.items()} for j in range(n)]
    return out_windows


def transcribe(run: loading.PretrainedRun, performances: dict[str, list[Window]], *,
               batch_size: int = 16) -> Iterator[Performance]:
  """Each performance's transcription probabilities, in key order."""
  transcriber = WindowTranscriber(run, batch_size)
  for chunk in filling_batches(performances, batch_size):
    inputs = [model_inputs(run, key, windows) for key, windows in chunk]
    outputs = iter(transcriber(np.concatenate([x for x, _ in inputs]),
                               np.concatenate([v for _, v in inputs])))
    for key, windows in chunk:
      yield _assembled(key, windows, [next(outputs) for _ in windows])


def filling_batches(performances: dict[str, list[Window]], batch_size: int):
  """Consecutive performances, grouped until their windows fill whole batches: a 20 s
  PercePiano performance is 4 windows, and padding each to a batch of 16 on its own spent
  three quarters of the forward passes on copies."""
  chunk, count = [], 0
  for item in performances.items():
    chunk.append(item)
    count += len(item[1])
    if count % batch_size == 0 or count >= 8 * batch_size:
      yield chunk
      chunk, count = [], 0
  if chunk:
    yield chunk


def _assembled(key: str, windows: list[Window], outputs: list[dict]) -> Performance:
  total = max(tiled_windows.frame(w.header["start_s"]) + w.header["valid_frames"] for w in windows)
  probs = {k: np.zeros((total, transcription.KEYS), np.float16) for k in DECODED[:3]}
  probs["pedal"] = np.zeros(total, np.float16)
  for w, out in zip(windows, outputs):
    first = tiled_windows.frame(w.header["start_s"])
    for k in DECODED:
      probs[k][first:first + len(out[k])] = out[k]
  return Performance(key=key, group=windows[0].group, probabilities=probs,
                     reference=_reference(windows, total), duration_s=total * FRAME_S)


VELOCITY_HELP = ("Where a note's velocity is read: its onset frame, or the largest over its "
                 "onset run (default: chosen on validation; releases and runs scored before "
                 "the choice existed read the onset frame).")


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A pre-training run with a transcription head.",
                      required=True)
  flags.DEFINE_string("step", "latest", "latest, best (by val/loss), or a step number.")
  flags.DEFINE_string("data_dir", None, "A job's output (window shards).", required=True)
  flags.DEFINE_string("output", None, "Where the transcribed notes go (.npz).", required=True)
  flags.DEFINE_list("splits", [], "Splits to transcribe (default: all).")
  flags.DEFINE_float("onset_threshold", None, "Default: chosen on validation, else 0.5.")
  flags.DEFINE_float("frame_threshold", None, "Default: chosen on validation, else 0.5.")
  flags.DEFINE_float("pedal_threshold", None, "Default: chosen on validation, else 0.5.")
  flags.DEFINE_enum("velocity_at", None, list(notes.VELOCITY_AT), VELOCITY_HELP)
  flags.DEFINE_integer("batch_size", 16, "Windows per forward pass.", lower_bound=1)


def thresholds_for(run: loading.PretrainedRun, onset: float | None, frame: float | None,
                   pedal: float | None, velocity_at: str | None = None
                   ) -> tuple[Thresholds, str]:
  """Flags first, then what validation chose for this step, then 0.5; and where they came from."""
  saved = Thresholds(**run.thresholds) if run.thresholds else None
  base = saved or Thresholds()
  given = {k: v for k, v in (("onset", onset), ("frame", frame), ("pedal", pedal),
                             ("velocity_at", velocity_at)) if v is not None}
  source = "flags" if given else ("validation" if saved else "default 0.5")
  return dataclasses.replace(base, **given), source


def main(argv: list[str]) -> int:
  del argv
  try:
    run = loading.load_transcriber(FLAGS.checkpoint, recording.parse_step(FLAGS.step))
    windows = tiled_windows.read_windows(FLAGS.data_dir, FLAGS.splits or None)
  except (loading.RunError, FileNotFoundError, metadata.MetadataError, ValueError) as e:
    sys.exit(f"error: {e}")
  thresholds, source = thresholds_for(run, FLAGS.onset_threshold, FLAGS.frame_threshold,
                                      FLAGS.pedal_threshold, FLAGS.velocity_at)
  logging.info("transcribing %d performances with step %d, thresholds %s (%s)", len(windows),
               run.step, thresholds, source)
  transcribed, durations, posteriors = {}, {}, {}
  try:
    for p in transcribe(run, windows, batch_size=FLAGS.batch_size):
      transcribed[p.key], durations[p.key] = p.decode(thresholds), p.duration_s
      posteriors[p.key] = posterior_statistics.compute(p.probabilities, FRAME_S)
  except ValueError as e:
    sys.exit(f"error: {e}")
  about = {"checkpoint": str(run.workdir), "step": run.step, "tiling": tiled_windows.TILING,
           "thresholds": dataclasses.asdict(thresholds), "thresholds_from": source,
           "shards": str(pathlib.Path(FLAGS.data_dir).absolute()),
           "shard_sha256": sorted(f.sha256 for f in metadata.read(FLAGS.data_dir).shard_files(
               "windows", splits=FLAGS.splits or None))}
  notes.save_archive(pathlib.Path(FLAGS.output), transcribed, durations, about,
                     (posterior_statistics.names(), posteriors))
  print(f"{len(transcribed)} performances, {sum(len(n.notes) for n in transcribed.values())} "
        f"notes (step {run.step}, thresholds from {source}) -> {FLAGS.output}")
  return 0


def cli() -> None:
  """Console entry point (`ppt-transcribe-shards`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
