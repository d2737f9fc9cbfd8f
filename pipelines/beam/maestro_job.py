"""`python -m pipelines.beam.maestro_job`: MAESTRO v3 or ASAP -> unlabelled log-mel window shards.

  python -m pipelines.beam.maestro_job --maestro_dir D --output_dir O [--from_midi] [...]

Reads a MAESTRO v3 tree (its WAVs, or its MIDI rendered with --from_midi) or an ASAP tree (MIDI
rendered on the fly, validation held out by composition) for SSAST pre-training; flags it does
not define go to Beam (see jobs.py).

`--exclude_overlap_with=DIR[,DIR]` (e.g. the PercePiano release): every composition that holds
an excerpt of a MIDI file under DIR, note for note (`pipelines.datasets.overlap`), is left out
of every split, so pre-training never hears a copy of a rated performance, nor other
performances of a composition that holds one. (Other performances of a rated piece under a
composition with no copy, e.g. another folder or title for it, stay: it finds copies, not
music.) What was left out is recorded in the shards' metadata (`splits.excluded_overlap`)
and printed.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import flags

from pipelines import process_pool
from pipelines.beam import jobs, preprocess
from pipelines.datasets import maestro, overlap, splits

FLAGS = flags.FLAGS
# MIDI files from which the overlap check reads in spawned processes (a pool takes seconds
# to start; reading ASAP and PercePiano takes ~80 s in one process).
POOL_FROM = 64


def maestro_sources(root: str, from_midi: bool, split_seed: int,
                    validation_fraction: float = 0.1) -> tuple[list[preprocess.Source], dict]:
  """Sources from a MAESTRO v3 tree, or from an ASAP tree (MIDI, split by composition)."""
  base = pathlib.Path(root)
  if (base / maestro.ASAP_METADATA).is_file() and not (base / maestro.CSV_FILE).is_file():
    index = maestro.read_asap(base)
    folder = {p.midi_filename: p.folder for p in index.performances}
    split = splits.grouped_split("asap", folder, folder.__getitem__, num_folds=1,
                                 seed=split_seed, test_fraction=validation_fraction)
    held_out = set(split.test)
    sources = [preprocess.Source(
        key=p.midi_filename.rsplit(".", 1)[0],
        split="validation" if p.midi_filename in held_out else "train",
        midi_path=str(base / p.midi_filename),
        meta=(("composer", p.composer), ("title", p.title), ("composition", p.folder),
              ("maestro_filename", p.maestro_midi_filename)))
               for p in index.performances]
    return sources, {"layout": "asap", "split_seed": split_seed,
                     "validation_fraction": validation_fraction}
  index = maestro.read_maestro(base)
  sources = [preprocess.Source(
      key=p.audio_filename.rsplit(".", 1)[0],
      split=p.split,
      audio_path=None if from_midi else str(base / p.audio_filename),
      midi_path=str(base / p.midi_filename) if from_midi else None,
      # MAESTRO's MIDI is aligned to its audio (~3 ms): the WAVs' note targets. A WAV whose
      # MIDI is missing keeps its audio, without note targets.
      aligned_midi_path=(str(base / p.midi_filename) if not from_midi and
                         (base / p.midi_filename).is_file() else None),
      meta=(("composer", p.canonical_composer), ("title", p.canonical_title),
            ("year", p.year)))
             for p in index.performances]
  return sources, {"layout": "maestro-v3", "missing_files": list(index.missing_files)}


def only_splits(sources: list[preprocess.Source], names: list[str]) -> list[preprocess.Source]:
  """The sources of the named splits (all with none named): a held-out split rendered with
  another SoundFont, say, without rendering the training split again."""
  if not names:
    return sources
  unknown = sorted(set(names) - {s.split for s in sources})
  if unknown:
    raise ValueError(f"--only_splits names splits the tree does not have: {unknown}; it has "
                     f"{sorted({s.split for s in sources})}")
  return [s for s in sources if s.split in names]


def _composition(source: preprocess.Source) -> str:
  meta = dict(source.meta)
  # ASAP names its compositions (folders); MAESTRO by composer and canonical title.
  return meta.get("composition") or f"{meta.get('composer')}: {meta.get('title')}"


def exclude_overlap(sources: list[preprocess.Source], rated_dirs: list[str], workers: int = 1
                    ) -> tuple[list[preprocess.Source], dict]:
  """The sources without every composition that holds an excerpt of a MIDI file under
  `rated_dirs`, and what was left out. A source with no MIDI to compare (a MAESTRO WAV whose
  MIDI is missing) is kept and counted as unchecked. Refused (ValueError): no readable MIDI
  under `rated_dirs`, or nothing left of a split (or of the corpus)."""
  if not rated_dirs:
    return sources, {}
  rated_paths = [p for d in rated_dirs for p in overlap.midi_files(d)]
  if not rated_paths:
    raise ValueError(f"--exclude_overlap_with: no MIDI files under {', '.join(rated_dirs)}")
  midi_of = {s.key: s.midi_path or s.aligned_midi_path for s in sources}
  corpus_paths = sorted({p for p in midi_of.values() if p})
  if workers > 1 and len(rated_paths) + len(corpus_paths) >= POOL_FROM:
    with process_pool.spawning(workers) as pool:
      mapper = lambda f, xs: pool.map(f, xs, chunksize=16)
      (rated, rated_broken), (corpus, corpus_broken) = (
          overlap.read_all(rated_paths, mapper), overlap.read_all(corpus_paths, mapper))
  else:
    rated, rated_broken = overlap.read_all(rated_paths)
    corpus, corpus_broken = overlap.read_all(corpus_paths)
  if not rated:
    raise ValueError(f"--exclude_overlap_with: none of the {len(rated_paths)} MIDI files under "
                     f"{', '.join(rated_dirs)} can be read, e.g. {rated_broken[0]}")
  found = overlap.contained(rated, corpus)
  holding = {source for sources_of in found.values() for source in sources_of}
  excluded = sorted({_composition(s) for s in sources if midi_of[s.key] in holding})
  kept = [s for s in sources if _composition(s) not in excluded]
  emptied = sorted({s.split for s in sources} - {s.split for s in kept})
  if emptied:
    raise ValueError(f"--exclude_overlap_with leaves nothing of split(s) {emptied}: the "
                     f"compositions {excluded} hold rated performances")
  return kept, {
      "rated_dirs": [str(pathlib.Path(d).absolute()) for d in rated_dirs],
      # Every MIDI file under them (a release's score MIDI too), and how many were found.
      "midi_files": len(rated_paths), "found": len(found),
      "compositions": excluded, "performances_left_out": len(sources) - len(kept),
      # An unreadable rated file cannot be looked for; an unreadable source will be a dead
      # letter of the job itself. Both are named, never passed over in silence.
      "rated_unreadable": rated_broken, "sources_unreadable": corpus_broken,
      "sources_unchecked": sorted(s.key for s in sources if not midi_of[s.key])}


def main(argv: list[str]) -> None:
  try:
    sources, split_info = maestro_sources(FLAGS.maestro_dir, FLAGS.from_midi,
                                          FLAGS.split_seed, FLAGS.validation_fraction)
    # After the split, so the compositions kept keep their splits; before --only_splits, so
    # a job over one split leaves out what the whole corpus's job does (a MAESTRO
    # composition can straddle splits).
    sources, excluded = exclude_overlap(sources, FLAGS.exclude_overlap_with,
                                        min(os.cpu_count() or 1, 8))
    sources = only_splits(sources, FLAGS.only_splits)
  except (OSError, ValueError) as e:
    # A missing or malformed manifest (a row escaping the root, say): the reader's message
    # names the file and row.
    sys.exit(f"error: {e}")
  if excluded:
    print(f"left out {len(excluded['compositions'])} compositions "
          f"({excluded['performances_left_out']} performances) holding {excluded['found']} "
          f"of the {excluded['midi_files']} MIDI files under {excluded['rated_dirs']}: "
          f"{excluded['compositions']}"
          + "".join(f"; {len(excluded[k])} {k.replace('_', ' ')}" for k in
                    ("rated_unreadable", "sources_unreadable", "sources_unchecked")
                    if excluded[k]))
  jobs.run("maestro", sources, argv[1:], filter_silent=True,
           job_flags=jobs.COMMON_FLAGS + ["maestro_dir", "from_midi", "split_seed",
                                          "validation_fraction", "only_splits",
                                          "exclude_overlap_with"],
           source_checksums={},
           split_info=dict(split_info, only_splits=list(FLAGS.only_splits),
                           **({"excluded_overlap": excluded} if excluded else {})))


def define_flags() -> None:
  jobs.define_common("maestro")
  flags.DEFINE_string("maestro_dir", None,
                      "A MAESTRO v3 tree (maestro-v3.0.0.csv) or an ASAP tree (metadata.csv).",
                      required=True)
  flags.DEFINE_bool("from_midi", False, "Render the MAESTRO MIDI instead of reading the WAVs.")
  flags.DEFINE_integer("split_seed", 0, "Seed of the ASAP validation compositions.")
  flags.DEFINE_float("validation_fraction", 0.1,
                     "ASAP has no official split: share of performances, in whole "
                     "compositions, held out for validation.")
  flags.DEFINE_list("only_splits", [], "Process only these splits (default: every split).")
  flags.DEFINE_list("exclude_overlap_with", [],
                    "Directories of rated MIDI (e.g. the PercePiano release): every composition "
                    "holding an excerpt of one is left out of every split.")


def cli() -> None:
  """Console entry point (`ppt-shards-maestro`)."""
  jobs.run_main(define_flags, main, __doc__)


if __name__ == "__main__":
  cli()
