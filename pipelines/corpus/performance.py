"""Performing a score: audible performance factors -> performance MIDI.

Each rendition draws `Factors` (all seeded); `perform` applies them to the
score notes of `composition.py`:

  tempo          global tempo multiplier of the score's nominal tempo
  rubato         depth of phrase-level tempo waves (+ a final ritardando)
  jitter_s       std of random onset displacements (also spreads chords)
  velocity       mean MIDI velocity
  dynamic_range  amplitude of the phrase-level crescendo/decrescendo contour
  articulation   sounding duration / notated duration (staccato .. legato)
  pedal          fraction of bars with the sustain pedal down
  pedal_blur     probability that the pedal is held through a harmony change
                 instead of being changed cleanly
  voicing        melody minus accompaniment velocity
  accents        fraction of notes played with an accent

`DEADPAN` is the score rendition (PercePiano's "Score" performer).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pretty_midi

from pipelines.corpus import composition

SUSTAIN_PEDAL = 64


@dataclasses.dataclass(frozen=True)
class Factors:
  tempo: float
  rubato: float
  jitter_s: float
  velocity: float
  dynamic_range: float
  articulation: float
  pedal: float
  pedal_blur: float
  voicing: float
  accents: float


# (low, high) of the uniform draw of each factor; the rating model standardises
# factors with these ranges, so they are the single source of truth.
RANGES: dict[str, tuple[float, float]] = {
    "tempo": (0.75, 1.35),
    "rubato": (0.0, 0.3),
    "jitter_s": (0.0, 0.06),
    "velocity": (35.0, 100.0),
    "dynamic_range": (0.0, 30.0),
    "articulation": (0.35, 1.1),
    "pedal": (0.0, 1.0),
    "pedal_blur": (0.0, 1.0),
    "voicing": (-4.0, 24.0),
    "accents": (0.0, 0.3),
}
FACTOR_NAMES = tuple(f.name for f in dataclasses.fields(Factors))

DEADPAN = Factors(tempo=1.0, rubato=0.0, jitter_s=0.0, velocity=64.0, dynamic_range=0.0,
                  articulation=0.95, pedal=0.0, pedal_blur=0.0, voicing=0.0, accents=0.0)


def draw_factors(rng: np.random.Generator) -> Factors:
  return Factors(**{name: float(rng.uniform(*RANGES[name])) for name in FACTOR_NAMES})


def standardized(factors: Factors) -> np.ndarray:
  """Factors mapped to [-1, 1] over their draw ranges, in `FACTOR_NAMES` order."""
  values = []
  for name in FACTOR_NAMES:
    low, high = RANGES[name]
    values.append(2.0 * (getattr(factors, name) - low) / (high - low) - 1.0)
  return np.asarray(values)


def _beat_clock(num_beats: float, tempo_bpm: float, factors: Factors, phase: float):
  """Returns seconds(beat): the integral of the local beat duration.

  Local tempo = tempo_bpm * tempo * (1 + rubato * sin(wave over 4-bar-ish
  phrases)), slowing by up to `rubato` over the last two beats (ritardando).
  """
  grid = np.linspace(0.0, num_beats, int(num_beats * 16) + 1)
  wave = np.sin(2 * np.pi * grid / 8.0 + phase)
  ritardando = np.clip((grid - (num_beats - 2.0)) / 2.0, 0.0, 1.0)
  local = tempo_bpm * factors.tempo * (1.0 + factors.rubato * wave) * (
      1.0 - 0.5 * factors.rubato * ritardando)
  seconds = np.concatenate([[0.0], np.cumsum(60.0 / local[:-1] * np.diff(grid))])
  return lambda beat: np.interp(beat, grid, seconds)


def perform(
    notes: tuple[composition.Note, ...],
    *,
    beats_per_bar: int,
    tempo_bpm: float,
    factors: Factors,
    rng: np.random.Generator,
    lead_in_s: float = 0.3,
) -> pretty_midi.PrettyMIDI:
  """Plays `notes` (a passage, beat 0 = its start) with `factors`; returns piano MIDI."""
  if not notes:
    raise ValueError("nothing to perform: the passage has no notes")
  num_beats = max(n.onset + n.duration for n in notes)
  clock = _beat_clock(num_beats, tempo_bpm, factors, phase=float(rng.uniform(0, 2 * np.pi)))
  contour_phase = float(rng.uniform(0, 2 * np.pi))
  piano = pretty_midi.Instrument(program=0, name="piano")
  for n in sorted(notes, key=lambda n: (n.onset, n.pitch)):
    start = lead_in_s + float(clock(n.onset)) + float(rng.normal(0.0, factors.jitter_s))
    notated = float(clock(n.onset + n.duration) - clock(n.onset))
    end = start + max(0.03, notated * factors.articulation)
    contour = factors.dynamic_range * np.sin(2 * np.pi * n.onset / (4 * beats_per_bar)
                                             + contour_phase)
    voice = 0.5 if n.voice == "melody" else -0.5
    velocity = factors.velocity + contour + voice * factors.voicing + rng.normal(0.0, 3.0)
    if rng.random() < factors.accents:
      velocity += float(rng.uniform(15, 28))
    piano.notes.append(pretty_midi.Note(
        velocity=int(np.clip(round(velocity), 1, 127)), pitch=n.pitch,
        start=max(0.0, start), end=max(0.0, start) + (end - start)))

  # Sustain pedal per bar. A clean change lifts just before the next harmony
  # and presses just after it; a blurred one holds through the change.
  num_bars = int(np.ceil(num_beats / beats_per_bar))
  down = False
  for bar in range(num_bars):
    t0 = lead_in_s + float(clock(bar * beats_per_bar))
    t1 = lead_in_s + float(clock(min(num_beats, (bar + 1) * beats_per_bar)))
    wants = rng.random() < factors.pedal
    if wants and not down:
      piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 100, t0 + 0.06))
      down = True
    elif not wants and down:
      piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 0, t0 - 0.04))
      down = False
    if down and bar + 1 < num_bars and rng.random() >= factors.pedal_blur:
      piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 0, t1 - 0.04))
      down = False
  if down:
    last = max(n.end for n in piano.notes)
    piano.control_changes.append(pretty_midi.ControlChange(SUSTAIN_PEDAL, 0, last + 0.5))

  midi = pretty_midi.PrettyMIDI(initial_tempo=tempo_bpm * factors.tempo)
  midi.instruments.append(piano)
  return midi
