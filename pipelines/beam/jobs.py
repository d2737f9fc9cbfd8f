"""What every preprocessing job shares: its common flags, the augmentation config, the run.

Each job is its own module with its flags and entry point:

  python -m pipelines.beam.percepiano_job --percepiano_dir D [--audio_dir A] --output_dir O [...]
  python -m pipelines.beam.maestro_job --maestro_dir D --output_dir O [--from_midi] [...]
  python -m pipelines.beam.augment_job --input_dir O --output_dir O2 --seed S [--variants K] [...]

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

from pipelines import entry_point
from pipelines.audio import render, windowing
from pipelines.beam import augment_presets, output_lock, preprocess
from pipelines.shards import layout

FLAGS = flags.FLAGS
AUGMENT_OPS = ("time_stretch", "pitch_shift", "noise")
_AUGMENT_CONFIG = pathlib.Path(__file__).with_name("augment_presets.py")


def define_common(augment_preset: str) -> None:
  flags.DEFINE_string("output_dir", None, "Where the shards go (must not exist).", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")
  flags.DEFINE_float("window_s", 10.24, "Window length in seconds (AST: 10.24 = 1024 frames).")
  flags.DEFINE_float("hop_s", 10.24, "Hop between window starts in seconds.")
  flags.DEFINE_float("silence_db", windowing.WindowConfig.silence_db,
                     "Windows whose loudest frame is below this are near-silent.")
  flags.DEFINE_multi_enum("format", ["array_record"], layout.FORMATS,
                          "Shard formats (repeat for both).")
  flags.DEFINE_float("target_shard_mb", 256.0, "Target shard size in MiB.")
  flags.DEFINE_float("max_failure_fraction", 0.01,
                     "Fail the job when more recordings than this are dead-lettered.")
  flags.DEFINE_string("soundfont", None, "SoundFont for MIDI sources; default TimGM6mb.")
  flags.DEFINE_list("soundfonts", [], "Several SoundFonts for MIDI sources (`default`: the "
                    "bundled TimGM6mb): each recording's render picks one by the augmentation "
                    "seed; every record names its SoundFont's SHA-256.")
  flags.DEFINE_multi_enum("augment", None, AUGMENT_OPS,
                          "Operations to apply (repeatable); overrides the config's `enabled`.")
  flags.DEFINE_integer("variants", None,
                       "Augmented copies per recording; overrides augment_config.variants.")
  flags.DEFINE_bool("write_audio", True,
                    "Also store the clean 16 kHz audio so `pipelines.beam.augment_job` can regenerate "
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


def _soundfonts() -> tuple[str | None, ...]:
  """--soundfonts (`default` -> None, the bundled one), else --soundfont (None: default)."""
  if FLAGS.soundfonts and FLAGS.soundfont:
    raise app.UsageError("give --soundfont or --soundfonts, not both")
  if not FLAGS.soundfonts:
    return (FLAGS.soundfont,)
  fonts = tuple(None if f == "default" else f for f in FLAGS.soundfonts)
  if len(set(fonts)) != len(fonts):
    raise app.UsageError(f"--soundfonts names a SoundFont twice: {FLAGS.soundfonts}")
  return fonts


def run(dataset: str, sources: list[preprocess.Source], beam_args: list[str], *,
         filter_silent: bool, job_flags: list[str], source_checksums: dict, split_info: dict,
         first_variant: int = 0, write_audio: bool | None = None,
         augment: ml_collections.ConfigDict | None = None) -> None:
  augment = augment or augment_config()
  if augment.domain == "midi" and any(s.midi_path is None for s in sources):
    raise app.UsageError("--augment_config.domain=midi needs MIDI sources for every recording")
  soundfonts = _soundfonts()
  if any(s.midi_path for s in sources):
    # Checked before any work: a missing SoundFont would dead-letter every recording.
    for font in soundfonts:
      try:
        render.load_soundfont(font)
      except (OSError, ValueError) as e:
        sys.exit(f"error: --soundfont{'s' if FLAGS.soundfonts else ''}: {e}")
  try:
    metadata = preprocess.run(
        sources,
        dict(dataset=dataset, augment=augment, window=_window_config(),
             filter_silent=filter_silent, soundfonts=soundfonts,
             formats=tuple(FLAGS.format), target_shard_mb=FLAGS.target_shard_mb,
             write_audio=FLAGS.write_audio if write_audio is None else write_audio,
             first_variant=first_variant),
        output_dir=FLAGS.output_dir, overwrite=FLAGS.overwrite, beam_args=beam_args,
        job_config=_job_flags(job_flags, augment), source_checksums=source_checksums,
        splits=split_info, max_failure_fraction=FLAGS.max_failure_fraction)
  except (FileExistsError, output_lock.OutputLockedError) as e:
    # Refusals before any work: one line, not a traceback.
    sys.exit(f"error: {e}")
  except preprocess.AccountingError as e:
    # Too many dead letters (or counts that do not add up): the message says which and where
    # the partial output was kept; the traceback would only point into finalize.
    sys.exit(f"error: {e}")
  c = metadata["counts"]
  print(f"{dataset}: listed {c['listed']} = written {c['written']} + filtered {c['filtered']} "
        f"+ dead-lettered {c['dead_lettered']}; {c['windows_written']} windows written, "
        f"{c['windows_filtered']} near-silent windows filtered; "
        f"{len(metadata['shards'])} shard files in {FLAGS.output_dir} "
        f"({metadata['wall_seconds']:.0f} s)")


COMMON_FLAGS = ["output_dir", "overwrite", "window_s", "hop_s", "silence_db", "format",
           "target_shard_mb", "max_failure_fraction", "soundfont", "soundfonts", "write_audio",
           "augment",
           "variants"]


def run_main(define, main, doc: str) -> None:
  """absl entry point that hands flags it does not know to Beam; `doc` is what --help prints."""
  # Beam's local runner relays every worker's INFO lines; keep the job's own output readable.
  std_logging.getLogger("apache_beam").setLevel(std_logging.WARNING)
  entry_point.run(doc, define, main, flags_parser=lambda argv: FLAGS(argv, known_only=True))

