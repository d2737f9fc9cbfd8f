"""Command lines of the preprocessing jobs (absl flags; unknown flags go to Beam).

  python -m pipelines.percepiano --percepiano_dir D [--audio_dir A] --output_dir O [...]
  python -m pipelines.maestro --maestro_dir D --output_dir O [--from_midi] [...]
  python -m pipelines.augment --input_dir O --output_dir O2 --seed S [--variants K] [...]

Every other `--flag` is a standard Beam pipeline option (`--runner`,
`--direct_num_workers`, `--project`, `--temp_location`, `--flink_master`, ...),
passed through unchanged. Without `--runner` the job runs locally on Beam's
classic runner with one worker process per core (see preprocess.py).
"""

from __future__ import annotations

import json
import logging as std_logging
import pathlib
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from pipelines import (maestro, percepiano, preprocess, records, shard_layout, shards, splits,
                       windowing)
from pipelines.configs import augment as augment_presets

FLAGS = flags.FLAGS
AUGMENT_OPS = ("time_stretch", "pitch_shift", "noise")
_AUGMENT_CONFIG = pathlib.Path(__file__).parent / "configs" / "augment.py"


def _define_common(augment_preset: str) -> None:
  flags.DEFINE_string("output_dir", None, "Where the shards go (must not exist).", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
  flags.DEFINE_float("window_s", 10.24, "Window length in seconds (AST: 10.24 = 1024 frames).")
  flags.DEFINE_float("hop_s", 10.24, "Hop between window starts in seconds.")
  flags.DEFINE_float("silence_db", windowing.WindowConfig.silence_db,
                     "Windows whose loudest frame is below this are near-silent.")
  flags.DEFINE_multi_enum("format", ["array_record"], shard_layout.FORMATS,
                          "Shard formats (repeat for both).")
  flags.DEFINE_float("target_shard_mb", 256.0, "Target shard size in MiB.")
  flags.DEFINE_float("max_failure_fraction", 0.01,
                     "Fail the job when more recordings than this are dead-lettered.")
  flags.DEFINE_string("soundfont", None, "SoundFont for MIDI sources; default TimGM6mb.")
  flags.DEFINE_multi_enum("augment", None, AUGMENT_OPS,
                          "Operations to apply (repeatable); overrides the config's `enabled`.")
  flags.DEFINE_integer("variants", None,
                       "Augmented copies per recording; overrides augment_config.variants.")
  flags.DEFINE_bool("write_audio", True,
                    "Also store the clean 16 kHz audio so `pipelines.augment` can regenerate "
                    "augmented shards without the sources.")
  config_flags.DEFINE_config_file(
      "augment_config", f"{_AUGMENT_CONFIG}:{augment_preset}",
      "Augmentation config (ranges, label effects, --augment_config.variants=K).",
      lock_config=True)


def _window_config() -> windowing.WindowConfig:
  try:
    return windowing.WindowConfig.from_seconds(FLAGS.window_s, FLAGS.hop_s, FLAGS.silence_db)
  except ValueError as e:
    raise app.UsageError(f"--window_s/--hop_s: {e}") from None


def _job_flags(names: list[str], augment: ml_collections.ConfigDict) -> dict:
  values = {n: FLAGS[n].value for n in names}
  values["augment_config"] = augment.to_dict()
  return json.loads(json.dumps(values, default=list))


def augment_config(dataset: str | None = None) -> ml_collections.ConfigDict:
  """The augmentation config with --augment/--variants/--seed applied.

  Without an explicit --augment_config, `dataset` (when given) picks its preset.
  """
  config = FLAGS.augment_config
  if dataset is not None and not FLAGS["augment_config"].present:
    config = augment_presets.get_config(dataset)
  with config.unlocked():
    if FLAGS.augment is not None:
      for op in AUGMENT_OPS:
        config[op].enabled = op in FLAGS.augment
    if FLAGS.variants is not None:
      config.variants = FLAGS.variants
    if "seed" in FLAGS and FLAGS["seed"].present:
      config.seed = FLAGS.seed
  return config


def _run(dataset: str, sources: list[preprocess.Source], beam_args: list[str], *,
         filter_silent: bool, job_flags: list[str], source_checksums: dict, split_info: dict,
         first_variant: int = 0, write_audio: bool | None = None,
         augment: ml_collections.ConfigDict | None = None) -> None:
  augment = augment or augment_config()
  if augment.domain == "midi" and any(s.midi_path is None for s in sources):
    raise app.UsageError("--augment_config.domain=midi needs MIDI sources for every recording")
  metadata = preprocess.run(
      sources,
      dict(dataset=dataset, augment=augment, window=_window_config(),
           filter_silent=filter_silent, soundfont=FLAGS.soundfont,
           formats=tuple(FLAGS.format), target_shard_mb=FLAGS.target_shard_mb,
           write_audio=FLAGS.write_audio if write_audio is None else write_audio,
           first_variant=first_variant),
      output_dir=FLAGS.output_dir, overwrite=FLAGS.overwrite, beam_args=beam_args,
      job_config=_job_flags(job_flags, augment), source_checksums=source_checksums,
      splits=split_info, max_failure_fraction=FLAGS.max_failure_fraction)
  c = metadata["counts"]
  print(f"{dataset}: listed {c['listed']} = written {c['written']} + filtered {c['filtered']} "
        f"+ dead-lettered {c['dead_lettered']}; {c['windows_written']} windows written, "
        f"{c['windows_filtered']} near-silent windows filtered; "
        f"{len(metadata['shards'])} shard files in {FLAGS.output_dir} "
        f"({metadata['wall_seconds']:.0f} s)")


_COMMON = ["output_dir", "overwrite", "window_s", "hop_s", "silence_db", "format",
           "target_shard_mb", "max_failure_fraction", "soundfont", "write_audio", "augment",
           "variants"]


# ----------------------------------------------------------------------------- PercePiano

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


def main_percepiano(argv: list[str]) -> None:
  release = percepiano.read_release(FLAGS.percepiano_dir)
  piece = splits.piece_split(release.performances, test_fraction=FLAGS.test_fraction,
                             num_folds=FLAGS.num_folds, seed=FLAGS.split_seed)
  performer = splits.performer_split(release.performances, num_folds=FLAGS.num_folds,
                                     test_performers=FLAGS.test_performers,
                                     seed=FLAGS.split_seed)
  chosen = piece if FLAGS.split == "piece" else performer
  sources = percepiano_sources(release, FLAGS.audio_dir, chosen)
  split_info = {"shards_follow": FLAGS.split, "piece": piece.assignment(),
                "performer": performer.assignment(),
                "keys_without_midi": list(release.keys_without_midi)}
  _run("percepiano", sources, argv[1:], filter_silent=False,
       job_flags=_COMMON + ["percepiano_dir", "audio_dir", "split", "split_seed",
                            "test_fraction", "num_folds", "test_performers"],
       source_checksums={}, split_info=split_info)


def define_percepiano_flags() -> None:
  _define_common("percepiano")
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


# ----------------------------------------------------------------------------- MAESTRO

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
      meta=(("composer", p.canonical_composer), ("title", p.canonical_title),
            ("year", p.year)))
             for p in index.performances]
  return sources, {"layout": "maestro-v3", "missing_files": list(index.missing_files)}


def main_maestro(argv: list[str]) -> None:
  sources, split_info = maestro_sources(FLAGS.maestro_dir, FLAGS.from_midi, FLAGS.split_seed,
                                        FLAGS.validation_fraction)
  _run("maestro", sources, argv[1:], filter_silent=True,
       job_flags=_COMMON + ["maestro_dir", "from_midi", "split_seed", "validation_fraction"],
       source_checksums={}, split_info=split_info)


def define_maestro_flags() -> None:
  _define_common("maestro")
  flags.DEFINE_string("maestro_dir", None,
                      "A MAESTRO v3 tree (maestro-v3.0.0.csv) or an ASAP tree (metadata.csv).",
                      required=True)
  flags.DEFINE_bool("from_midi", False, "Render the MAESTRO MIDI instead of reading the WAVs.")
  flags.DEFINE_integer("split_seed", 0, "Seed of the ASAP validation compositions.")
  flags.DEFINE_float("validation_fraction", 0.1,
                     "ASAP has no official split: share of performances, in whole "
                     "compositions, held out for validation.")


# ----------------------------------------------------------------------------- augment

def audio_record_sources(input_dir: str) -> tuple[list[preprocess.Source], dict]:
  """Sources from the clean-audio shards an earlier job stored, and that job's metadata."""
  root = pathlib.Path(input_dir)
  metadata = json.loads((root / shard_layout.METADATA).read_text())
  sources = []
  for row in metadata["shards"]:
    if row["kind"] != "audio":
      continue
    for data in shard_layout.read_array_record(str(root / row["file"])):
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
  return sources, metadata


def main_augment(argv: list[str]) -> None:
  sources, metadata = audio_record_sources(FLAGS.input_dir)
  config = augment_config(metadata["dataset"])
  if config.variants < 1:
    raise app.UsageError("--variants must be >= 1: the clean windows are already written")
  if config.domain != "audio":
    raise app.UsageError("pipelines.augment works on stored audio: domain must be 'audio'")
  _run(metadata["dataset"], sources, argv[1:], filter_silent=metadata["dataset"] == "maestro",
       job_flags=_COMMON + ["input_dir", "seed"],
       source_checksums={"input_metadata": shards.file_sha256(
           str(pathlib.Path(FLAGS.input_dir) / shard_layout.METADATA))},
       split_info=metadata["splits"], first_variant=1, write_audio=False, augment=config)


def define_augment_flags() -> None:
  # Without --augment_config the preset follows the input's dataset (PercePiano:
  # label-preserving noise only; MAESTRO: everything).
  _define_common("percepiano")
  flags.DEFINE_string("input_dir", None, "Output of pipelines.percepiano/maestro.",
                      required=True)
  flags.DEFINE_integer("seed", 0, "Augmentation seed.")


def run_main(define, main) -> None:
  """absl entry point that hands flags it does not know to Beam."""
  # Beam's local runner relays every worker's INFO lines; keep the job's own output readable.
  std_logging.getLogger("apache_beam").setLevel(std_logging.WARNING)
  define()
  app.run(main, flags_parser=lambda argv: FLAGS(argv, known_only=True))


if __name__ == "__main__":
  sys.exit("run pipelines.percepiano, pipelines.maestro or pipelines.augment")
