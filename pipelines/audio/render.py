"""Performance MIDI -> audio through a SoundFont, trimmed of leading/trailing silence.

Rendering uses `midirenderer` (a self-contained Rust SoundFont synthesiser on
PyPI): deterministic, no system libraries, ~100x real time per core. The audio
depends on the SoundFont's timbre, so `render_midi` returns the SoundFont's
SHA-256 with the audio and pipelines record it in their metadata.

Silence trimming: most PercePiano Schubert D960 files end 5-20 s after their
last note (a late end-of-track marker). That silence is a file-format cue a
model could learn instead of the music, so we trim it. The rule is relative to
the render's own loudest frame (`top_db` below it) with no absolute dB floor:
`librosa.effects.trim`'s -100 dBFS floor sits above "60 dB below the peak" for
quiet renders (peaks of -30..-45 dBFS), so it trims nothing there. The render's
silence is digital zero, which is below any relative threshold. Gain is never
normalised: loudness and dynamic range are labels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import math
import os
import pathlib

import midirenderer
import mido
import numpy as np
import pretty_midi

from pipelines.audio import decode


class RenderError(ValueError):
  """A MIDI file could not be rendered to usable audio; the message names it."""

  def __init__(self, name: str, reason: str):
    self.name = name
    self.reason = reason
    super().__init__(f"{name}: {reason}")


def default_soundfont() -> pathlib.Path:
  """TimGM6mb.sf2 (GPL, ~6 MB), shipped inside the pretty_midi wheel."""
  spec = importlib.util.find_spec("pretty_midi")
  if spec is None or spec.origin is None:
    raise FileNotFoundError("pretty_midi is not installed; pass a SoundFont path")
  return pathlib.Path(spec.origin).parent / "TimGM6mb.sf2"


@dataclasses.dataclass(frozen=True)
class TrimConfig:
  """Leading/trailing silence rule (see module docstring)."""

  top_db: float = 80.0  # frames quieter than the loudest frame by more are silence
  frame_s: float = 0.064
  margin_s: float = 0.05  # kept on each side so note attacks and tails stay whole
  max_tail_s: float = 10.0  # synthesis stops this long after the last MIDI event (8 s was
  # the least that left every tested real clip bit-identical; quiet renders decay slowly)
  enabled: bool = True


@dataclasses.dataclass(frozen=True)
class Rendered:
  """A render: mono float32 samples at `sample_rate`, after trimming."""

  samples: np.ndarray
  sample_rate: int
  soundfont_sha256: str
  untrimmed_seconds: float  # the file's full length, including silence never synthesised
  trimmed_start_seconds: float  # removed from the start
  trimmed_end_seconds: float  # removed from the end (trimmed or never synthesised)

  @property
  def seconds(self) -> float:
    return self.samples.shape[0] / self.sample_rate


@dataclasses.dataclass(frozen=True)
class SoundFont:
  data: bytes
  sha256: str


@functools.lru_cache(maxsize=2)
def _load_soundfont(path: str, mtime_ns: int, size: int) -> SoundFont:
  del mtime_ns, size  # cache key only: a changed file is re-read
  data = pathlib.Path(path).read_bytes()
  return SoundFont(data, hashlib.sha256(data).hexdigest())


def load_soundfont(path: str | os.PathLike | None = None) -> SoundFont:
  path = pathlib.Path(path) if path is not None else default_soundfont()
  try:
    stat = path.stat()
  except FileNotFoundError:
    raise FileNotFoundError(f"SoundFont not found: {path}") from None
  with path.open("rb") as f:
    if f.read(4) != b"RIFF":
      raise ValueError(f"{path}: not a SoundFont (.sf2 files start with RIFF)")
  return _load_soundfont(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def soundfont_sha256(path: str | os.PathLike | None = None) -> str:
  return load_soundfont(path).sha256


def trim_bounds(samples: np.ndarray, sample_rate: int, config: TrimConfig = TrimConfig()
                ) -> tuple[int, int]:
  """Returns `(start, end)` sample indices of the non-silent part (`end > start`).

  Raises ValueError when every frame is digital silence.
  """
  frame = max(1, int(round(config.frame_s * sample_rate)))
  num_frames = -(-samples.shape[0] // frame)
  padded = np.zeros(num_frames * frame, dtype=np.float64)
  padded[:samples.shape[0]] = samples
  energy = np.square(padded).reshape(num_frames, frame).mean(axis=1)
  peak = energy.max()
  if peak <= 0:
    raise ValueError("audio is digital silence")
  loud = np.flatnonzero(energy > peak * 10.0 ** (-config.top_db / 10.0))
  margin = int(round(config.margin_s * sample_rate))
  start = max(0, loud[0] * frame - margin)
  end = min(samples.shape[0], (loud[-1] + 1) * frame + margin)
  return start, end


def midi_to_bytes(midi: pretty_midi.PrettyMIDI) -> bytes:
  """Standard MIDI file bytes of an in-memory performance."""
  buf = io.BytesIO()
  midi.write(buf)
  return buf.getvalue()


def cap_trailing_time(midi: bytes, max_tail_s: float) -> tuple[bytes, float]:
  """Moves each track's end-of-track marker to at most `max_tail_s` after its last event.

  The synthesiser renders until the marker, and in the real release it trails
  the last note by up to 20 s of silence that the trim then removes: capping
  it saves that synthesis time. Everything that sounds (notes, pedal) is an
  event before the marker, and piano decay is far shorter than the cap, so
  the trimmed audio does not change (tested on real files). Returns the MIDI
  bytes (unchanged when no marker trails by more than the cap) and the
  seconds of trailing time removed.
  """
  try:
    parsed = mido.MidiFile(file=io.BytesIO(midi))
  except (OSError, ValueError, EOFError, KeyError, IndexError):
    return midi, 0.0  # malformed: let the synthesiser report it
  removed = 0.0
  tempo = 500_000  # microseconds per beat, the MIDI default
  for track in parsed.tracks:
    for message in track:
      if message.type == "set_tempo":
        tempo = message.tempo  # the last tempo in force near the end
    if track and track[-1].type == "end_of_track":
      seconds_per_tick = tempo / 1e6 / parsed.ticks_per_beat
      cap = math.ceil(max_tail_s / seconds_per_tick)
      if track[-1].time > cap:
        removed = max(removed, (track[-1].time - cap) * seconds_per_tick)
        track[-1] = track[-1].copy(time=cap)
  if not removed:
    return midi, 0.0
  buf = io.BytesIO()
  parsed.save(file=buf)
  return buf.getvalue(), removed


def synthesize(midi: bytes, font: SoundFont, *, name: str) -> bytes:
  """The synthesiser's own output for MIDI bytes: 48 kHz stereo 16-bit WAV bytes."""
  if not midi.startswith(b"MThd"):
    raise RenderError(name, "not a standard MIDI file (no MThd header)")
  try:
    return bytes(midirenderer.render_wave_from(font.data, midi))
  except RuntimeError as e:  # how midirenderer reports malformed MIDI
    raise RenderError(name, f"synthesiser failed: {e}") from None


def render_midi(
    midi: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = decode.TARGET_SAMPLE_RATE,
    trim: TrimConfig = TrimConfig(),
) -> Rendered:
  """Renders performance MIDI (a path or the file's bytes) to mono audio.

  Args:
    midi: path to a .mid/.midi file, or its bytes.
    name: used in error messages (defaults to the path).
    soundfont: .sf2 path; default `default_soundfont()`.
    sample_rate: output rate (the synthesiser renders at 48 kHz; soxr HQ resamples).
    trim: silence rule.

  Raises:
    RenderError naming the MIDI file for unreadable MIDI and silent renders.
    FileNotFoundError / ValueError for a missing or invalid SoundFont.
  """
  if isinstance(midi, bytes):
    data, name = midi, name or "<midi bytes>"
  else:
    name = name or str(midi)
    try:
      data = pathlib.Path(midi).read_bytes()
    except FileNotFoundError:
      raise RenderError(name, "MIDI file not found") from None
    except OSError as e:
      raise RenderError(name, f"cannot read the MIDI file: {e.strerror or e}") from None
  font = load_soundfont(soundfont)
  capped_s = 0.0
  if trim.enabled and data.startswith(b"MThd"):  # the capped time would be trimmed anyway
    data, capped_s = cap_trailing_time(data, trim.max_tail_s)
  wav = synthesize(data, font, name=name)
  try:
    samples = decode.decode_audio(
        wav, name=f"{name}.wav", target_sample_rate=sample_rate,
        min_sample_rate=sample_rate)
  except decode.EmptyAudioError:
    raise RenderError(name, "render is empty (MIDI has no events)") from None
  except decode.AudioError as e:
    raise RenderError(name, f"synthesiser output unusable: {e.reason}") from None
  untrimmed = samples.shape[0] / sample_rate + capped_s
  start, end = 0, samples.shape[0]
  if trim.enabled:
    try:
      start, end = trim_bounds(samples, sample_rate, trim)
    except ValueError:
      raise RenderError(name, "render is silent (MIDI has no audible notes)") from None
  return Rendered(
      samples=np.ascontiguousarray(samples[start:end]),
      sample_rate=sample_rate,
      soundfont_sha256=font.sha256,
      untrimmed_seconds=untrimmed,
      trimmed_start_seconds=start / sample_rate,
      trimmed_end_seconds=(samples.shape[0] - end) / sample_rate + capped_s,
  )
