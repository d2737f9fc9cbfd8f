"""Note targets: a performance's notes and sustain pedal, carried into each window's time base.

Every recording rendered from MIDI (and every MAESTRO WAV, whose MIDI is aligned to
it) has exact note targets for free. `Notes` holds them compactly, as lists rather
than dense rolls:

  notes  float32 [N, 4]  onset s, offset s, key (MIDI number), velocity (1-127)
  pedal  float32 [P, 2]  start s, end s of each sustain-pedal (CC 64 >= 64) interval

and follows the audio through what the jobs do to it:

  silence trimming   `shifted(trimmed_start)`: times - start
  time stretch r     `stretched(r)`: times / r (a rate above 1 plays faster)
  pitch shift s      `transposed(s)`: keys + s; a note pushed off the 88 keys is
                     dropped and counted (`dropped`). An audio-domain shift may be
                     fractional; the key then is too (exact, not rounded)
  noise              unchanged
  windowing          `window(start, duration)`: the notes and pedal intervals that
                     overlap the window, times relative to its first frame, not
                     clipped (an onset before 0 is a note already sounding)

A window without MIDI carries no `Notes` at all (the records say so); nothing is
guessed from audio. `rolls` turns a window's notes into the dense frame targets a
transcription head trains on (the input pipeline does it, `InputConfig.note_rolls`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import zipfile

import numpy as np
import pretty_midi

PIANO_LOW, PIANO_HIGH = 21, 108  # A0 .. C8, the 88 keys
SUSTAIN_CC = 64


@dataclasses.dataclass(frozen=True)
class Notes:
  notes: np.ndarray  # float32 [N, 4]: onset, offset, key, velocity; sorted by onset, key
  pedal: np.ndarray  # float32 [P, 2]: start, end
  dropped: int = 0  # notes moved off the keyboard by a pitch shift

  def __post_init__(self):
    notes = np.asarray(self.notes, np.float32).reshape(-1, 4)
    pedal = np.asarray(self.pedal, np.float32).reshape(-1, 2)
    object.__setattr__(self, "notes", notes[np.lexsort((notes[:, 2], notes[:, 0]))])
    object.__setattr__(self, "pedal", pedal[np.argsort(pedal[:, 0], kind="stable")])

  def _times(self, fn) -> Notes:
    notes = self.notes.copy()
    notes[:, :2] = fn(notes[:, :2])
    return Notes(notes, fn(self.pedal.copy()), self.dropped)

  def shifted(self, seconds: float) -> Notes:
    return self._times(lambda t: t - np.float32(seconds))

  def stretched(self, rate: float) -> Notes:
    if not rate > 0:
      raise ValueError(f"time-stretch rate must be positive, got {rate}")
    return self._times(lambda t: t / np.float32(rate))

  def transposed(self, semitones: float) -> Notes:
    notes = self.notes.copy()
    notes[:, 2] += np.float32(semitones)
    # A fractional shift keeps a key inside when its nearest semitone is a piano key.
    keep = (np.round(notes[:, 2]) >= PIANO_LOW) & (np.round(notes[:, 2]) <= PIANO_HIGH)
    return Notes(notes[keep], self.pedal, self.dropped + int((~keep).sum()))

  def window(self, start_s: float, duration_s: float) -> Notes:
    """What overlaps `[start_s, start_s + duration_s)`, relative to `start_s`. `dropped`
    stays the recording's count (how many notes the variant lost, not this window)."""
    end = start_s + duration_s
    notes = self.notes[(self.notes[:, 0] < end) & (self.notes[:, 1] > start_s)]
    pedal = self.pedal[(self.pedal[:, 0] < end) & (self.pedal[:, 1] > start_s)]
    return Notes(notes, pedal, self.dropped).shifted(start_s)


def _pedal_intervals(changes, end_time: float) -> list[tuple[float, float]]:
  """Down/up intervals of one instrument's CC 64 events (down at >= 64); a pedal still
  down at the end is released at `end_time`."""
  intervals, down = [], None
  for change in sorted(changes, key=lambda c: c.time):
    if change.number != SUSTAIN_CC:
      continue
    if change.value >= 64 and down is None:
      down = change.time
    elif change.value < 64 and down is not None:
      if change.time > down:
        intervals.append((down, change.time))
      down = None
  if down is not None and end_time > down:
    intervals.append((down, end_time))
  return intervals


def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
  merged: list[list[float]] = []
  for start, end in sorted(intervals):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return [(s, e) for s, e in merged]


class NotesError(ValueError):
  """A MIDI file that should give note targets cannot be read."""


def from_midi(data: bytes, name: str = "<midi bytes>") -> Notes:
  """Every non-drum note and the sustain pedal (merged over instruments) of a MIDI file."""
  try:
    midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
  except Exception as e:  # pretty_midi/mido raise many types for a malformed file
    raise NotesError(f"{name}: unreadable MIDI for note targets ({type(e).__name__}: "
                     f"{e})") from None
  end_time = midi.get_end_time()
  notes = [(n.start, n.end, n.pitch, n.velocity) for i in midi.instruments if not i.is_drum
           for n in i.notes if n.end > n.start]
  pedal = merge_intervals([iv for i in midi.instruments if not i.is_drum
                  for iv in _pedal_intervals(i.control_changes, end_time)])
  return Notes(np.array(notes, np.float32).reshape(-1, 4), np.array(pedal, np.float32))


def rolls(window: Notes, frames: int, frame_s: float = 0.01) -> dict[str, np.ndarray]:
  """Dense targets of one window's notes at the model's frame rate (onsets-and-frames style).

  Frame i covers `[i * frame_s, (i + 1) * frame_s)`; keys are the 88 piano keys (a
  fractional key, from an audio-domain shift, counts as its nearest semitone):

    onset, offset  uint8 [frames, 88]  1 in the frame holding the note's onset / offset
    frame          uint8 [frames, 88]  1 while the note sounds (key down)
    velocity       float32 [frames, 88]  velocity / 127 at onset frames, 0 elsewhere
    pedal          uint8 [frames]      1 while the sustain pedal is down

  Notes already sounding at the window's start (onset < 0) fill `frame` only, so no onset
  is invented at a window boundary.
  """
  out = {k: np.zeros((frames, 88), np.uint8) for k in ("onset", "offset", "frame")}
  out["velocity"] = np.zeros((frames, 88), np.float32)
  out["pedal"] = np.zeros(frames, np.uint8)

  def span(start: float, end: float) -> tuple[int, int]:
    first = max(0, int(np.floor(start / frame_s)))
    return first, min(frames, max(first + 1, int(np.ceil(end / frame_s))))

  for onset, offset, key, velocity in window.notes:
    k = int(np.round(key)) - PIANO_LOW
    if not 0 <= k < 88 or offset <= 0 or onset >= frames * frame_s:
      continue
    first, last = span(onset, offset)
    out["frame"][first:last, k] = 1
    if onset >= 0:
      i = int(np.floor(onset / frame_s))
      out["onset"][i, k] = 1
      out["velocity"][i, k] = velocity / 127.0
    if offset < frames * frame_s:
      out["offset"][int(np.floor(offset / frame_s)), k] = 1
  for start, end in window.pedal:
    if end > 0 and start < frames * frame_s:
      first, last = span(start, end)
      out["pedal"][first:last] = 1
  return out


VELOCITY_AT = ("onset", "max")  # where a note's velocity is read (`from_rolls`)


def from_rolls(probabilities: dict[str, np.ndarray], frame_s: float = 0.01, *,
               onset_threshold: float = 0.5, frame_threshold: float = 0.5,
               pedal_threshold: float = 0.5, min_pedal_s: float = 0.0,
               velocity_at: str = "onset") -> Notes:
  """Notes and pedal from per-frame probabilities (a transcription head's sigmoid outputs,
  or `rolls` themselves): the inverse of `rolls`, Onsets and Frames' decoding.

  A note starts at the first frame of each run of onset probability >= `onset_threshold`
  on a key, and lasts while that key's frame probability stays >= `frame_threshold` (at
  least one frame) or until the key's next onset; its velocity is 127 x the velocity
  output at the onset frame (`velocity_at="onset"`), or the largest over the frames of its
  onset run (`"max"`: the run's first frame is the attack's weakest, and the output reads
  low there; on held-out ASAP renders onset+velocity F1 0.730 -> 0.781, BUILD_NOTES).
  Pedal intervals are the runs of pedal >= `pedal_threshold`
  lasting at least `min_pedal_s` (a transcription's pedal probability flickers around the
  threshold; each flicker would count as a press).
  `probabilities`: onset, frame, velocity `[frames, 88]`, pedal `[frames]`.
  """
  if velocity_at not in VELOCITY_AT:
    raise ValueError(f"velocity_at must be one of {VELOCITY_AT}, got {velocity_at!r}")
  onset = probabilities["onset"] >= onset_threshold
  frame = probabilities["frame"] >= frame_threshold
  frames = onset.shape[0]
  starts = onset & ~np.vstack([np.zeros((1, 88), bool), onset[:-1]])
  velocities = probabilities["velocity"]
  rows = []
  for t, k in zip(*np.nonzero(starts)):
    end = t + 1
    while end < frames and frame[end, k] and not starts[end, k]:
      end += 1
    read = t + 1
    if velocity_at == "max":  # every frame of the onset run
      while read < frames and onset[read, k]:
        read += 1
    # A one-frame read is the scalar it always was: saved thresholds decode bit for bit.
    peak = velocities[t, k] if read == t + 1 else velocities[t:read, k].max()
    velocity = float(np.clip(np.round(peak * 127), 1, 127))
    rows.append((t * frame_s, end * frame_s, k + PIANO_LOW, velocity))
  down = probabilities["pedal"] >= pedal_threshold
  edges = np.flatnonzero(np.diff(np.concatenate([[0], down.astype(np.int8), [0]])))
  pedal = [(a * frame_s, b * frame_s) for a, b in zip(edges[::2], edges[1::2])
           if (b - a) * frame_s >= min_pedal_s - 1e-9]
  return Notes(np.array(rows, np.float32).reshape(-1, 4), np.array(pedal, np.float32))


def save_archive(path: str | pathlib.Path, performances: dict[str, Notes],
                 durations: dict[str, float], about: dict,
                 posteriors: tuple[tuple[str, ...], dict[str, np.ndarray]] | None = None
                 ) -> None:
  """Many performances' notes in one `.npz` (ragged lists, in key order), with each one's
  duration in seconds and a JSON description of where they came from (`about`); and
  optionally `(names, vector by key)`: statistics of the probabilities the notes were
  decoded from (`pipelines.audio.posterior_statistics`), one vector per performance."""
  keys = sorted(performances)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  extra = {}
  if posteriors is not None:
    names, vectors = posteriors
    extra = {"posterior_names": np.asarray(names, str),
             "posteriors": np.asarray([vectors[k] for k in keys], np.float64
                                      ).reshape(len(keys), len(names))}
  np.savez(tmp, **extra, keys=np.asarray(keys, str),
           notes=np.concatenate([performances[k].notes for k in keys] + [np.zeros((0, 4))]),
           note_counts=np.asarray([len(performances[k].notes) for k in keys], np.int64),
           pedal=np.concatenate([performances[k].pedal for k in keys] + [np.zeros((0, 2))]),
           pedal_counts=np.asarray([len(performances[k].pedal) for k in keys], np.int64),
           duration_s=np.asarray([durations[k] for k in keys], np.float64),
           about=np.asarray(json.dumps(about, sort_keys=True)))
  tmp.replace(path)


def load_archive(path: str | pathlib.Path) -> tuple[dict[str, Notes], dict[str, float], dict]:
  """(notes by key, duration by key, about) of a `save_archive` file."""
  try:
    with np.load(path, allow_pickle=False) as f:
      keys = [str(k) for k in f["keys"]]
      n_ends, p_ends = np.cumsum(f["note_counts"]), np.cumsum(f["pedal_counts"])
      all_notes, all_pedal = f["notes"], f["pedal"]
      durations, about = f["duration_s"], json.loads(str(f["about"]))
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise NotesError(f"{path}: not a notes archive ({type(e).__name__}: {e})") from None
  if len(n_ends) != len(keys) or (len(keys) and (n_ends[-1] != len(all_notes) or
                                                 p_ends[-1] != len(all_pedal))):
    raise NotesError(f"{path}: note counts do not add up to the stored notes")
  out = {k: Notes(all_notes[a:b], all_pedal[c:d]) for k, a, b, c, d in zip(
      keys, np.concatenate([[0], n_ends[:-1]]), n_ends, np.concatenate([[0], p_ends[:-1]]),
      p_ends)}
  return out, dict(zip(keys, map(float, durations))), about


def load_posteriors(path: str | pathlib.Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
  """(names, vector by key) of the probability statistics a `save_archive` file carries."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if "posteriors" not in f.files:
        raise NotesError(f"{path}: the archive carries no statistics of the transcription's "
                         "probabilities (written before they were kept): rerun "
                         "eval.shard_transcription")
      keys, names, x = [str(k) for k in f["keys"]], f["posterior_names"], f["posteriors"]
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise NotesError(f"{path}: not a notes archive ({type(e).__name__}: {e})") from None
  if x.shape != (len(keys), len(names)):
    raise NotesError(f"{path}: posteriors of shape {x.shape} for {len(keys)} performances "
                     f"and {len(names)} statistics")
  return tuple(str(n) for n in names), dict(zip(keys, x))
