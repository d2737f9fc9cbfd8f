"""Perceptual scores for recordings of any length, from a fine-tuning run or a release.

  python -m eval.predict [--checkpoint=W] [--step=best] [--batch_size=N] [--hop_s=S]
      [--output_json=F] [--output_csv=F] FILE...

Without `--checkpoint` the shipped model scores the files: `release/perception`, the
benchmark's notes model (`eval.notes_perception`: the recording transcribed, the note
statistics of the transcription through a ridge; one score per recording, no training
needed). `--checkpoint` names a fine-tuning run or another release of that kind.

FILE is a WAV/FLAC (any format `pipelines.audio.decode` decodes) or a MIDI file
(rendered with the training data's SoundFont first). Each is cut into the
training windows, the windows go through the model in fixed-size batches, and
the per-window predictions are averaged: the recording's score per dimension,
printed as a table on the 1-7 rating scale (and written to JSON/CSV with the
label-space values and every window's scores).

Why the feature path is not re-implemented here: the model only knows the
features it was trained on, so inference runs the preprocessing job's own
front end (decode or render+trim -> `pipelines.audio.frontend`: log-mel, windows
with the run's window/hop, the shards' float16 storage, normalisation with the
shards' statistics -> `[mel, frames]`). The
known-answer test checks that a validation performance's score equals the
trainer's own saved prediction for it.

Why one compiled function: the forward is compiled ahead of time for one batch
shape `[batch, mel, frames]`; the last batch of a file is padded with copies of
its last window (and the copies' outputs dropped), so files of every length
reuse it and a wrong shape fails loudly instead of compiling again.

A file that cannot be scored (missing, corrupt, unsupported extension, empty,
silent throughout) gets a one-line error naming it; the other files are still
scored and written, and the command exits with status 1.
"""

from __future__ import annotations

import csv
import json
import logging as std_logging
import pathlib
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from eval import loading, notes_perception, recording
from model import multitask, release, targets
from pipelines import entry_point
from pipelines.audio import decode, frontend, render, windowing
from pipelines.datasets import taxonomy

# The model `eval.predict` uses without --checkpoint (a notes_perception release).
SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "release" / "perception"
# Which group each dimension belongs to (a dimension is in exactly one: taxonomy checks).
GROUP_OF = {d: g for g, dims in taxonomy.GROUPS.items() for d in dims}


def default_batch_size() -> int:
  """1 on CPU, 8 on accelerators.

  On 2 CPU cores a base window is already a 1214-token sequence that keeps the
  matmuls busy: batch 1 took 2.32 s per window, batches of 4 and 8 3.18 and
  3.06 s (reports/benchmarks/predict_speed.txt; the bigger activations fall out
  of cache). A batch also pads its last call: up to batch-1 wasted windows per
  file, most of the compute for a 1-3 window PercePiano clip.
  """
  return 1 if jax.default_backend() == "cpu" else 8


class Predictor:
  """A model compiled once for `[batch_size, mel, frames]`, scoring whole recordings.

  Build it from a run (`from_run`) or from a model config, parameters, target
  statistics and feature settings (the benchmark uses random parameters).
  """

  def __init__(self, model_config: multitask.MultiTaskConfig, params: dict,
               normalizer: targets.TargetNormalizer, settings: recording.FeatureSettings, *,
               batch_size: int | None = None):
    batch_size = default_batch_size() if batch_size is None else batch_size
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoder = model_config.encoder
    if model_config.backbone == "ast" and encoder.num_frames != settings.window.frames:
      raise ValueError(f"the model reads windows of {encoder.num_frames} frames but the "
                       f"feature settings cut {settings.window.frames}")
    # Rematerialisation only matters for a backward pass; the parameter tree is the same.
    self.model_config = model_config.replace(encoder=encoder.replace(remat="none"))
    self.model = multitask.MultiTaskModel(self.model_config)
    self.params = jax.device_put(params)
    self.normalizer = normalizer
    self.settings = settings
    self.batch_size = batch_size
    self.traces = 0  # how often the forward was traced (compiled): once per Predictor
    self._compiled = None

  @classmethod
  def from_run(cls, run: loading.Run, *, batch_size: int | None = None, hop_s: float | None = None,
               soundfont: str | None = None) -> Predictor:
    settings = recording.FeatureSettings.from_metadata(run.data_metadata, hop_s=hop_s,
                                             soundfont=soundfont)
    if settings.window.frames != run.num_frames:
      raise loading.RunError(f"{run.workdir}: data_metadata.json windows are "
                             f"{settings.window.frames} frames but the model reads "
                             f"{run.num_frames}")
    return cls(run.model_config, run.params, run.normalizer, settings, batch_size=batch_size)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    e = self.model_config.encoder
    return (self.batch_size, e.num_mel_bins, self.settings.window.frames)

  def _forward(self, params, x, valid_frames):
    self.traces += 1  # a Python side effect: runs only while JAX traces
    out = self.model.apply({"params": params}, x, train=False, valid_frames=valid_frames)
    return out["predictions"].astype(jnp.float32)

  def compile(self) -> float:
    """Compiles the forward (if not yet done); returns the seconds it took."""
    if self._compiled is not None:
      return 0.0
    t0 = time.perf_counter()
    x = jax.ShapeDtypeStruct(self.input_shape, jnp.float32)
    valid = jax.ShapeDtypeStruct((self.batch_size,), jnp.int32)
    self._compiled = jax.jit(self._forward).lower(self.params, x, valid).compile()
    return time.perf_counter() - t0

  def predict_windows(self, windows: Sequence[windowing.Window],
                      progress: recording.Progress | None = None, duration_s: float = 0.0
                      ) -> np.ndarray:
    """`[len(windows), 19]` label-space predictions, batch by batch."""
    self.compile()
    b, total = self.batch_size, len(windows)
    out: list[np.ndarray] = []
    pending = None  # (device result, real rows, windows done) of the batch in flight

    def collect():
      result, real, done = pending
      out.append(np.asarray(result)[:real])
      if progress is not None:
        progress(done, total, duration_s * done / total)

    for start in range(0, total, b):
      chunk = list(windows[start:start + b])
      real = len(chunk)
      chunk += [chunk[-1]] * (b - real)  # padding rows: computed, then dropped
      x = frontend.model_input(chunk, self.settings.mean, self.settings.std)
      valid = np.array([w.valid_frames for w in chunk], np.int32)
      # Dispatch is asynchronous: the next batch's input is built while this one runs.
      result = self._compiled(self.params, x, valid)
      if pending is not None:
        collect()
      pending = (result, real, start + real)
    collect()
    return self.normalizer.denormalize(np.concatenate(out))

  def predict_samples(self, samples: np.ndarray, *, name: str,
                      progress: recording.Progress | None = None) -> recording.Prediction:
    t0 = time.perf_counter()
    windows = recording.windows_of(samples, self.settings, name=name)
    return self._predict(windows, name, samples.shape[0] / recording.SAMPLE_RATE,
                         time.perf_counter() - t0, progress)

  def predict_file(self, path: str | pathlib.Path, progress: recording.Progress | None = None
                   ) -> recording.Prediction:
    """Scores one file. Raises `decode.AudioError` / `render.RenderError` naming it."""
    t0 = time.perf_counter()
    samples = recording.load_samples(path, self.settings)
    windows = recording.windows_of(samples, self.settings, name=str(path))
    return self._predict(windows, str(path), samples.shape[0] / recording.SAMPLE_RATE,
                         time.perf_counter() - t0, progress)

  def _predict(self, windows, name: str, duration_s: float, feature_seconds: float,
               progress: recording.Progress | None) -> recording.Prediction:
    self.compile()  # outside the timing: once per Predictor, not per file
    t0 = time.perf_counter()
    scores = self.predict_windows(windows, progress, duration_s)
    model_seconds = time.perf_counter() - t0
    if not np.isfinite(scores).all():
      raise recording.NonFinitePredictionError(f"{name}: the model returned NaN/inf for "
                                     f"{int((~np.isfinite(scores)).any(axis=1).sum())} windows")
    return recording.Prediction(
        path=name, duration_s=duration_s, window_scores=scores,
        window_starts_s=np.array([w.start_frame / recording.FRAMES_PER_SECOND for w in windows]),
        near_silent_windows=sum(windowing.is_near_silent(w, self.settings.window)
                                for w in windows),
        feature_seconds=feature_seconds, model_seconds=model_seconds)


# ----------------------------------------------------------------------------- output

def format_table(p: recording.Prediction, settings: recording.FeatureSettings) -> str:
  """A readable per-dimension table on the 1-7 scale, with group means."""
  lines = [f"{p.path}: {p.duration_s:.1f} s, {p.windows} window(s) of {settings.window_s:g} s "
           f"(hop {settings.hop_s:g} s) in {p.seconds:.2f} s ({p.realtime_factor:.0f}x real time)"]
  if p.near_silent_windows:
    lines.append(f"  note: {p.near_silent_windows} of {p.windows} windows are near-silent")
  lines.append(f"  {'dimension':<24}{'group':<12}{'1 = low  <->  7 = high':<58}{'score':>6}")
  for i, d in enumerate(taxonomy.DIMENSIONS):
    lines.append(f"  {d.name:<24}{GROUP_OF[i]:<12}{d.describe():<58}{p.ratings[i]:>6.2f}")
  lines.append("  group means: " + ", ".join(f"{g} {v:.2f}" for g, v in p.group_ratings.items()))
  return "\n".join(lines)


CSV_FIELDS = (["path", "error", "duration_s", "windows", "seconds"]
              + list(taxonomy.DIMENSION_NAMES) + [f"group_{g}" for g in taxonomy.GROUPS])


def write_csv(path: str | pathlib.Path, results: Sequence[recording.Prediction],
              errors: Sequence[tuple[str, str]]) -> None:
  """One row per file: ratings (1-7) and group means; failed files with their error."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for p in results:
      row = {"path": p.path, "error": "", "duration_s": f"{p.duration_s:.3f}",
             "windows": p.windows, "seconds": f"{p.seconds:.3f}"}
      row.update({n: f"{v:.6f}" for n, v in zip(taxonomy.DIMENSION_NAMES, p.ratings)})
      row.update({f"group_{g}": f"{v:.6f}" for g, v in p.group_ratings.items()})
      writer.writerow(row)
    for name, reason in errors:
      writer.writerow({"path": name, "error": reason})


def write_json(path: str | pathlib.Path, run_info: dict, settings: recording.FeatureSettings,
               results: Sequence[recording.Prediction], errors: Sequence[tuple[str, str]]) -> None:
  doc = {**run_info, "window_s": settings.window_s, "hop_s": settings.hop_s,
         "rating_scale": "1-7 (label space x 7)", "dimensions": list(taxonomy.DIMENSION_NAMES),
         "groups": {g: [taxonomy.DIMENSION_NAMES[i] for i in dims]
                    for g, dims in taxonomy.GROUPS.items()},
         "files": [p.to_dict() for p in results],
         "errors": [{"path": n, "error": r} for n, r in errors]}
  pathlib.Path(path).write_text(json.dumps(doc, indent=1) + "\n")


class ProgressLine:
  """Windows done / total and x real time on stderr, for files that take a while.

  On a terminal the line appears after a second and redraws in place; otherwise
  (logs, pipes) it prints one line every `every_s` seconds. Either way a file
  that showed progress gets a final 100% line; a quick file prints nothing.
  """

  def __init__(self, name: str, batch_size: int, stream=None, every_s: float = 5.0):
    self._name, self._batch = name, batch_size
    self._stream = stream or sys.stderr
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._every, self._start, self._last = every_s, time.perf_counter(), None

  def __call__(self, done: int, total: int, audio_s: float) -> None:
    if total <= self._batch:
      return  # one batch: nothing to watch
    now = time.perf_counter()
    since = now - (self._start if self._last is None else self._last)
    if done == total:
      if self._last is None:
        return  # quick: never shown
    elif since < (1.0 if self._tty else self._every):
      return
    self._last = now
    final = done == total
    elapsed = max(now - self._start, 1e-9)
    speed = audio_s / elapsed
    width = 30
    bar = "#" * (width * done // total) + "-" * (width - width * done // total)
    text = (f"{self._name}: [{bar}] windows {done}/{total} ({100 * done // total}%), "
            f"{speed:.0f}x real time")
    if self._tty:
      self._stream.write("\r" + text + ("\n" if final else ""))
    else:
      self._stream.write(text + "\n")
    self._stream.flush()


# ----------------------------------------------------------------------------- CLI

# What counts as bad input, as in the preprocessing job's dead-letter routing:
# typed decode/render errors and the OS/parse errors a broken file can raise.
BAD_INPUT = (decode.AudioError, render.RenderError, recording.NonFinitePredictionError, OSError,
             ValueError, EOFError)


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Fine-tuning work directory (or a checkpoint step "
                      "directory inside it), or a notes_perception release; default: the "
                      f"shipped model ({SHIPPED}).")
  flags.DEFINE_string("step", "best", '"best" (by the run\'s validation metric), "latest" or '
                      "a step number.")
  flags.DEFINE_integer("batch_size", None, "Windows per model call (the compiled batch "
                       "shape); default 1 on CPU, 8 on accelerators.")
  flags.DEFINE_float("hop_s", None, "Hop between window starts in seconds; default: the "
                     "training data's hop.")
  flags.DEFINE_string("soundfont", None, "SoundFont for MIDI inputs; default: the training "
                      "data's.")
  flags.DEFINE_string("output_json", None, "Write every file's scores (and errors) as JSON.")
  flags.DEFINE_string("output_csv", None, "Write one CSV row per file (ratings 1-7).")



def check_soundfont(settings: recording.FeatureSettings, paths: Sequence[str]) -> None:
  """Warns when MIDI inputs would render with another SoundFont than the training data."""
  if settings.soundfont_sha256 is None or not any(
      pathlib.Path(p).suffix.lower() in recording.MIDI_EXTENSIONS for p in paths):
    return
  try:
    sha = render.soundfont_sha256(settings.soundfont)
  except (OSError, ValueError) as e:
    print(f"warning: SoundFont unusable ({e}); MIDI files will fail", file=sys.stderr)
    return
  if sha != settings.soundfont_sha256:
    print(f"warning: MIDI files render with SoundFont {sha[:12]} but the training data used "
          f"{settings.soundfont_sha256[:12]}: the timbre differs from what the model learned",
          file=sys.stderr)


class _QuietCheckpointReader(std_logging.Filter):
  """Drops Orbax's restore chatter (a screen of INFO and read-only warnings per load)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or "/orbax/" not in record.pathname


def main(argv: list[str]) -> int:
  from absl import flags, logging
  flags_ = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_QuietCheckpointReader())
  paths = argv[1:]
  if not paths:
    from absl import app
    raise app.UsageError("no input files (usage: python -m eval.predict --checkpoint=W FILE...)")
  step = recording.parse_step(flags_.step)
  checkpoint = flags_.checkpoint or str(SHIPPED)
  try:
    if notes_perception.is_notes_perception(checkpoint):
      if flags_.hop_s is not None:
        raise ValueError("--hop_s: the notes model transcribes the whole recording once")
      predictor = notes_perception.NotesPerception.from_release(checkpoint,
                                                                soundfont=flags_.soundfont)
      run_info = {"checkpoint": checkpoint, "kind": notes_perception.KIND,
                  "step": predictor.run.step}
    else:
      if not flags_.checkpoint and not pathlib.Path(checkpoint).exists():
        raise FileNotFoundError(f"no --checkpoint given and no shipped model at {checkpoint}")
      run = loading.load(checkpoint, step=step)
      run_info = {"checkpoint": str(run.workdir), "step": run.step}
      predictor = Predictor.from_run(run, batch_size=flags_.batch_size, hop_s=flags_.hop_s,
                                     soundfont=flags_.soundfont)
  except (loading.RunError, release.ReleaseError, FileNotFoundError, ValueError) as e:
    # ValueError: --hop_s / --batch_size out of range, or a run that does not fit
    print(f"error: cannot use checkpoint {checkpoint}: {e}", file=sys.stderr)
    return 1
  check_soundfont(predictor.settings, paths)
  results: list[recording.Prediction] = []
  errors: list[tuple[str, str]] = []
  for path in paths:
    try:
      result = predictor.predict_file(path, ProgressLine(path, predictor.batch_size))
    except BAD_INPUT as e:
      # Typed errors already start with the file name; others get it added.
      reason = str(e) if isinstance(e, (decode.AudioError, render.RenderError)) else (
          f"{path}: {type(e).__name__}: {e}")
      print(f"error: {reason}", file=sys.stderr, flush=True)
      errors.append((path, reason))
      continue
    results.append(result)
    print(format_table(result, predictor.settings) + "\n", flush=True)
  if flags_.output_json:
    write_json(flags_.output_json, run_info, predictor.settings, results, errors)
  if flags_.output_csv:
    write_csv(flags_.output_csv, results, errors)
  if errors:
    print(f"{len(errors)} of {len(paths)} file(s) failed", file=sys.stderr)
  return 1 if errors else 0


def cli() -> None:
  """Console entry point (`ppt-predict`)."""
  entry_point.run(__doc__, _define_flags, lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli()
