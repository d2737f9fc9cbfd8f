"""The Beam preprocessing job shared by MAESTRO and PercePiano: recordings -> shards.

Graph (one `Source` per listed recording):

  Create(sources) -> ProcessRecording -+-> window spill descriptors -> WriteShards (ArrayRecord/TFRecord)
                                       +-> audio spill descriptors  -> WriteShards (for `pipelines.beam.augment_job`)
                                       +-> stats    -> CombineGlobally(MomentsFn) -> _stats.json
                                       +-> outcomes -> _outcomes.jsonl
                                       +-> dead letters -> dead_letters.jsonl

`ProcessRecording` loads or renders the audio, makes the clean and augmented
variants (and their note targets, where the recording has MIDI:
`pipelines.audio.notes`), computes log-mel, cuts windows and encodes records, then writes a
recording's records to one spill file and emits only a small descriptor; the
shard writers read the spills. Nothing is emitted before the recording has
fully succeeded, so a failure at any stage sends it to the dead-letter output
whole (key, stage, reason) and none of its windows reach a shard. After the
pipeline, `finalize` checks `listed = written + filtered + dead-lettered` and
that the shards hold exactly the windows the recordings reported, writes
`metadata.json` and renames the temporary directory into place; if a check
fails, or too many recordings were dead-lettered, the job exits non-zero and
the output stays under its `.partial` name (for inspection, until the next run of a
job on that output removes it).

Determinism: a recording's shard is a hash of its key, recordings inside a
shard are in key order, normalisation statistics are summed exactly
(`math.fsum`), and every augmentation draws from (seed, key, variant); so the
same flags give byte-identical shards whatever the runner's parallelism.

SoundFonts: MIDI sources render through `soundfonts` (None: the bundled TimGM6mb). With more
than one, each recording's clean render picks one from (augmentation seed, key), so its
audio-domain variants share that timbre, and each MIDI-domain variant (rendered afresh) picks
from (seed, key, variant); every window and audio record names its SoundFont's SHA-256
(`soundfont_sha256`), and the metadata lists the job's SoundFonts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
import time
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import ml_collections
import numpy as np
import pretty_midi
import threadpoolctl
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions,
                                                  WorkerOptions)

from pipelines import provenance
from pipelines.audio import augmentation, decode, features, frontend, notes, render, windowing
from pipelines.beam import output_lock, writer
from pipelines.shards import layout, records, tfds_info
from pipelines.shards.metadata import soundfont_label

SCHEMA_VERSION = records.VERSION
OUTCOMES = "_outcomes.jsonl"
DEAD_LETTERS = "dead_letters.jsonl"
STATS = "_stats.json"
SPILL = "_spill"  # per-recording record files, deleted when the shards are written


class AccountingError(RuntimeError):
  """The job's counts do not add up, or too many recordings failed."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One listed recording."""

  key: str  # unique within the dataset; names the recording in every output
  split: str  # "train", "validation", "test"
  fold: int = -1  # cross-validation fold inside "train" (-1: none)
  audio_path: str | None = None  # decode this file ...
  midi_path: str | None = None  # ... or render this MIDI ...
  audio_record: bytes | None = None  # ... or take the clean audio stored by an earlier run
  # MIDI aligned to `audio_path` (MAESTRO's 3 ms alignment): the note targets of a decoded
  # recording. A render's notes come from `midi_path`, a stored audio record's from it.
  aligned_midi_path: str | None = None
  labels: tuple[float, ...] | None = None
  meta: tuple[tuple[str, Any], ...] = ()  # extra header fields (performer, passage, ...)


@dataclasses.dataclass(frozen=True)
class JobConfig:
  dataset: str  # shard name prefix: "percepiano", "maestro"
  output_dir: str  # the temporary directory the pipeline writes into
  augment: ml_collections.ConfigDict
  window: windowing.WindowConfig = windowing.WindowConfig()
  filter_silent: bool = False  # drop near-silent windows (MAESTRO)
  soundfonts: tuple[str | None, ...] = (None,)  # None: the bundled TimGM6mb
  formats: tuple[str, ...] = ("array_record",)
  target_shard_mb: float = 256.0
  write_audio: bool = True
  stats_split: str = "train"
  first_variant: int = 0  # 1: augmented variants only (`pipelines.beam.augment_job`)


def choose_soundfont(soundfonts: Sequence[str | None], seed: int, key: str,
                    variant: int = 0) -> str | None:
  """The SoundFont a render of `key` uses: the only one, or one drawn from (seed, key,
  variant), the same on every run and worker."""
  if len(soundfonts) == 1:
    return soundfonts[0]
  rng = np.random.default_rng([seed, zlib.crc32(key.encode()), variant])
  return soundfonts[int(rng.integers(len(soundfonts)))]


def _header(source: Source, variant: int, params: dict) -> dict:
  return {"key": source.key, "split": source.split, "fold": source.fold, "variant": variant,
          "augmentation": params, **dict(source.meta)}


def _payload(targets: notes.Notes | None, start_s: float, duration_s: float):
  """A window's note targets as records.encode_window takes them (None: no MIDI)."""
  if targets is None:
    return None
  w = targets.window(start_s, duration_s)
  return w.notes, w.pedal, w.dropped


def _stored_notes(header: dict, arrays: dict) -> notes.Notes | None:
  """The note targets an audio record carries (None when it has none)."""
  if header["num_notes"] < 0:
    return None
  return notes.Notes(arrays["notes"], arrays["pedal"])


class ProcessRecording(beam.DoFn):
  """Source -> tagged outputs: "windows", "audio", "stats", "outcome", "dead"."""

  def __init__(self, config: JobConfig):
    self._config = config
    self._counters: dict[str, beam.metrics.metric.Metrics.DelegatingCounter] = {}

  def setup(self):
    # One worker process per core: BLAS must not start its own threads too
    # (2 processes x 2 BLAS threads measured 1.3x instead of 1.97x on 2 cores).
    threadpoolctl.threadpool_limits(1)

  def _count(self, name: str, n: int = 1) -> None:
    if name not in self._counters:
      self._counters[name] = beam.metrics.Metrics.counter("preprocess", name)
    self._counters[name].inc(n)

  def _spill_path(self, kind: str, key: str) -> str:
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return f"{self._config.output_dir}/{SPILL}/{kind}/{name}.bin"

  def _read(self, path: str) -> bytes:
    try:
      with FileSystems.open(path) as f:
        return f.read()
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: file not found") from None

  def _font(self, key: str, variant: int = 0) -> str | None:
    return choose_soundfont(self._config.soundfonts, self._config.augment.seed, key, variant)

  def _load(self, source: Source
            ) -> tuple[np.ndarray, notes.Notes | None, float, str, str, str | None]:
    """Returns (16 kHz mono samples, their note targets or None, seconds trimmed from the
    start, stage name, SHA-256 of the source bytes, SHA-256 of the SoundFont it was rendered
    with or None).

    Raises a typed error. The checksum is taken here, where the bytes are read
    anyway, so the metadata names exactly what each recording was made from.
    """
    if source.audio_record is not None:
      digest = hashlib.sha256(source.audio_record).hexdigest()
      header, arrays = records.decode(source.audio_record)
      return (arrays["samples"], _stored_notes(header, arrays), header.get("trim_start_s", 0.0),
              "decode_record", digest, header.get("soundfont_sha256"))
    path = source.audio_path or source.midi_path
    data = self._read(path)
    digest = hashlib.sha256(data).hexdigest()
    if source.audio_path:
      aligned = (notes.from_midi(self._read(source.aligned_midi_path),
                                 name=source.aligned_midi_path)
                 if source.aligned_midi_path else None)
      return (decode.decode_audio(data, name=source.audio_path), aligned, 0.0, "decode", digest,
              None)
    rendered = render.render_midi(data, name=source.midi_path, soundfont=self._font(source.key))
    # The render starts at MIDI time 0; trimming removed `trimmed_start_seconds` of it.
    targets = notes.from_midi(data, name=path).shifted(rendered.trimmed_start_seconds)
    return (rendered.samples, targets, rendered.trimmed_start_seconds, "render", digest,
            rendered.soundfont_sha256)

  def _variant(self, source: Source, clean: np.ndarray, clean_notes: notes.Notes | None,
               params: dict, variant: int
               ) -> tuple[np.ndarray, notes.Notes | None, float | None, str | None]:
    """(samples, note targets, seconds trimmed from the start of a fresh render or None, the
    fresh render's SoundFont SHA-256 or None)."""
    if not params:
      return clean, clean_notes, None, None
    rate = params.get("time_stretch", 1.0)
    semitones = params.get("pitch_shift", 0.0)
    if self._config.augment.domain == "midi":
      data = self._read(source.midi_path)
      midi = augmentation.apply_midi(pretty_midi.PrettyMIDI(io.BytesIO(data)), params)
      rendered = render.render_midi(render.midi_to_bytes(midi), name=source.key,
                                    soundfont=self._font(source.key, variant))
      noise_only = {k: v for k, v in params.items() if k.startswith("noise")}
      targets = (notes.from_midi(data, name=source.midi_path).stretched(rate).transposed(round(semitones))
                 .shifted(rendered.trimmed_start_seconds))
      return (augmentation.apply_audio(rendered.samples, decode.TARGET_SAMPLE_RATE, noise_only),
              targets, rendered.trimmed_start_seconds, rendered.soundfont_sha256)
    targets = None if clean_notes is None else clean_notes.stretched(rate).transposed(semitones)
    return (augmentation.apply_audio(clean, decode.TARGET_SAMPLE_RATE, params), targets, None,
            None)

  def process(self, source: Source):
    self._count("listed")
    stage = "load"
    try:
      if source.audio_path is None and source.midi_path is None and source.audio_record is None:
        raise FileNotFoundError("no audio or MIDI file for this recording")
      clean, clean_notes, clean_trim, stage, source_sha256, clean_font = self._load(source)
      window_records: list[bytes] = []
      stats: list[tuple[float, float, int]] = []
      written = filtered = 0
      frame_s = features.AST.frame_shift_ms / 1000
      for variant in range(self._config.first_variant, self._config.augment.variants + 1):
        stage = "augment"
        params = augmentation.draw(self._config.augment, source.key, variant)
        samples, variant_notes, trim, font = self._variant(source, clean, clean_notes, params,
                                                           variant)
        stage = "features"
        windows = frontend.windows(samples, self._config.window)
        if not windows:
          raise decode.EmptyAudioError(source.key, "shorter than one 25 ms frame")
        mask = augmentation.label_mask(self._config.augment, params)
        for w in windows:
          if self._config.filter_silent and windowing.is_near_silent(w, self._config.window):
            filtered += 1
            continue
          header = dict(_header(source, variant, params), window_index=w.index,
                        window_count=len(windows), valid_frames=w.valid_frames,
                        start_s=round(w.start_frame * frame_s, 3),
                        trim_start_s=round(clean_trim if trim is None else trim, 6),
                        soundfont_sha256=font or clean_font)
          window_records.append(records.encode_window(
              header, w.features.T, source.labels,
              mask if source.labels is not None else None,
              _payload(variant_notes, w.start_frame * frame_s,
                       self._config.window.frames * frame_s)))
          written += 1
          if variant == 0 and source.split == self._config.stats_split:
            valid = w.features[:w.valid_frames].astype(np.float64)
            stats.append((float(valid.sum()), float(np.square(valid).sum()), valid.size))
      # Records go to per-recording spill files; only descriptors travel on.
      stage = "spill"
      outputs = []
      if window_records:
        path = self._spill_path("windows", source.key)
        outputs.append(beam.pvalue.TaggedOutput(
            "windows", (source.split, source.key, path,
                        *writer.write_spill(path, window_records))))
      if self._config.write_audio:
        path = self._spill_path("audio", source.key)
        audio_record = records.encode_audio(
            dict(_header(source, 0, {}), labels=source.labels, trim_start_s=round(clean_trim, 6),
                 soundfont_sha256=clean_font),
            clean, decode.TARGET_SAMPLE_RATE,
            None if clean_notes is None else (clean_notes.notes, clean_notes.pedal, 0))
        outputs.append(beam.pvalue.TaggedOutput(
            "audio", (source.split, source.key, path, *writer.write_spill(path, [audio_record]))))
      outputs += [beam.pvalue.TaggedOutput("stats", s) for s in stats]
    except (decode.AudioError, render.RenderError, records.RecordError, OSError, ValueError,
            EOFError, KeyError, IndexError) as e:
      # Expected kinds of bad input: recorded with the stage, never silent.
      self._count(f"dead_lettered_{stage}")
      yield beam.pvalue.TaggedOutput("dead", {"key": source.key, "stage": stage,
                                              "reason": f"{type(e).__name__}: {e}"})
      yield beam.pvalue.TaggedOutput("outcome", {"key": source.key, "outcome": "dead_lettered"})
      return
    yield from outputs
    outcome = "written" if written else "filtered"
    self._count(outcome)
    self._count("windows_written", written)
    self._count("windows_filtered", filtered)
    yield beam.pvalue.TaggedOutput("outcome", {
        "key": source.key, "outcome": outcome, "windows_written": written,
        "windows_filtered": filtered, "split": source.split, "sha256": source_sha256})


class MomentsFn(beam.CombineFn):
  """Exact (order-independent) mean and std of log-mel values over windows.

  Accumulates the per-window partial sums and adds them with `math.fsum`,
  which is correctly rounded, so the statistics are bit-identical however
  the runner splits and merges the work.
  """

  def create_accumulator(self):
    return ([], [], 0)

  def add_input(self, acc, value):
    acc[0].append(value[0])
    acc[1].append(value[1])
    return (acc[0], acc[1], acc[2] + value[2])

  def merge_accumulators(self, accumulators):
    sums, squares, count = [], [], 0
    for s, q, n in accumulators:
      sums.extend(s)
      squares.extend(q)
      count += n
    return (sums, squares, count)

  def extract_output(self, acc):
    sums, squares, count = acc
    if count == 0:
      return {"count": 0, "mean": None, "std": None}
    mean = math.fsum(sums) / count
    variance = max(math.fsum(squares) / count - mean * mean, 0.0)
    return {"count": count, "mean": mean, "std": math.sqrt(variance)}


class _CollectJsonl(beam.PTransform):
  """Writes a small PCollection of dicts to one sorted JSONL file."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, pcoll):
    return (pcoll
            | beam.combiners.ToList()
            | beam.Map(lambda rows, path=self._path: writer.write_jsonl(path, rows)))


def build(pipeline: beam.Pipeline, sources: Sequence[Source], config: JobConfig) -> None:
  """Adds the preprocessing graph for `sources` to `pipeline`."""
  out = config.output_dir
  results = (
      pipeline
      | "ListSources" >> beam.Create(sorted(sources, key=lambda s: s.key), reshuffle=True)
      | "ProcessRecording" >> beam.ParDo(ProcessRecording(config)).with_outputs(
          "windows", "audio", "stats", "outcome", "dead"))
  _ = results.windows | "WriteWindows" >> writer.WriteShards(
      out, config.dataset, config.target_shard_mb, config.formats, "windows")
  if config.write_audio:
    _ = results.audio | "WriteAudio" >> writer.WriteShards(
        out, f"{config.dataset}_audio", config.target_shard_mb, ("array_record",), "audio")
  _ = (results.stats
       | "Moments" >> beam.CombineGlobally(MomentsFn())
       | "WriteStats" >> beam.Map(lambda s: writer.write_jsonl(f"{out}/{STATS}", [s])))
  _ = results.outcome | "WriteOutcomes" >> _CollectJsonl(f"{out}/{OUTCOMES}")
  _ = results.dead | "WriteDeadLetters" >> _CollectJsonl(f"{out}/{DEAD_LETTERS}")


def default_pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Standard Beam options from the command line, with an offline-safe local default.

  Without `--runner`, runs Beam's classic local runner (FnApiRunner) in
  multi-processing mode with one worker per core: plain DirectRunner first
  tries to download the Prism runner binary, which hangs without network.
  """
  options = PipelineOptions(list(beam_args))
  standard = options.view_as(StandardOptions)
  if standard.runner is None:
    standard.runner = "FnApiRunner"
    direct = options.view_as(DirectOptions)
    if not any(a.startswith("--direct_num_workers") for a in beam_args):
      direct.direct_num_workers = os.cpu_count() or 1
    if not any(a.startswith("--direct_running_mode") for a in beam_args):
      direct.direct_running_mode = "multi_processing"
    if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
      options.view_as(WorkerOptions).default_sdk_harness_log_level = "WARNING"
    # Multi-processing workers talk to the runner over localhost gRPC.
    for var in ("no_proxy", "NO_PROXY"):
      if "localhost" not in os.environ.get(var, ""):
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), "localhost,127.0.0.1"]))
  return options


def prepare_output(output_dir: str, overwrite: bool) -> str:
  """Refuses an existing `output_dir` unless `overwrite`; returns a fresh temp dir beside it.

  Works for local paths and any Beam filesystem (gs://, hdfs://, s3://).
  """
  output_dir = output_dir.rstrip("/")
  if FileSystems.exists(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
  parent, name = FileSystems.split(output_dir)
  partial = FileSystems.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
  if writer.is_local(partial):
    pathlib.Path(partial).mkdir(parents=True)
  return partial


def _read_jsonl(path: str) -> list[dict]:
  if not FileSystems.exists(path):
    return []
  with FileSystems.open(path) as f:
    return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line]


def _write_text(path: str, text: str) -> None:
  with FileSystems.create(path) as f:
    f.write(text.encode("utf-8"))


def _move_tree(source: str, destination: str, overwrite: bool) -> None:
  """Renames the finished temp dir into place (per file on object stores)."""
  if FileSystems.exists(destination):
    if not overwrite:
      raise FileExistsError(f"{destination} appeared while the job ran; output left in {source}")
    if writer.is_local(destination):
      shutil.rmtree(destination)
    else:
      FileSystems.delete([destination + "/"])
  if writer.is_local(source):
    pathlib.Path(source).rename(destination)
    return
  files = [m.path for m in FileSystems.match([source + "/*"])[0].metadata_list]
  FileSystems.rename(files, [destination + f[len(source):] for f in files])


def _tfds_documents(config: JobConfig, partial: str, metadata: dict) -> dict[str, dict]:
  """TFDS's two files for the window shards, described from the first window record of the
  first recording's spill file (none when no window was written)."""
  spills = sorted(m.path for m in FileSystems.match(
      [FileSystems.join(partial, SPILL, "windows", "*.bin")])[0].metadata_list)
  first = next((data for path in spills for data in writer.read_spill(path)), None)
  if first is None:
    return {}
  description = (f"{config.dataset} log-mel windows (schema version {records.VERSION}) "
                 f"written by pipelines.beam at {metadata['git_revision']}; the features are "
                 "described in metadata.json's schema.")
  return {tfds_info.FEATURES: tfds_info.features_json(first),
          tfds_info.DATASET_INFO: tfds_info.dataset_info_json(
              config.dataset, metadata["shards"], config.formats, description)}


def finalize(config: JobConfig, sources: Sequence[Source], final_dir: str, *,
             job_config: dict, source_checksums: dict[str, str], splits: dict,
             max_failure_fraction: float, wall_s: float, overwrite: bool) -> dict:
  """Checks the accounting, writes metadata.json and renames the output into place."""
  partial = config.output_dir
  join = FileSystems.join
  outcomes = {o["key"]: o for o in _read_jsonl(join(partial, OUTCOMES))}
  dead = _read_jsonl(join(partial, DEAD_LETTERS))
  stats = _read_jsonl(join(partial, STATS))
  index_files = [join(partial, f"_shards-{kind}.jsonl") for kind in ("windows", "audio")]
  shard_rows = writer.fill_empty_shards(
      partial, [row for f in index_files for row in _read_jsonl(f)])
  listed = len(sources)
  counts = {
      "listed": listed,
      "written": sum(o["outcome"] == "written" for o in outcomes.values()),
      "filtered": sum(o["outcome"] == "filtered" for o in outcomes.values()),
      "dead_lettered": sum(o["outcome"] == "dead_lettered" for o in outcomes.values()),
      "windows_written": sum(o.get("windows_written", 0) for o in outcomes.values()),
      "windows_filtered": sum(o.get("windows_filtered", 0) for o in outcomes.values()),
  }
  problems = []
  if counts["written"] + counts["filtered"] + counts["dead_lettered"] != listed:
    problems.append(f"listed {listed} != written {counts['written']} + filtered "
                    f"{counts['filtered']} + dead-lettered {counts['dead_lettered']}")
  if set(outcomes) != {s.key for s in sources}:
    problems.append("outcomes do not name exactly the listed recordings")
  if len(dead) != counts["dead_lettered"]:
    problems.append(f"{len(dead)} dead letters for {counts['dead_lettered']} failed recordings")
  for fmt in config.formats:
    in_shards = sum(r["records"] for r in shard_rows
                    if r["kind"] == "windows" and r["format"] == fmt)
    if in_shards != counts["windows_written"]:
      problems.append(f"{fmt} shards hold {in_shards} windows, outcomes report "
                      f"{counts['windows_written']}")
  failure = counts["dead_lettered"] / listed if listed else 0.0
  if failure > max_failure_fraction:
    problems.append(f"{counts['dead_lettered']} of {listed} recordings dead-lettered "
                    f"({failure:.1%} > --max_failure_fraction {max_failure_fraction:.1%})")
  statistics = stats[0] if stats else {"count": 0, "mean": None, "std": None}
  fonts = ([render.soundfont_sha256(f) for f in config.soundfonts]
           if any(s.midi_path for s in sources) else [])
  checksums = {**source_checksums,
               **{k: o["sha256"] for k, o in sorted(outcomes.items()) if "sha256" in o}}
  metadata = {
      "schema": records.SPEC,
      "dataset": config.dataset,
      "config": job_config,
      "git_revision": provenance.git_revision(),
      # The one SoundFont's checksum (None with several, or without MIDI sources), and every
      # SoundFont's by name.
      "soundfont_sha256": fonts[0] if len(fonts) == 1 else None,
      "soundfonts": dict(zip(map(soundfont_label, config.soundfonts), fonts)),
      "source_checksums": checksums,
      "counts": counts,
      "normalization": {**statistics, "split": config.stats_split,
                        "formula": "(x - mean) / (2 * std)"},
      "shards": sorted(shard_rows, key=lambda r: r["file"]),
      "splits": splits,
      "wall_seconds": round(wall_s, 1),
  }
  for name, document in _tfds_documents(config, partial, metadata).items():
    _write_text(join(partial, name), json.dumps(document, indent=1, sort_keys=True) + "\n")
  _write_text(join(partial, layout.METADATA),
              json.dumps(metadata, indent=1, sort_keys=True) + "\n")
  if not dead:
    _write_text(join(partial, DEAD_LETTERS), "")
  leftovers = [f for f in [join(partial, OUTCOMES), join(partial, STATS), *index_files,
                           join(partial, SPILL)] if FileSystems.exists(f)]
  if leftovers:
    FileSystems.delete(leftovers)
  if problems:
    raise AccountingError(f"{partial} kept as partial output: " + "; ".join(problems))
  _move_tree(partial, final_dir.rstrip("/"), overwrite)
  return metadata


def run(sources: Sequence[Source], config_kwargs: dict, *, output_dir: str, overwrite: bool,
        beam_args: Sequence[str], job_config: dict, source_checksums: dict[str, str],
        splits: dict, max_failure_fraction: float) -> dict:
  """Builds and runs the job, then finalizes; returns the metadata.

  The output's lock (pipelines.beam.output_lock) is held throughout: a second job on
  the same output is refused, and a killed job's partial output is removed by the rerun.
  """
  with output_lock.held(output_dir):
    partial = prepare_output(output_dir, overwrite)
    config = JobConfig(output_dir=partial, **config_kwargs)
    start = time.perf_counter()
    options = default_pipeline_options(beam_args)
    with beam.Pipeline(options=options) as pipeline:
      build(pipeline, sources, config)
    return finalize(config, sources, output_dir, job_config=job_config,
                    source_checksums=source_checksums, splits=splits,
                    max_failure_fraction=max_failure_fraction,
                    wall_s=time.perf_counter() - start, overwrite=overwrite)
