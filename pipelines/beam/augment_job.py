"""`python -m pipelines.beam.augment_job`: regenerate augmented shards from stored clean audio.

  python -m pipelines.beam.augment_job --input_dir O --output_dir O2 --seed S --variants K \
      [--augment noise --augment pitch_shift] [beam options]

Reads the `*_audio-*` shards and metadata that `pipelines.beam.percepiano_job` or
`pipelines.beam.maestro_job` wrote into O, and writes only the augmented window shards
(variants 1..K) to O2, without touching the original sources. Flags it does not
define go to Beam (see jobs.py).
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from pipelines.beam import jobs, preprocess, writer
from pipelines.shards import layout, metadata, records

FLAGS = flags.FLAGS


def audio_record_sources(input_dir: str
                         ) -> tuple[list[preprocess.Source], metadata.ShardMetadata]:
  """Sources from the clean-audio shards an earlier job stored, and that job's metadata."""
  root = pathlib.Path(input_dir)
  stored = metadata.read(root)
  sources = []
  for row in stored.shard_files("audio"):
    for data in layout.read_array_record(str(root / row.file)):
      header, _ = records.decode(data)
      meta = tuple(sorted((k, v) for k, v in header.items() if k not in {
          "key", "split", "fold", "variant", "augmentation", "kind", "sample_rate",
          "num_samples", "labels"}))
      labels = header.get("labels")
      sources.append(preprocess.Source(
          key=header["key"], split=header["split"], fold=header["fold"], audio_record=data,
          labels=tuple(labels) if labels is not None else None, meta=meta))
  if not sources:
    raise app.UsageError(f"{input_dir} holds no audio shards (was it written with "
                         "--nowrite_audio?)")
  return sources, stored


def main(argv: list[str]) -> None:
  sources, stored = audio_record_sources(FLAGS.input_dir)
  config = jobs.augment_config(stored.dataset)
  if config.variants < 1:
    raise app.UsageError("--variants must be >= 1: the clean windows are already written")
  if config.domain != "audio":
    raise app.UsageError("pipelines.beam.augment_job works on stored audio: domain must be 'audio'")
  jobs.run(stored.dataset, sources, argv[1:], filter_silent=stored.dataset == "maestro",
       job_flags=jobs.COMMON_FLAGS + ["input_dir", "seed"],
       source_checksums={"input_metadata": writer.file_sha256(
           str(pathlib.Path(FLAGS.input_dir) / layout.METADATA))},
       split_info=stored.splits, first_variant=1, write_audio=False, augment=config)


def define_flags() -> None:
  # Without --augment_config the preset follows the input's dataset (PercePiano:
  # label-preserving noise only; MAESTRO: everything).
  jobs.define_common("percepiano")
  flags.DEFINE_string("input_dir", None, "Output of pipelines.beam.percepiano_job or maestro_job.",
                      required=True)
  flags.DEFINE_integer("seed", 0, "Augmentation seed.")


def cli() -> None:
  """Console entry point (`ppt-shards-augment`)."""
  jobs.run_main(define_flags, main, __doc__)


if __name__ == "__main__":
  cli()
