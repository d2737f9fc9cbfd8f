"""Attention maps drawn over the log-mel, one multi-panel PNG per window, and their command.

  python -m eval.attention_figures --checkpoint=W --audio=FILE.{wav,flac,mid} \
      [--window_index=K | --start_s=S] --output_dir=D

The maps themselves (rollout, per-group cross-attention) are computed by
eval.attention; this module draws them and picks the windows of a recording.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import textwrap
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from eval import attention, loading, predict, recording
from pipelines import entry_point
from pipelines.audio import decode, features, frontend, render, windowing

PNG_SUFFIX = "_attention.png"


def mel_bin_hz(config: features.FbankConfig = features.AST) -> np.ndarray:
  """Centre frequency in Hz of each mel filter (the triangles' apexes, Kaldi's spacing)."""
  high = config.high_freq_hz if config.high_freq_hz > 0 else (
      config.sample_rate / 2 + config.high_freq_hz)
  low_mel, high_mel = features._mel(np.float64(config.low_freq_hz)), features._mel(np.float64(high))
  centres = low_mel + (high_mel - low_mel) / (config.num_mel_bins + 1) * np.arange(
      1, config.num_mel_bins + 1)
  return 700.0 * (np.exp(centres / 1127.0) - 1.0)  # the inverse of features._mel


def _share_text(shares: dict, name: str) -> str:
  others = ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares["to_groups"].items() if k != name)
  return (f"attention: patches {100 * shares['patches']:.1f}%, extra tokens "
          f"{100 * shares['extra_tokens']:.1f}%, own query {100 * shares['self']:.1f}%, "
          f"other groups {100 * shares['other_groups']:.1f}% ({others})")


def draw(result: dict, logmel: np.ndarray, path: str | pathlib.Path, *, start_s: float = 0.0,
         valid_frames: int | None = None, title: str = "") -> pathlib.Path:
  """One PNG: the rollout and each group's map over the log-mel `[mel, frames]`.

  Maps are shown relative to uniform attention over the valid patches (1 = the
  share every patch would get if attention were flat), so panels and runs
  compare on one scale.
  """
  from matplotlib.figure import Figure  # no pyplot: no global backend state

  logmel = np.asarray(logmel, np.float64)
  mel, frames = logmel.shape
  shift = features.AST.frame_shift_ms / 1000.0
  extent = (start_s, start_s + frames * shift, -0.5, mel - 0.5)
  panels = [("Rollout (pooled output -> input patches)",
             f"{100 * result['rollout']['share_on_patches']:.1f}% of the pooled output's "
             "rollout is on patches (the rest on the extra tokens)", result["rollout"]["map"])]
  for name, group in result["groups"].items():
    dims = ", ".join(group["dimensions"])
    panels.append((f"{name.capitalize()} head ({dims})", _share_text(group["shares"], name),
                   group["map"]))
  uniform = max(result["valid_patches"], 1)
  # Pixels no patch covers (the top mel bins at stride 10) and padding frames carry
  # no attention: left transparent rather than drawn as zero.
  hidden = ~np.asarray(result["covered"], bool)
  if valid_frames is not None:
    hidden = hidden | (np.arange(frames) >= valid_frames)[None, :]
  hz = mel_bin_hz(dataclasses.replace(features.AST, num_mel_bins=mel))
  fig = Figure(figsize=(max(7.0, min(16.0, 3.0 + frames / 80)), 2.9 * len(panels) + 0.6),
               layout="constrained")
  if title:
    fig.suptitle(title, fontsize=10)
  axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
  for ax, (heading, subtitle, value) in zip(axes, panels):
    shown = np.ma.masked_where(hidden, np.asarray(value, np.float64) * uniform)
    # A robust colour range per panel: a trained model's maps are often within a few
    # per cent of uniform, which a fixed 0-based scale would draw as flat.
    visible = shown.compressed()
    lo, hi = (np.percentile(visible, [1, 99]) if visible.size else (0.0, 1.0))
    hi = max(hi, lo + 1e-6)
    ax.imshow(logmel, origin="lower", aspect="auto", extent=extent, cmap="gray",
              interpolation="nearest")
    image = ax.imshow(shown, origin="lower", aspect="auto", extent=extent, cmap="inferno",
                      alpha=0.55, interpolation="nearest", vmin=lo, vmax=hi)
    if valid_frames is not None and valid_frames < frames:
      ax.axvline(start_s + valid_frames * shift, color="cyan", linestyle="--", linewidth=1)
    ax.set_title("\n".join(textwrap.wrap(heading, 110) + textwrap.wrap(subtitle, 110)),
                 fontsize=8)
    ax.set_xlabel("time (s)", fontsize=8)
    ticks = np.linspace(0, mel - 1, 5).round().astype(int)
    ax.set_yticks(ticks, [f"{hz[t]:.0f}" for t in ticks], fontsize=7)
    ax.set_ylabel("frequency (Hz, mel)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("attention / uniform", fontsize=7)
    bar.ax.tick_params(labelsize=7)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def figures_for_windows(run: loading.Run, windows: Sequence[windowing.Window],
                        output_dir: str | pathlib.Path, *, name: str = "window",
                        residual: float = 0.5) -> list[pathlib.Path]:
  """One PNG per window (`windowing.Window`: un-normalised log-mel `[frames, mel]`).

  Files are `{output_dir}/{name}_window{index:03d}_attention.png` (a window with
  index -1, not one of training's, is named by its start: `{name}_at{S}s_...`);
  returns the paths.
  """
  collector = attention.Collector(run.model_config, run.params)
  config = collector.config
  settings = recording.FeatureSettings.from_metadata(run.data_metadata)
  shift = features.AST.frame_shift_ms / 1000.0
  paths = []
  for window in windows:
    if window.features.shape != (run.num_frames, config.encoder.num_mel_bins):
      raise attention.AttentionMapError(f"window {window.index} is {window.features.shape}; the run reads "
                              f"[{run.num_frames}, {config.encoder.num_mel_bins}] (frames, mel)")
    collected = collector(frontend.model_input([window], settings.mean, settings.std), np.array([window.valid_frames]))
    result = attention.maps_from_attention(collected, 0, config, residual)
    start_s = window.start_frame * shift
    which = f"window {window.index}" if window.index >= 0 else "window"
    title = (f"{name}, {which}: {start_s:.2f}-{start_s + window.valid_frames * shift:.2f} s "
             f"(run {run.workdir.name}, step {run.step})")
    stem = f"{name}_window{window.index:03d}" if window.index >= 0 else f"{name}_at{start_s:.2f}s"
    paths.append(draw(result, window.features.T, pathlib.Path(output_dir) / f"{stem}{PNG_SUFFIX}",
                      start_s=start_s, valid_frames=window.valid_frames, title=title))
  return paths


# ---------------------------------------------------------------------------
# Windows of a file, as training made them.

def select_window(logmel: np.ndarray, spec: windowing.WindowConfig, *,
                  window_index: int | None = None,
                  start_s: float | None = None, name: str = "the recording") -> windowing.Window:
  """Training's window `window_index` (every `hop_frames`), or one starting at `start_s`."""
  if window_index is not None and start_s is not None:
    raise attention.AttentionMapError("give a window index or a start time, not both")
  shift = features.AST.frame_shift_ms / 1000.0
  total = logmel.shape[0]
  if start_s is not None:
    start = int(round(start_s / shift))
    if not 0 <= start < total:
      raise attention.WindowError(f"start {start_s} s is outside {name}, which is {total * shift:.2f} s "
                        "long")
    window = windowing.cut(logmel[start:], dataclasses.replace(spec, hop_frames=spec.frames))[0]
    # Index -1: not one of training's windows (named by its start time instead).
    return dataclasses.replace(window, index=-1, start_frame=start)
  windows = windowing.cut(logmel, spec)
  index = 0 if window_index is None else window_index
  if not 0 <= index < len(windows):
    raise attention.WindowError(f"window {index} is out of range: {name} ({total * shift:.2f} s) has "
                      f"{len(windows)} window(s) of {spec.frames * shift:g} s every "
                      f"{spec.hop_frames * shift:g} s (indices 0..{len(windows) - 1})")
  return windows[index]


def figures_for_audio(run: loading.Run, path: str | pathlib.Path, output_dir: str | pathlib.Path,
                      *, window_index: int | None = None, start_s: float | None = None,
                      soundfont: str | None = None, residual: float = 0.5) -> list[pathlib.Path]:
  """The maps of one window of a recording (training's window `window_index`, default 0)."""
  path = pathlib.Path(path)
  settings = recording.FeatureSettings.from_metadata(run.data_metadata, soundfont=soundfont)
  if settings.window.frames != run.num_frames:
    raise attention.AttentionMapError(f"{run.workdir}: the data's {settings.window_s} s windows do not "
                            f"match the model's {run.num_frames} frames")
  predict.check_soundfont(settings, [str(path)])
  logmel = frontend.log_mel(recording.load_samples(path, settings))
  window = select_window(logmel, settings.window, window_index=window_index, start_s=start_s,
                         name=str(path))
  return figures_for_windows(run, [window], output_dir, name=path.stem, residual=residual)


# ---------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "Fine-tuning work dir (or a checkpoint step dir).",
                      required=True)
  flags.DEFINE_string("step", "best", "Checkpoint: 'best', 'latest' or a step number.")
  flags.DEFINE_string("audio", None, "A .wav/.flac (any audio_load format) or .mid file.",
                      required=True)
  flags.DEFINE_integer("window_index", None, "Which training window (0 = first; default 0).")
  flags.DEFINE_float("start_s", None, "Instead of --window_index: a window starting here (s).")
  flags.DEFINE_string("output_dir", None, "Where the PNGs go.", required=True)
  flags.DEFINE_string("soundfont", None, "SoundFont for MIDI (default: the run's data's, else "
                      "pretty_midi's TimGM6mb).")
  flags.DEFINE_float("residual", 0.5, "Rollout's identity weight (Abnar & Zuidema: 0.5).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every restore step at INFO; the paths on stdout are this tool's output.
  logging.set_verbosity(logging.WARNING)
  try:
    audio_path = pathlib.Path(FLAGS.audio)
    if not audio_path.is_file():
      raise attention.AttentionMapError(f"{audio_path}: no such file")
    run = loading.load(FLAGS.checkpoint, step=FLAGS.step)
    paths = figures_for_audio(run, audio_path, FLAGS.output_dir, window_index=FLAGS.window_index,
                              start_s=FLAGS.start_s, soundfont=FLAGS.soundfont,
                              residual=FLAGS.residual)
  except (attention.AttentionMapError, loading.RunError, decode.AudioError, render.RenderError,
          FileNotFoundError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")
  for path in paths:
    print(path)


def cli() -> None:
  """Console entry point (`ppt-attention`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
