"""Deterministic sharded writes of encoded records: ArrayRecord, and TFRecord for export.

`WriteShards` takes one descriptor per recording whose records were spilled
to a file, and writes TFDS-style files `{name}-{split}.{format}-{i:05d}-of-{n:05d}`:

- the shard count per split comes from the split's total size and
  `target_shard_mb` (never more shards than recordings);
- a recording's shard is a hash of its key, and each shard holds its
  recordings in key order, so the files are byte-identical however the runner
  partitions the work;
- ArrayRecord needs a local, seekable file: every shard is written to local
  scratch disk first and then moved (local output) or copied through Beam's
  FileSystems (gs://, hdfs://, ... output), which is how it runs on Dataflow.

Each written shard is reported as one JSON line in `_shards-{kind}.jsonl`
(file, format, split, records, bytes, sha256) for the job's metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystems import FileSystems
from array_record.python import array_record_module

from pipelines.datasets import keys
from pipelines.shards.layout import ARRAY_RECORD_OPTIONS, FORMATS, shard_name


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _TFRecordWriter:
  """TFRecord framing: u64 length, masked CRC32C of it, data, masked CRC32C of data."""

  def __init__(self, path: str):
    self._file = open(path, "wb")

  def write(self, data: bytes) -> None:
    length = struct.pack("<Q", len(data))
    self._file.write(length + struct.pack("<I", _masked_crc32c(length)) + data
                     + struct.pack("<I", _masked_crc32c(data)))

  def close(self) -> None:
    self._file.close()


class _ArrayRecordWriter:

  def __init__(self, path: str):
    self._writer = array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)

  def write(self, data: bytes) -> None:
    self._writer.write(data)
    if not self._writer.ok():
      raise OSError("ArrayRecord writer reported an error")

  def close(self) -> None:
    self._writer.close()


_WRITERS = {"array_record": _ArrayRecordWriter, "tfrecord": _TFRecordWriter}


def is_local(path: str) -> bool:
  return "://" not in path


def materialize(local_path: str, destination: str) -> None:
  """Moves a finished local file to `destination` (local path or any Beam filesystem)."""
  if is_local(destination):
    pathlib.Path(destination).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(local_path, destination)
    return
  with open(local_path, "rb") as src, FileSystems.create(destination) as dst:
    shutil.copyfileobj(src, dst, length=1 << 22)
  os.remove(local_path)


def write_shard(output_dir: str, name: str, split: str, formats: tuple[str, ...], index: int,
                count: int, records: Iterable[bytes], kind: str) -> list[dict]:
  """Streams `records` into one shard per format; returns their descriptions."""
  files = {fmt: shard_name(name, split, fmt, index, count) for fmt in formats}
  with tempfile.TemporaryDirectory(prefix="shard-") as scratch:
    writers = {fmt: _WRITERS[fmt](os.path.join(scratch, f)) for fmt, f in files.items()}
    written = 0
    for data in records:
      for writer in writers.values():
        writer.write(data)
      written += 1
    rows = []
    for fmt, writer in writers.items():
      writer.close()
      local = os.path.join(scratch, files[fmt])
      rows.append({"file": files[fmt], "format": fmt, "name": name, "split": split,
                   "kind": kind, "index": index, "count": count, "records": written,
                   "bytes": os.path.getsize(local), "sha256": file_sha256(local)})
      materialize(local, f"{output_dir}/{files[fmt]}")
  return rows


def shard_count(recordings: int, total_bytes: int, target_mb: float) -> int:
  return max(1, min(recordings, math.ceil(total_bytes / (target_mb * 2**20))))


def _shard_of(key: str, count: int) -> int:
  return keys.stable_hash(key) % count


def write_spill(path: str, records: Iterable[bytes]) -> tuple[int, int]:
  """One recording's encoded records as length-prefixed bytes; returns (count, bytes)."""
  count = size = 0
  with FileSystems.create(path) as f:
    for data in records:
      f.write(struct.pack("<I", len(data)) + data)
      count += 1
      size += len(data)
  return count, size


def read_spill(path: str) -> Iterator[bytes]:
  with FileSystems.open(path) as f:
    while header := f.read(4):
      (length,) = struct.unpack("<I", header)
      data = f.read(length)
      if len(data) != length:
        raise OSError(f"{path}: truncated spill file")
      yield data


class _WriteGroup(beam.DoFn):

  def __init__(self, output_dir, name, formats, kind):
    self._args = (output_dir, name, formats, kind)

  def process(self, element):
    (split, index, count), spills = element
    output_dir, name, formats, kind = self._args
    ordered = sorted(spills)  # (key, path): recordings in key order, records in spill order
    records = (data for _, path in ordered for data in read_spill(path))
    yield from write_shard(output_dir, name, split, formats, index, count, records, kind)


class WriteShards(beam.PTransform):
  """(split, key, spill_path, records, bytes) per recording -> shard files.

  The records themselves never travel through the runner's shuffle: each
  recording's records were spilled to one file by the producing worker, and
  only these small descriptors are grouped (less shuffle on every runner; and
  Beam's local multi-worker runner silently dropped values of very large
  groups when the records themselves were grouped — see BUILD_NOTES.md).
  All of a recording's records go to one shard. Returns shard descriptions.
  """

  def __init__(self, output_dir: str, name: str, target_shard_mb: float,
               formats: tuple[str, ...], kind: str):
    super().__init__()
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
      raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats}")
    self._output_dir, self._name, self._target = output_dir, name, target_shard_mb
    self._formats, self._kind = tuple(formats), kind

  def expand(self, pcoll):
    totals = (pcoll
              | "Sizes" >> beam.Map(lambda e: (e[0], (1, e[4])))
              | "SumSizes" >> beam.CombinePerKey(
                  lambda values: tuple(map(sum, zip(*values))) if values else (0, 0)))

    def assign(element, totals, target):
      split, key, path, _, _ = element
      count = shard_count(*totals[split], target)
      return (split, _shard_of(key, count), count), (key, path)

    infos = (pcoll
             | "AssignShard" >> beam.Map(assign, totals=beam.pvalue.AsDict(totals),
                                         target=self._target)
             | "GroupShards" >> beam.GroupByKey()
             | "WriteFiles" >> beam.ParDo(_WriteGroup(self._output_dir, self._name,
                                                      self._formats, self._kind)))
    path = f"{self._output_dir}/_shards-{self._kind}.jsonl"
    _ = (infos
         | "CollectShardInfo" >> beam.combiners.ToList()
         | "WriteShardInfo" >> beam.Map(lambda rows: write_jsonl(path, rows)))
    return infos


def file_sha256(path: str) -> str:
  """SHA-256 of a file on any Beam filesystem, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with FileSystems.open(path) as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  """One JSON object per line (sorted keys), lines sorted: byte-identical for equal rows."""
  text = "".join(line + "\n" for line in sorted(json.dumps(r, sort_keys=True) for r in rows))
  with FileSystems.create(path) as f:
    f.write(text.encode("utf-8"))


def fill_empty_shards(output_dir: str, rows: list[dict]) -> list[dict]:
  """Writes the shard files that hashing left without records; returns all rows."""
  have = {r["file"] for r in rows}
  added = []
  for r in rows:
    for index in range(r["count"]):
      file = shard_name(r["name"], r["split"], r["format"], index, r["count"])
      if file not in have:
        new = write_shard(output_dir, r["name"], r["split"], (r["format"],), index,
                          r["count"], [], r["kind"])
        have.update(n["file"] for n in new)
        added += new
  return rows + added
