"""`python -m pipelines.beam.maestro_job`: MAESTRO v3 or ASAP -> unlabelled log-mel window shards.

  python -m pipelines.beam.maestro_job --maestro_dir D --output_dir O [--from_midi] [...]

Reads a MAESTRO v3 tree (its WAVs, or its MIDI rendered with --from_midi) or an ASAP tree (MIDI
rendered on the fly, validation held out by composition) for SSAST pre-training; flags it does
not define go to Beam (see jobs.py).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from pipelines.beam import jobs, preprocess
from pipelines.datasets import maestro, splits

FLAGS = flags.FLAGS


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


def main(argv: list[str]) -> None:
  try:
    sources, split_info = maestro_sources(FLAGS.maestro_dir, FLAGS.from_midi,
                                          FLAGS.split_seed, FLAGS.validation_fraction)
    sources = only_splits(sources, FLAGS.only_splits)
  except (OSError, ValueError) as e:
    # A missing or malformed manifest (a row escaping the root, say): the reader's message
    # names the file and row.
    sys.exit(f"error: {e}")
  jobs.run("maestro", sources, argv[1:], filter_silent=True,
           job_flags=jobs.COMMON_FLAGS + ["maestro_dir", "from_midi", "split_seed",
                                          "validation_fraction", "only_splits"],
           source_checksums={}, split_info=dict(split_info, only_splits=list(FLAGS.only_splits)))


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


def cli() -> None:
  """Console entry point (`ppt-shards-maestro`)."""
  jobs.run_main(define_flags, main, __doc__)


if __name__ == "__main__":
  cli()
