"""Every performance's clip statistics and labels, from a PercePiano job's audio shards.

`features="midi_notes"` computes `pipelines.audio.note_statistics` from the note
targets stored with each performance's audio instead (the performance MIDI: the
oracle of the notes path); `features="notes"` computes the same statistics from a
transcription of the audio (a notes archive, `pipelines.audio.notes.save_archive`,
written by `eval.shard_transcription`): the notes path itself; `features="embeddings"`
reads a vector per performance (`save_vectors`, written by `eval.shard_embeddings`:
frozen encoder embeddings, the probes); `features="ast_stats"` puts everything the
notes-aware AST and the audio give side by side: the transcription's note statistics,
the statistics of the probabilities they were decoded from (both in the notes archive),
the encoder's clip embedding (a vector table) and the audio clip statistics.

The closed-form ridge (`train.ridge`) and the trainer's feed-forward model on the
same statistics (`backbone=clip_stats`, `train.tasks.ClipStatisticsFinetuning`)
read one table: one row per performance, the statistics of
`pipelines.audio.clip_statistics` computed once from the clean audio the job
stored, cached in an `.npz` keyed by the audio shards' SHA-256 and the
statistics' names (recomputed when either changes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
import zipfile

import numpy as np
from absl import logging

from pipelines import process_pool
from pipelines.audio import clip_statistics, note_statistics, notes, posterior_statistics
from pipelines.datasets import percepiano
from pipelines.shards import layout, metadata, records

CACHE = {"audio": "clip_statistics.npz", "midi_notes": "note_statistics.npz",
         "notes": "transcribed_note_statistics.npz",
         "embeddings": "embedding_table.npz", "fusion": "fusion_table.npz"}  # default names


class StatisticsError(ValueError):
  """The shards cannot give clip statistics (no audio, no labels, a missing performance)."""


@dataclasses.dataclass(frozen=True)
class Table:
  """One row per performance: its clip statistics and labels."""

  keys: tuple[str, ...]
  x: np.ndarray  # [P, F]
  labels: np.ndarray  # [P, D]
  midi: np.ndarray | None = None  # [P, S]: the MIDI's note statistics (`with_midi`), else None

  @property
  def mask(self) -> np.ndarray:
    return np.isfinite(self.labels)

  def rows(self, keys) -> np.ndarray:
    index = {k: i for i, k in enumerate(self.keys)}
    return np.array([index[k] for k in keys], int)


# What a table's rows are computed from: the clean audio the job stored, the note targets
# stored with it (the performance MIDI: what a perfect transcription would give), a
# transcription of that audio (a notes archive), or a vector table of each performance
# (frozen encoder embeddings: the probes), or the last two side by side (fusion: the notes
# statistics of the transcription, then the encoder's embedding), or everything the
# notes-aware AST and the audio give (ast_stats: the transcription's note statistics, the
# statistics of its probabilities, the encoder's embedding, the audio clip statistics).
FEATURES = ("audio", "midi_notes", "notes", "embeddings", "fusion", "ast_stats")
# The features read from files made by eval/, and the flags that name them.
FILE_FLAGS = {"notes": "--transcribed_notes (from eval.shard_transcription)",
              "embeddings": "--embeddings (from eval.shard_embeddings)",
              "fusion": "--transcribed_notes and --embeddings",
              "ast_stats": "--transcribed_notes and --embeddings"}
FUSED = ("notes", "embeddings")
# What of a row ast_stats reads from its two files (the audio statistics are computed).
AST_STATS_FILES = ("notes", "posteriors", "embeddings")


def names(features: str = "audio", width: int | None = None) -> tuple[str, ...]:
  """The columns' names; a vector table's (`embeddings`) are numbered up to `width`."""
  if features not in FEATURES:
    raise StatisticsError(f"features must be one of {FEATURES}, got {features!r}")
  if features == "embeddings":
    return tuple(f"v{i}" for i in range(width or 0))
  if features == "fusion":
    notes_names = note_statistics.names()
    return (*notes_names, *names("embeddings", (width or 0) - len(notes_names)))
  if features == "ast_stats":  # `width`: the columns read from files
    read = (*note_statistics.names(), *posterior_statistics.names())
    return (*read, *names("embeddings", (width or 0) - len(read)), *clip_statistics.names())
  return clip_statistics.names() if features == "audio" else note_statistics.names()


def save_vectors(path: pathlib.Path, keys, x: np.ndarray, about: dict) -> None:
  """One vector per performance (`x [P, F]` in the order of `keys`) with a JSON `about`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, keys=np.asarray(list(keys), str), x=np.asarray(x, np.float64),
           about=np.asarray(json.dumps(about, sort_keys=True)))
  tmp.replace(path)


def load_vectors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
  try:
    with np.load(path, allow_pickle=False) as f:
      rows = dict(zip((str(k) for k in f["keys"]), f["x"]))
      about = json.loads(str(f["about"]))
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise StatisticsError(f"{path}: not a vector table ({type(e).__name__}: {e})") from None
  return rows, about


@dataclasses.dataclass(frozen=True)
class WindowVectors:
  """One performance's windows: a vector each and where it lies in the recording."""

  x: np.ndarray  # [W, D] in time order
  starts_s: np.ndarray  # [W]
  ends_s: np.ndarray  # [W] (the window's last valid frame)

  @property
  def duration_s(self) -> float:
    return float(self.ends_s.max())


def save_windows(path: pathlib.Path, windows: dict[str, WindowVectors], about: dict) -> None:
  """Every performance's window vectors in one `.npz` (ragged, in key order)."""
  keys = sorted(windows)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, keys=np.asarray(keys, str),
           counts=np.asarray([len(windows[k].x) for k in keys], np.int64),
           x=np.concatenate([windows[k].x for k in keys]).astype(np.float32),
           starts_s=np.concatenate([windows[k].starts_s for k in keys]).astype(np.float64),
           ends_s=np.concatenate([windows[k].ends_s for k in keys]).astype(np.float64),
           about=np.asarray(json.dumps(about, sort_keys=True)))
  tmp.replace(path)


def load_windows(path: pathlib.Path) -> tuple[dict[str, WindowVectors], dict]:
  try:
    with np.load(path, allow_pickle=False) as f:
      keys, counts = [str(k) for k in f["keys"]], f["counts"]
      x, starts, ends = f["x"], f["starts_s"], f["ends_s"]
      about = json.loads(str(f["about"]))
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise StatisticsError(f"{path}: not a window vector table ({type(e).__name__}: {e})"
                          ) from None
  if len(counts) != len(keys) or int(counts.sum()) != len(x) or (counts < 1).any():
    raise StatisticsError(f"{path}: window counts do not add up to the stored windows")
  bounds = np.concatenate([[0], np.cumsum(counts)])
  return {k: WindowVectors(x[a:b], starts[a:b], ends[a:b])
          for k, a, b in zip(keys, bounds[:-1], bounds[1:])}, about


def _audio_shards(data_dir: pathlib.Path) -> list:
  """The job's audio shard files (their records hold the labels and the clean audio)."""
  files = metadata.read(data_dir).shard_files("audio")
  if not files:
    raise StatisticsError(f"{data_dir} holds no audio shards: rerun the PercePiano job without "
                          "--nowrite_audio (the labels and the statistics are read from its "
                          "audio records)")
  return files


def _labelled_records(data_dir: pathlib.Path, files: list):
  """(header, arrays) of every audio record, each checked to carry labels."""
  for f in files:
    for data in layout.read_array_record(str(data_dir / f.file)):
      header, arrays = records.decode(data)
      if header.get("labels") is None:
        raise StatisticsError(f"{data_dir}: performance {header['key']} has no labels (not a "
                              "PercePiano job's output?)")
      yield header, arrays


def labels(data_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Every performance's labels (`[D]`, NaN where missing), from a PercePiano job's audio
  records."""
  data_dir = pathlib.Path(data_dir)
  return {header["key"]: np.asarray(header["labels"], np.float64)
          for header, _ in _labelled_records(data_dir, _audio_shards(data_dir))}


def _note_statistics(key: str, header: dict, arrays: dict) -> np.ndarray:
  if header.get("num_notes", -1) < 0:
    raise StatisticsError(
        f"performance {key} has no note targets (rendered before schema 2, or read from a "
        "WAV without aligned MIDI): rerun the PercePiano job from the release's MIDI")
  duration = header["num_samples"] / header["sample_rate"]
  return note_statistics.compute(notes.Notes(arrays["notes"], arrays["pedal"]), duration)


def _from_file(features: str, path):
  """(row of a key, width) for the features read from a file (for fusion and ast_stats,
  the notes archive and the vector table, a pair); a key it lacks is an error."""
  if features in ("fusion", "ast_stats"):
    if not isinstance(path, (tuple, list)) or len(path) != 2 or None in path:
      raise StatisticsError(f"features={features} needs {FILE_FLAGS[features]}")
    archive, vectors = path
    sources = (zip(FUSED, path) if features == "fusion" else
               zip(AST_STATS_FILES, (archive, archive, vectors)))
    parts = [_from_file(kind, p) for kind, p in sources]
    return (lambda key: np.concatenate([row(key) for row, _ in parts]),
            sum(width for _, width in parts))
  if path is None:
    raise StatisticsError(f"features={features} needs {FILE_FLAGS[features]}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise StatisticsError(f"{path} does not exist")
  if features == "notes":
    try:
      performances, durations, _ = notes.load_archive(path)
    except notes.NotesError as e:
      raise StatisticsError(str(e)) from None
    def compute(key: str) -> np.ndarray:
      try:
        return note_statistics.compute(performances[key], durations[key])
      except ValueError as e:  # e.g. a transcription that found no note
        raise StatisticsError(f"{path}: performance {key}: {e} (its transcription has "
                              f"{len(performances[key].notes)} notes)") from None
    width = len(note_statistics.names())
  elif features == "posteriors":
    try:
      stat_names, performances = notes.load_posteriors(path)
    except notes.NotesError as e:
      raise StatisticsError(str(e)) from None
    if stat_names != posterior_statistics.names():
      raise StatisticsError(f"{path}: its probability statistics are not this version's "
                            "(rerun eval.shard_transcription)")
    compute = performances.__getitem__
    width = len(stat_names)
  else:
    performances, _ = load_vectors(path)
    compute = performances.__getitem__
    width = len(next(iter(performances.values()), ()))

  def row(key: str) -> np.ndarray:
    if key not in performances:
      raise StatisticsError(f"{path} has no row of performance {key} (made from other "
                            "shards?)")
    return compute(key)
  return row, width


def load(data_dir: str | pathlib.Path, cache: pathlib.Path, workers: int = 1,
         features: str = "audio", features_file=None) -> Table:
  """Every performance's statistics (`features`: "audio", "midi_notes", or from
  `features_file`: "notes" (an archive of transcribed notes), "embeddings" (a vector
  table), "fusion" (the pair)), from `cache` when it was made from these shards (and those
  files) and these statistics."""
  data_dir = pathlib.Path(data_dir)
  files_given = ([] if not features_file else list(features_file)
                 if isinstance(features_file, (tuple, list)) else [features_file])
  from_file, width = (_from_file(features, features_file or None) if features in FILE_FLAGS
                      else (None, None))
  files = _audio_shards(data_dir)
  sources = sorted(f.sha256 for f in files)
  if from_file is not None:  # another transcription or encoder is another table
    sources += [hashlib.sha256(pathlib.Path(f).read_bytes()).hexdigest() for f in files_given]
  stat_names = list(names(features, width))
  if cache.is_file():
    with np.load(cache, allow_pickle=False) as f:
      if list(f["sources"]) == sources and list(f.get("names", [])) == stat_names:
        return Table(keys=tuple(str(k) for k in f["keys"]), x=f["x"], labels=f["labels"])
    logging.info("%s was made from other shards or statistics: recomputing", cache)
  audio = features in ("audio", "ast_stats")
  keys, labels, inputs, samples = [], [], [], []
  for header, arrays in _labelled_records(data_dir, files):
    keys.append(header["key"])
    labels.append(np.asarray(header["labels"], np.float64))
    if audio:
      samples.append(arrays["samples"])
    if features != "audio":
      inputs.append(from_file(header["key"]) if from_file is not None
                    else _note_statistics(header["key"], header, arrays))
  t0 = time.perf_counter()
  columns = [np.stack(inputs)] if inputs else []
  if audio and workers > 1:
    clip_statistics.warm_numba_cache()  # the workers must not compile librosa's kernels at once
    with process_pool.spawning(workers) as pool:
      columns.append(np.stack(list(pool.map(clip_statistics.compute, samples, chunksize=4))))
  elif audio:
    columns.append(np.stack([clip_statistics.compute(s) for s in samples]))
  x = np.concatenate(columns, axis=1)
  logging.info("%s statistics of %d performances in %.0f s", features, len(keys),
               time.perf_counter() - t0)
  order = np.argsort(keys)
  table = Table(keys=tuple(keys[i] for i in order), x=x[order], labels=np.stack(labels)[order])
  cache.parent.mkdir(parents=True, exist_ok=True)
  # Unique per process: two runs filling the same cache must not write one temporary file.
  tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
  np.savez(tmp, keys=np.asarray(table.keys, str), x=table.x, labels=table.labels,
           sources=np.asarray(sources, str), names=np.asarray(stat_names, str))
  tmp.replace(cache)
  return table


def with_midi(data_dir: str | pathlib.Path, cache: pathlib.Path, features_file,
              workers: int = 1) -> Table:
  """The table of the MIDI-fitted notes model (`train.notes_from_midi`): as `x` the
  transcription's note statistics and the statistics of its probabilities (both from the
  notes archive `features_file`), as `midi` the note statistics of the performance MIDI the
  shards store (cached beside `cache`, where the oracle's run keeps them by default)."""
  table = load(data_dir, cache, workers, "notes", features_file)
  midi = load(data_dir, cache.parent / CACHE["midi_notes"], workers, "midi_notes")
  posteriors, _ = _from_file("posteriors", features_file)
  x = np.concatenate([table.x, np.stack([posteriors(k) for k in table.keys])], axis=1)
  return dataclasses.replace(table, x=x, midi=midi.x[midi.rows(table.keys)])


def groups_of(keys, split: str) -> np.ndarray:
  """What the outer split keeps together: passages (piece split) or performers."""
  parsed = [percepiano.parse_key(k) for k in keys]
  return np.array([p.passage if split == "piece" else p.performer for p in parsed])
