"""Seeded musical material for the generated corpora: a melody over an accompaniment.

A `Movement` is a few bars in one key and metre: a diatonic chord progression
(one chord per bar, ending on a cadence), a melody drawn mostly stepwise over
chord tones in the right hand, and a left-hand accompaniment pattern (broken
chords, Alberti bass or block chords) that the movement keeps throughout.
Passages are runs of bars cut from a movement, like PercePiano's 4/8/16-bar
segments. Everything is in beats; `performance.py` turns beats into seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: a leading tone for the cadence

# Diatonic progressions as scale degrees (0 = tonic), one chord per bar.
_PHRASES = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (0, 1, 4, 0), (5, 3, 4, 0), (0, 4, 5, 3))
ACCOMPANIMENTS = ("broken", "alberti", "block")


@dataclasses.dataclass(frozen=True)
class Note:
  """A score note: onset and duration in beats from the start of the movement."""

  onset: float
  duration: float
  pitch: int
  voice: str  # "melody" or "accompaniment"
  bar: int


@dataclasses.dataclass(frozen=True)
class Movement:
  tonic: int  # MIDI pitch class of the key, 0 = C
  minor: bool
  beats_per_bar: int
  tempo_bpm: float  # nominal tempo of the score
  accompaniment: str
  chords: tuple[int, ...]  # scale degree of each bar's chord
  notes: tuple[Note, ...]

  @property
  def num_bars(self) -> int:
    return len(self.chords)

  def passage(self, first_bar: int, num_bars: int) -> tuple[Note, ...]:
    """The notes of bars [first_bar, first_bar + num_bars), re-timed to start at beat 0."""
    if first_bar < 0 or num_bars < 1 or first_bar + num_bars > self.num_bars:
      raise ValueError(f"bars {first_bar}..{first_bar + num_bars} outside 0..{self.num_bars}")
    offset = first_bar * self.beats_per_bar
    return tuple(
        dataclasses.replace(n, onset=n.onset - offset, bar=n.bar - first_bar)
        for n in self.notes if first_bar <= n.bar < first_bar + num_bars)


def _scale_pitch(tonic: int, scale: tuple[int, ...], degree: int, octave: int) -> int:
  """MIDI pitch of a (possibly negative or > 6) scale degree in `octave` (4 = middle C's)."""
  octave += degree // 7
  return 12 * (octave + 1) + tonic + scale[degree % 7]


def _chord_degrees(root: int) -> tuple[int, int, int]:
  return root, root + 2, root + 4


def compose(rng: np.random.Generator, num_bars: int) -> Movement:
  """Draws a movement of `num_bars` bars (a multiple of 4)."""
  if num_bars < 4 or num_bars % 4:
    raise ValueError(f"num_bars must be a positive multiple of 4, got {num_bars}")
  tonic = int(rng.integers(0, 12))
  minor = bool(rng.random() < 0.4)
  scale = MINOR if minor else MAJOR
  beats = int(rng.choice([3, 4]))
  tempo = float(rng.uniform(66, 112))
  accompaniment = str(rng.choice(ACCOMPANIMENTS))
  chords: list[int] = []
  for _ in range(num_bars // 4):
    chords.extend(_PHRASES[int(rng.integers(len(_PHRASES)))])
  chords[-2:] = [4, 0]  # end on an authentic cadence

  notes: list[Note] = []
  degree = 7 + int(rng.choice(_chord_degrees(0)))  # start the melody on a tonic-chord tone
  for bar, root in enumerate(chords):
    start = bar * beats
    tones = _chord_degrees(root)
    # Melody: half-beat or beat steps, chord tones on the beat, steps between.
    t = 0.0
    while t < beats:
      step = float(rng.choice([0.5, 1.0, 1.0, 2.0])) if beats - t >= 2 else \
          float(rng.choice([0.5, 1.0])) if beats - t >= 1 else 0.5
      if t == int(t):  # on the beat: nearest chord tone
        candidates = [7 * o + c for o in (0, 1, 2) for c in tones]
        degree = min(candidates, key=lambda d: (abs(d - degree), rng.random()))
      else:
        degree += int(rng.choice([-1, 1]))
      degree = int(np.clip(degree, 5, 15))
      notes.append(Note(start + t, step, _scale_pitch(tonic, scale, degree, 4), "melody", bar))
      t += step
    # Accompaniment in the left hand, one octave and a half below.
    low = [_scale_pitch(tonic, scale, d, 2) for d in tones]
    if accompaniment == "block":
      for beat in range(beats):
        for p in low:
          notes.append(Note(start + beat, 1.0, p, "accompaniment", bar))
    else:
      pattern = ([0, 2, 1, 2] if accompaniment == "alberti" else [0, 1, 2, 1]) * beats
      for i in range(2 * beats):  # eighth notes
        notes.append(Note(start + 0.5 * i, 0.5, low[pattern[i]], "accompaniment", bar))
  return Movement(tonic=tonic, minor=minor, beats_per_bar=beats, tempo_bpm=tempo,
                  accompaniment=accompaniment, chords=tuple(chords), notes=tuple(notes))
