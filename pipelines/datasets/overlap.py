"""Which pre-training performances contain a rated one: exact MIDI excerpts, found by note n-grams.

PercePiano's performances are excerpts of e-Piano Competition recordings, the source of
MAESTRO and ASAP too. Measured on the real data: 52 of PercePiano's 117 excerpts of
Schubert's D935 no. 3 (piece fold 2) are cut from 4 of ASAP's 8 performances of it
(`Schubert/Impromptu_op142/3`), note for note and velocity for velocity. A transcriber
pre-trained on renders of those performances memorises what the audio does not carry: its
pedal frame F1 on the 52 is 0.73, against 0.38 on the other 65 of the same piece
(BUILD_NOTES, "Rated performances inside the pre-training corpus"). So a pre-training job
given the rated MIDI leaves out every composition that holds one of them
(`pipelines.beam.maestro_job --exclude_overlap_with`).

An excerpt is found without any metadata: each note is its key and velocity, the notes are
ordered by onset (then key), and windows of `NGRAM` consecutive notes are hashed. A few
windows spread over each rated performance are looked up among every window of the
pre-training performances; a hit counts when `CONFIRM` notes around it agree in key and
velocity, and in onset (up to one shift) within `ONSET_TOLERANCE_S`.
An excerpt re-timed, transposed or re-velocitied (another render of the same playing) is
not found: this finds copies of the same MIDI, not the same music.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np

from pipelines import process_pool
from pipelines.audio import notes as notes_lib

NGRAM = 12  # notes per hashed window: 12 keys and velocities in a row do not recur by chance
PROBES = 4  # windows looked up per rated performance (spread over it)
CONFIRM = 24  # notes that must agree from a hit on (fewer if the excerpt is shorter)
ONSET_TOLERANCE_S = 0.01
MIDI_SUFFIXES = (".mid", ".midi")
POOL_FROM = 64  # files; fewer are read in-process (a spawned pool takes seconds to start)


@dataclasses.dataclass(frozen=True)
class Sequence:
  """One performance's notes in onset order: onset seconds, and key * 128 + velocity."""

  onsets: np.ndarray  # float64 [N]
  codes: np.ndarray  # int64 [N]

  @classmethod
  def of(cls, performance: notes_lib.Notes) -> Sequence:
    n = performance.notes.astype(np.float64)
    order = np.lexsort((n[:, 2], n[:, 0]))  # onset, then key: a chord's order is fixed
    n = n[order]
    return cls(n[:, 0], n[:, 2].astype(np.int64) * 128 + n[:, 3].astype(np.int64))


def read(path: str | pathlib.Path) -> Sequence:
  """A MIDI file's notes (`notes.from_midi`; an unreadable file raises `NotesError`)."""
  path = pathlib.Path(path)
  return Sequence.of(notes_lib.from_midi(path.read_bytes(), str(path)))


def midi_files(root: str | pathlib.Path) -> list[pathlib.Path]:
  """Every MIDI file under `root` (recursively), sorted; a missing directory is an error."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"no such directory of rated MIDI: {root}")
  return sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())


def _hashes(codes: np.ndarray) -> np.ndarray:
  """A 64-bit hash of every window of NGRAM consecutive codes (`[len - NGRAM + 1]`)."""
  if codes.size < NGRAM:
    return np.zeros(0, np.uint64)
  windows = np.lib.stride_tricks.sliding_window_view(codes.astype(np.uint64), NGRAM)
  out = np.zeros(windows.shape[0], np.uint64)
  with np.errstate(over="ignore"):  # wrapping multiplication is the hash
    for j in range(NGRAM):
      out = out * np.uint64(1_000_003) + windows[:, j] + np.uint64(1)
  return out


class Index:
  """Every NGRAM-note window of many performances, for looking excerpts up."""

  def __init__(self, performances: Mapping[str, Sequence]):
    self.names = list(performances)
    self.sequences = [performances[n] for n in self.names]
    hashes = [_hashes(s.codes) for s in self.sequences]
    owner = np.concatenate([np.full(h.size, i, np.int64) for i, h in enumerate(hashes)]
                           + [np.zeros(0, np.int64)])
    position = np.concatenate([np.arange(h.size) for h in hashes] + [np.zeros(0, np.int64)])
    flat = np.concatenate(hashes + [np.zeros(0, np.uint64)])
    order = np.argsort(flat, kind="stable")
    self._hashes, self._owner, self._position = flat[order], owner[order], position[order]

  def _confirmed(self, excerpt: Sequence, at: int, owner: int, position: int) -> bool:
    """Whether CONFIRM notes of the excerpt around its window `at` (all of a shorter
    excerpt) sit in the source at `position`: same keys and velocities, same onsets up to
    one shift."""
    source = self.sequences[owner]
    length = min(excerpt.codes.size, CONFIRM)
    first = max(0, min(at, excerpt.codes.size - length))
    start = position - at + first  # that note's place in the source
    if start < 0 or start + length > source.codes.size:
      return False
    ours = slice(first, first + length)
    if not np.array_equal(source.codes[start:start + length], excerpt.codes[ours]):
      return False
    theirs = source.onsets[start:start + length]
    return bool(np.all(np.abs(theirs - theirs[0] - (excerpt.onsets[ours] - excerpt.onsets[first]))
                       <= ONSET_TOLERANCE_S))

  def find(self, excerpt: Sequence) -> str | None:
    """The name of a performance that holds `excerpt`, or None. An excerpt shorter than
    NGRAM notes cannot be looked up (None)."""
    hashes = _hashes(excerpt.codes)
    if hashes.size == 0:
      return None
    for at in np.unique(np.linspace(0, hashes.size - 1, PROBES).astype(int)):
      lo, hi = np.searchsorted(self._hashes, hashes[at], "left"), np.searchsorted(
          self._hashes, hashes[at], "right")
      for owner, position in zip(self._owner[lo:hi], self._position[lo:hi]):
        if self._confirmed(excerpt, int(at), int(owner), int(position)):
          return self.names[owner]
    return None


def contained(rated: Mapping[str, Sequence], corpus: Mapping[str, Sequence]
              ) -> dict[str, str]:
  """rated name -> the corpus performance it is an excerpt of, for every rated performance
  found in the corpus."""
  index = Index(corpus)
  found = {name: index.find(sequence) for name, sequence in rated.items()}
  return {name: source for name, source in found.items() if source is not None}


def read_all(paths: Iterable[str | pathlib.Path], workers: int = 1
             ) -> tuple[dict[str, Sequence], list[str]]:
  """(sequence by path, "path: why" of each unreadable file): a broken file is reported, not
  fatal, and the caller says how many there were. MIDI parsing is most of the time (~80 s
  for ASAP and PercePiano on one core), so `workers` > 1 reads in spawned processes."""
  paths = [str(p) for p in paths]
  if workers > 1 and len(paths) >= POOL_FROM:
    with process_pool.spawning(workers) as pool:
      results = list(pool.map(_read_or_why, paths, chunksize=16))
  else:
    results = [_read_or_why(p) for p in paths]
  out = {p: r for p, r in zip(paths, results) if isinstance(r, Sequence)}
  return out, [r for r in results if isinstance(r, str)]


def _read_or_why(path: str) -> Sequence | str:
  try:
    return read(path)
  except (OSError, notes_lib.NotesError) as e:
    return f"{path}: {e}"
