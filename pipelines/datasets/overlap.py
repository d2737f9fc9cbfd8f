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

An excerpt is found without any metadata. Each note is its key and velocity, and the notes
go in onset order (then key, then velocity). Every window of `NGRAM` consecutive notes of
the corpus is hashed, and every window of a rated performance is looked up. A hit is only
a candidate: it fixes the time shift between the two, and the candidate holds the excerpt
when at least `MATCHED` of the excerpt's notes each have a note of the same key and velocity
in the source within `ONSET_TOLERANCE_S` of its shifted onset. That check ignores the order
of near-simultaneous notes, which a re-saved file may swap (its onsets move by a tick).
Every performance that holds the excerpt is found (ASAP stores some performances twice,
under two folders). An excerpt re-timed, transposed or re-velocitied (another render of the
same playing) is not found: this finds copies of the same MIDI, not the same music.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from pipelines.audio import notes as notes_lib

NGRAM = 12  # notes per hashed window: 12 keys and velocities in a row do not recur by chance
# Share of an excerpt's notes that must be in the source. A cut may clip a note at either
# end; a different performance shares a few notes by chance, not most.
MATCHED = 0.95
ONSET_TOLERANCE_S = 0.01
MIDI_SUFFIXES = (".mid", ".midi")


@dataclasses.dataclass(frozen=True)
class Sequence:
  """One performance's notes in onset order: onset seconds, and key * 128 + velocity."""

  onsets: np.ndarray  # float64 [N]
  codes: np.ndarray  # int64 [N]

  @classmethod
  def of(cls, performance: notes_lib.Notes) -> Sequence:
    n = performance.notes.astype(np.float64)
    n = n[np.lexsort((n[:, 3], n[:, 2], n[:, 0]))]  # onset, key, velocity
    return cls(n[:, 0], n[:, 2].astype(np.int64) * 128 + n[:, 3].astype(np.int64))


def read(path: str | pathlib.Path) -> Sequence:
  """A MIDI file's notes (`notes.from_midi`; an unreadable file raises `NotesError`)."""
  path = pathlib.Path(path)
  return Sequence.of(notes_lib.from_midi(path.read_bytes(), str(path)))


def midi_files(root: str | pathlib.Path) -> list[pathlib.Path]:
  """Every MIDI file under `root` (recursively), sorted; a missing directory is an error."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"not a directory of rated MIDI: {root}")
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

  def _holds(self, owner: int, excerpt: Sequence, shift: float) -> bool:
    """Whether the source holds MATCHED of the excerpt's notes at their onsets + `shift`
    (each: a source note of the same code within ONSET_TOLERANCE_S)."""
    source = self.sequences[owner]
    onsets = excerpt.onsets + shift
    lo, hi = np.searchsorted(source.onsets, [onsets[0] - ONSET_TOLERANCE_S,
                                             onsets[-1] + ONSET_TOLERANCE_S], side="left")
    theirs_onsets, theirs_codes = source.onsets[lo:hi + 1], source.codes[lo:hi + 1]
    if theirs_codes.size == 0:
      return False
    # Excerpt notes x the source's notes over the same span: a few hundred squared at most.
    same = (excerpt.codes[:, None] == theirs_codes[None, :]) & (
        np.abs(onsets[:, None] - theirs_onsets[None, :]) <= ONSET_TOLERANCE_S)
    return bool(same.any(axis=1).mean() >= MATCHED)

  def find(self, excerpt: Sequence) -> tuple[str, ...]:
    """The names of every performance that holds `excerpt` (sorted; none for an excerpt
    shorter than NGRAM notes, which cannot be looked up)."""
    hashes = _hashes(excerpt.codes)
    lo = np.searchsorted(self._hashes, hashes, "left")
    hi = np.searchsorted(self._hashes, hashes, "right")
    found: set[int] = set()
    tried: set[tuple[int, int]] = set()  # (owner, shift in tolerance steps)
    for at in np.flatnonzero(hi > lo).tolist():
      for owner, position in zip(self._owner[lo[at]:hi[at]].tolist(),
                                 self._position[lo[at]:hi[at]].tolist()):
        shift = float(self.sequences[owner].onsets[position] - excerpt.onsets[at])
        # Each window of a true copy gives the same shift (to a tick): check it once.
        candidate = (owner, round(shift / ONSET_TOLERANCE_S))
        if owner in found or candidate in tried:
          continue
        tried.add(candidate)
        if self._holds(owner, excerpt, shift):
          found.add(owner)
    return tuple(sorted(self.names[i] for i in found))


def contained(rated: Mapping[str, Sequence], corpus: Mapping[str, Sequence]
              ) -> dict[str, tuple[str, ...]]:
  """rated name -> every corpus performance it is an excerpt of, for each rated performance
  found in the corpus."""
  index = Index(corpus)
  found = {name: index.find(sequence) for name, sequence in rated.items()}
  return {name: sources for name, sources in found.items() if sources}


def read_all(paths: Iterable[str | pathlib.Path], mapper: Callable = map
             ) -> tuple[dict[str, Sequence], list[str]]:
  """(sequence by path, "path: why" of each unreadable file): a broken file is reported, not
  fatal, and the caller says how many there were. MIDI parsing is most of the time (~80 s
  for ASAP and PercePiano on one core): `mapper` may be a process pool's `map`."""
  paths = [str(p) for p in paths]
  results = list(mapper(read_or_why, paths))
  out = {p: r for p, r in zip(paths, results) if isinstance(r, Sequence)}
  return out, [r for r in results if isinstance(r, str)]


def read_or_why(path: str) -> Sequence | str:
  """`read`, or "path: why" where the file cannot be read."""
  try:
    return read(path)
  except (OSError, notes_lib.NotesError) as e:
    return f"{path}: {e}"
