"""`python -m pipelines.beam.percepiano_job`: PercePiano release -> labelled log-mel window shards.

  python -m pipelines.beam.percepiano_job --percepiano_dir D [--audio_dir A] --output_dir O \
      [--split piece|performer] [--variants K --augment noise] [--format array_record ...]

Renders the release's performance MIDI (or reads `<key>.wav` from --audio_dir), follows the
piece or performer split (both are stored in the metadata), and writes the shards; flags it does
not define go to Beam (see jobs.py).
"""

from __future__ import annotations

import sys

from absl import flags

from pipelines.beam import jobs, preprocess
from pipelines.datasets import percepiano, splits

FLAGS = flags.FLAGS


def percepiano_sources(release: percepiano.Release, audio_dir: str | None,
                       split: splits.Split) -> list[preprocess.Source]:
  """One source per labelled key; split "test" or "train" with its CV fold."""
  assignment = split.assignment()
  sources = []
  for p in release.performances:
    side = assignment[p.key.text]
    audio_path = f"{audio_dir.rstrip('/')}/{p.key.text}.wav" if audio_dir else None
    sources.append(preprocess.Source(
        key=p.key.text,
        split="test" if side == "test" else "train",
        fold=-1 if side == "test" else int(side.removeprefix("fold")),
        audio_path=audio_path,
        midi_path=None if audio_dir else (str(p.midi_path) if p.midi_path else None),
        labels=tuple(float(v) for v in p.labels),
        meta=(("performer", p.key.performer), ("performer_id", p.performer_id),
              ("passage", p.key.passage), ("movement", p.key.movement)),
    ))
  return sources


def main(argv: list[str]) -> None:
  try:
    release = percepiano.read_release(FLAGS.percepiano_dir)
  except (OSError, percepiano.PercePianoError) as e:
    # The reader's messages name the file and every bad key; a traceback adds nothing.
    sys.exit(f"error: {e}")
  try:
    piece = splits.piece_split(release.performances, test_fraction=FLAGS.test_fraction,
                               num_folds=FLAGS.num_folds, seed=FLAGS.split_seed)
    performer = splits.performer_split(release.performances, num_folds=FLAGS.num_folds,
                                       test_performers=FLAGS.test_performers,
                                       seed=FLAGS.split_seed)
  except ValueError as e:  # too few pieces or performers for the asked test set and folds
    sys.exit(f"error: cannot split {FLAGS.percepiano_dir}: {e} (see --test_fraction, "
             "--num_folds, --test_performers)")
  chosen = piece if FLAGS.split == "piece" else performer
  sources = percepiano_sources(release, FLAGS.audio_dir, chosen)
  split_info = {"shards_follow": FLAGS.split, "piece": piece.assignment(),
                "performer": performer.assignment(),
                "keys_without_midi": list(release.keys_without_midi)}
  jobs.run("percepiano", sources, argv[1:], filter_silent=False,
       job_flags=jobs.COMMON_FLAGS + ["percepiano_dir", "audio_dir", "split", "split_seed",
                            "test_fraction", "num_folds", "test_performers"],
       source_checksums={}, split_info=split_info)


def define_flags() -> None:
  jobs.define_common("percepiano")
  flags.DEFINE_string("percepiano_dir", None, "Root of a PercePiano release.", required=True)
  flags.DEFINE_string("audio_dir", None,
                      "Folder of <key>.wav recordings; default: render the release's MIDI.")
  flags.DEFINE_enum("split", "piece", ["piece", "performer"],
                    "Which split the shards follow (both are stored in the metadata).")
  flags.DEFINE_integer("split_seed", 0, "Seed of the split.")
  flags.DEFINE_float("test_fraction", 0.15, "Piece split: held-out share of the clips.")
  flags.DEFINE_integer("num_folds", 4, "Cross-validation folds of both splits.")
  flags.DEFINE_list("test_performers", list(splits.PAPER_TEST_PERFORMERS),
                    "Performer split: the test performers (key tokens).")


def cli() -> None:
  """Console entry point (`ppt-shards-percepiano`)."""
  jobs.run_main(define_flags, main, __doc__)


if __name__ == "__main__":
  cli()
