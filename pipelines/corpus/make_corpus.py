"""Generates small corpora in exactly the real MAESTRO v3 and PercePiano layouts.

  python -m pipelines.corpus.make_corpus --output_dir DIR --size {tiny,demo} --seed S \
      [--soundfont PATH] [--workers N] [--parts percepiano --parts maestro]

writes

  DIR/maestro-v3.0.0/   maestro-v3.0.0.{csv,json}, YYYY/<name>.{midi,wav} (48 kHz stereo
                        16-bit, the synthesiser's output), splits disjoint by composition
  DIR/percepiano/       the two label JSONs, labels/total_2rounds.csv (raw answers),
                        virtuoso/data/all_2rounds/<key>.mid, plus what the real release
                        cannot have: ceiling.json (per-dimension ceiling on Pearson) and
                        factors.json (each rendition's performance factors)

The music is composed by `composition.py`, performed with drawn factors by
`performance.py`, rated by the simulated panel of `rating.py` (whose docstring
documents the factor -> dimension mapping) and rendered by `render.py`. Every
random draw comes from a generator keyed by (seed, stream, index), so the same
seed gives byte-identical files whatever the number of workers. Output is
written to a temporary sibling directory and renamed into place when complete;
a non-empty DIR is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import soundfile
from absl import app, flags, logging

from pipelines import entry_point, process_pool
from pipelines.audio import render
from pipelines.corpus import composition, performance, rating
from pipelines.datasets import maestro, percepiano, taxonomy


@dataclasses.dataclass(frozen=True)
class CorpusSize:
  movements: int  # PercePiano movements (each its own piece-split group)
  bars: int  # bars per movement
  eight_bar_movements: int  # movements also cut into 8-bar passages (same music, two lengths)
  performers_per_passage: int  # human renditions of each passage (+ one "Score" rendition)
  performer_pool: int
  raters: int
  raters_per_clip: tuple[int, int]
  maestro_compositions: int
  maestro_renditions: int  # performances of each composition
  maestro_bars: int


SIZES = {
    "tiny": CorpusSize(movements=3, bars=8, eight_bar_movements=1, performers_per_passage=3,
                       performer_pool=5, raters=10, raters_per_clip=(5, 8),
                       maestro_compositions=4, maestro_renditions=2, maestro_bars=8),
    "demo": CorpusSize(movements=8, bars=16, eight_bar_movements=4, performers_per_passage=7,
                       performer_pool=14, raters=40, raters_per_clip=(5, 12),
                       maestro_compositions=12, maestro_renditions=3, maestro_bars=48),
}

# Invented names: nothing here pretends to be real music.
_COMPOSERS = ("Ashgrove", "Bellmare", "Corwin", "Dunmore", "Elsworth", "Fairbrook")
_FIRST_NAMES = ("Elias", "Maren", "Tobias", "Ilse", "Konrad", "Sabine")
_TITLES = ("Sonata", "Impromptu", "Nocturne", "Rondo", "Variations", "Ballade")
_NOTE_NAMES = ("C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat",
               "B")

# Random streams: one independent generator per (seed, stream, index).
_MOVEMENT, _PERFORMERS, _RENDITION, _PASSAGE, _PANEL, _CEILING = range(1, 7)
_MAESTRO_PIECE, _MAESTRO_RENDITION, _MAESTRO_META = range(7, 10)

CEILING_FILE = "ceiling.json"
MANIFEST = "corpus.json"  # beside the two release folders: how this corpus was made
FACTORS_FILE = "factors.json"


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, stream, index])


def _dump_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class _Clip:
  key: str
  passage: str
  performer_id: int
  minor: bool
  factors: performance.Factors
  midi: bytes


def _percepiano_clips(size: CorpusSize, seed: int) -> list[_Clip]:
  tokens = [str(i) for i in range(size.performer_pool)] + ["Score"]
  ids = _rng(seed, _PERFORMERS).permutation(len(tokens))  # tokens and ids differ, as in the release
  performer_id = dict(zip(tokens, (int(i) for i in ids)))
  clips = []
  for m in range(size.movements):
    movement = composition.compose(_rng(seed, _MOVEMENT, m), size.bars)
    composer = _COMPOSERS[m % 3]
    work = f"Op{11 + m % 3}_mv{m // 3 + 1}"
    cuts = [4] + ([8] if m < size.eight_bar_movements else [])
    for bars in cuts:
      for segment in range(1, size.bars // bars + 1):
        notes = movement.passage((segment - 1) * bars, bars)
        passage = f"{composer}_{work}_{bars}bars_{segment:02d}"
        choose = _rng(seed, _PERFORMERS, len(clips) + 1)
        humans = sorted(choose.choice(size.performer_pool, size.performers_per_passage,
                                      replace=False))
        for token in [str(h) for h in humans] + ["Score"]:
          rng = _rng(seed, _RENDITION, len(clips))
          factors = performance.DEADPAN if token == "Score" else performance.draw_factors(rng)
          midi = performance.perform(notes, beats_per_bar=movement.beats_per_bar,
                                     tempo_bpm=movement.tempo_bpm, factors=factors, rng=rng)
          clips.append(_Clip(key=f"{composer}_{work}_{bars}bars_{token}_{segment:02d}",
                             passage=passage, performer_id=performer_id[token],
                             minor=movement.minor, factors=factors, midi=render.midi_to_bytes(midi)))
  return clips


def _write_percepiano(root: pathlib.Path, size: CorpusSize, seed: int) -> int:
  clips = _percepiano_clips(size, seed)
  passages = sorted({c.passage for c in clips})
  effects = {p: _rng(seed, _PASSAGE, i).normal(0.0, rating.PASSAGE_SD, taxonomy.NUM_DIMENSIONS)
             for i, p in enumerate(passages)}
  means = rating.true_means(np.stack([rating.regressors(c.factors, c.minor) for c in clips]),
                            np.stack([effects[c.passage] for c in clips]))
  panel_rng = _rng(seed, _PANEL)
  rater_bias = panel_rng.normal(0.0, rating.RATER_BIAS_SD, (size.raters, taxonomy.NUM_DIMENSIONS))
  panel = rating.simulate_panel(means, rater_bias, panel_rng, size.raters_per_clip)
  labels, stds = rating.labels_from_panel(panel, len(clips))
  ceiling = rating.ceiling(means, labels, [c.passage for c in clips], rater_bias,
                           _rng(seed, _CEILING), size.raters_per_clip)

  midi_dir = root / percepiano.MIDI_DIR
  midi_dir.mkdir(parents=True)
  for c in clips:
    (midi_dir / f"{c.key}.mid").write_bytes(c.midi)
  _dump_json(root / percepiano.LABELS_FILE,
             {c.key: [float(v) for v in labels[i]] + [c.performer_id]
              for i, c in enumerate(clips)})
  _dump_json(root / percepiano.STD_FILE,
             {c.key: [float(v) for v in stds[i]] for i, c in enumerate(clips)})
  raw = root / percepiano.RAW_RATINGS_FILE
  raw.parent.mkdir(parents=True)
  with raw.open("w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(percepiano.RAW_HEADER)
    for row, (r, c, answers) in enumerate(zip(panel.rater, panel.clip, panel.answers)):
      # Missing answers appear both ways the release writes them: empty and 0.
      cells = ["" if a == 0 and row % 2 else f"{a:.1f}" for a in answers]
      # Question_9_2_1 is not a label dimension: left unanswered.
      writer.writerow([100 + int(r), row + 1, f"{clips[c].key}.wav", *cells, "", ""])
  _dump_json(root / CEILING_FILE, {
      "method": "Pearson(labels, E[label | clip]) from re-running the simulated panel",
      "overall": dict(zip(taxonomy.DIMENSION_NAMES, map(float, ceiling["overall"]))),
      "within_passage": dict(zip(taxonomy.DIMENSION_NAMES,
                                 map(float, ceiling["within_passage"]))),
  })
  _dump_json(root / FACTORS_FILE, {
      c.key: {**dataclasses.asdict(c.factors), "minor": c.minor} for c in clips})
  return len(clips)


def _write_maestro(root: pathlib.Path, size: CorpusSize, seed: int, soundfont: str | None,
                   workers: int) -> float:
  meta = _rng(seed, _MAESTRO_META)
  order = meta.permutation(size.maestro_compositions)
  n_eval = max(1, round(0.15 * size.maestro_compositions))
  split_of = {}
  for rank, c in enumerate(order):  # whole compositions per split, as in MAESTRO
    split_of[int(c)] = ("test" if rank < n_eval else "validation" if rank < 2 * n_eval
                        else "train")
  rows, midis = [], []
  for c in range(size.maestro_compositions):
    piece = composition.compose(_rng(seed, _MAESTRO_PIECE, c), size.maestro_bars)
    composer = f"{_FIRST_NAMES[c % 6]} {_COMPOSERS[(c + 3) % 6]}"
    mode = "minor" if piece.minor else "major"
    title = f"{_TITLES[c % 6]} in {_NOTE_NAMES[piece.tonic]} {mode}, Op. {20 + c}"
    for r in range(size.maestro_renditions):
      index = c * size.maestro_renditions + r
      rng = _rng(seed, _MAESTRO_RENDITION, index)
      midi = performance.perform(piece.notes, beats_per_bar=piece.beats_per_bar,
                                 tempo_bpm=piece.tempo_bpm,
                                 factors=performance.draw_factors(rng), rng=rng)
      year = int(meta.integers(2004, 2019))
      name = f"{year}/MIDI-Generated_{c:02d}_R{r + 1}_{year}_wav--{index + 1}"
      rows.append(dict(canonical_composer=composer, canonical_title=title,
                       split=split_of[c], year=year, midi_filename=f"{name}.midi",
                       audio_filename=f"{name}.wav"))
      midis.append(render.midi_to_bytes(midi))

  names = [row["midi_filename"] for row in rows]
  fonts = itertools.repeat(soundfont)
  if workers > 1:
    with process_pool.spawning(workers) as pool:
      wavs = list(pool.map(_synthesize, midis, names, fonts))
  else:
    wavs = list(map(_synthesize, midis, names, fonts))
  for row, midi, wav in zip(rows, midis, wavs):
    (root / row["midi_filename"]).parent.mkdir(parents=True, exist_ok=True)
    (root / row["midi_filename"]).write_bytes(midi)
    (root / row["audio_filename"]).write_bytes(wav)
    row["duration"] = round(soundfile.info(io.BytesIO(wav)).duration, 6)

  with (root / maestro.CSV_FILE).open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=maestro.COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  _dump_json(root / maestro.JSON_FILE,
             {col: {str(i): row[col] for i, row in enumerate(rows)} for col in maestro.COLUMNS})
  return sum(row["duration"] for row in rows)


def _synthesize(midi: bytes, name: str, soundfont: str | None) -> bytes:
  return render.synthesize(midi, render.load_soundfont(soundfont), name=name)


PARTS = ("percepiano", "maestro")


def corpus_manifest(size: str, seed: int, soundfont: str | None,
                    parts: tuple[str, ...] = PARTS) -> dict:
  """What `corpus.json` records; a corpus is reusable only for an equal manifest."""
  return {"generator": "pipelines.corpus.make_corpus", "size": size, "seed": seed,
          "parts": sorted(parts), "soundfont_sha256": render.soundfont_sha256(soundfont)}


def make_corpus(output_dir: str | os.PathLike, size: str, seed: int,
                soundfont: str | None = None, workers: int = 1,
                parts: tuple[str, ...] = PARTS) -> dict:
  """Writes the corpora under `output_dir` (which must be absent or empty).

  `parts` selects which of the two to write; each part's files do not depend
  on whether the other is written (separate random streams).
  """
  if size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
  unknown = set(parts) - set(PARTS)
  if unknown or not parts:
    raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
  out = pathlib.Path(output_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise FileExistsError(f"{out} exists and is not empty; refusing to overwrite it")
  out.parent.mkdir(parents=True, exist_ok=True)
  partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
  try:
    clips = hours = 0
    if "percepiano" in parts:
      clips = _write_percepiano(partial / "percepiano", SIZES[size], seed)
    if "maestro" in parts:
      hours = _write_maestro(partial / "maestro-v3.0.0", SIZES[size], seed, soundfont,
                             workers) / 3600
    _dump_json(partial / MANIFEST, corpus_manifest(size, seed, soundfont, parts))
    if out.exists():
      out.rmdir()
    partial.rename(out)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return {"output_dir": str(out), "percepiano_clips": clips, "maestro_hours": hours}


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string("output_dir", None, "Where to write (absent or empty).", required=True)
  flags.DEFINE_enum("size", "demo", sorted(SIZES), "Corpus size.")
  flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
  flags.DEFINE_string("soundfont", None, "SoundFont (.sf2) for the MAESTRO audio.")
  flags.DEFINE_multi_enum("parts", list(PARTS), PARTS, "Which corpora to write.")
  flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1),
                       "Processes rendering MAESTRO audio.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  summary = make_corpus(f.output_dir, f.size, f.seed, f.soundfont, f.workers, tuple(f.parts))
  logging.info("corpus written: %s", summary)
  print(f"Wrote {summary['percepiano_clips']} rated PercePiano-layout clips and "
        f"{summary['maestro_hours']:.2f} h of MAESTRO-layout audio to {summary['output_dir']}")


def cli() -> None:
  """Console entry point (`ppt-make-corpus`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
