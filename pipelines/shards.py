"""Deterministic sharded writes of encoded records: ArrayRecord, and TFRecord for export.

`WriteShards` takes `(split, record_id, bytes)` elements and writes TFDS-style
files `{name}-{split}.{format}-{i:05d}-of-{n:05d}`:

- the shard count per split comes from the split's total size and
  `target_shard_mb` (never more shards than records);
- a record's shard is a hash of its id, and each shard's records are sorted by
  id, so the files are byte-identical however the runner partitions the work;
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

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystems import FileSystems
from array_record.python import array_record_module

FORMATS = ("array_record", "tfrecord")
ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for Grain


def shard_name(name: str, split: str, fmt: str, index: int, count: int) -> str:
  return f"{name}-{split}.{fmt}-{index:05d}-of-{count:05d}"


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecord(path: str, records: list[bytes]) -> None:
  """TFRecord framing: u64 length, masked CRC32C of it, data, masked CRC32C of data."""
  with open(path, "wb") as f:
    for data in records:
      length = struct.pack("<Q", len(data))
      f.write(length + struct.pack("<I", _masked_crc32c(length)) + data
              + struct.pack("<I", _masked_crc32c(data)))


def write_array_record(path: str, records: list[bytes]) -> None:
  writer = array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
  for data in records:
    writer.write(data)
  writer.close()


_WRITERS = {"array_record": write_array_record, "tfrecord": write_tfrecord}


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


def write_shard(output_dir: str, name: str, split: str, fmt: str, index: int, count: int,
                records: list[bytes], kind: str) -> dict:
  file = shard_name(name, split, fmt, index, count)
  with tempfile.TemporaryDirectory(prefix="shard-") as scratch:
    local = os.path.join(scratch, file)
    _WRITERS[fmt](local, records)
    digest = hashlib.sha256()
    with open(local, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    size = os.path.getsize(local)
    materialize(local, f"{output_dir}/{file}")
  return {"file": file, "format": fmt, "name": name, "split": split, "kind": kind,
          "index": index, "count": count, "records": len(records), "bytes": size,
          "sha256": digest.hexdigest()}


def shard_count(records: int, total_bytes: int, target_mb: float) -> int:
  return max(1, min(records, math.ceil(total_bytes / (target_mb * 2**20))))


def _shard_of(record_id: str, count: int) -> int:
  return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "little") % count


class _WriteGroup(beam.DoFn):

  def __init__(self, output_dir, name, formats, kind):
    self._args = (output_dir, name, formats, kind)

  def process(self, element):
    (split, index, count), items = element
    output_dir, name, formats, kind = self._args
    ordered = [data for _, data in sorted(items, key=lambda item: item[0])]
    for fmt in formats:
      yield write_shard(output_dir, name, split, fmt, index, count, ordered, kind)


class WriteShards(beam.PTransform):
  """(split, record_id, bytes) -> shard files; returns the shard descriptions."""

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
              | "Sizes" >> beam.Map(lambda e: (e[0], (1, len(e[2]))))
              | "SumSizes" >> beam.CombinePerKey(
                  lambda values: tuple(map(sum, zip(*values))) if values else (0, 0)))

    def assign(element, totals, target):
      split, record_id, data = element
      count = shard_count(*totals[split], target)
      return (split, _shard_of(record_id, count), count), (record_id, data)

    infos = (pcoll
             | "AssignShard" >> beam.Map(assign, totals=beam.pvalue.AsDict(totals),
                                         target=self._target)
             | "GroupShards" >> beam.GroupByKey()
             | "WriteFiles" >> beam.ParDo(_WriteGroup(self._output_dir, self._name,
                                                      self._formats, self._kind)))
    path = f"{self._output_dir}/_shards-{self._kind}.jsonl"
    _ = (infos
         | "CollectShardInfo" >> beam.combiners.ToList()
         | "WriteShardInfo" >> beam.Map(lambda rows: _write_lines(path, rows)))
    return infos


def _write_lines(path: str, rows: list[dict]) -> None:
  text = "".join(json.dumps(r, sort_keys=True) + "\n"
                 for r in sorted(rows, key=lambda r: r["file"]))
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
        have.add(file)
        added.append(write_shard(output_dir, r["name"], r["split"], r["format"], index,
                                 r["count"], [], r["kind"]))
  return rows + added


def read_array_record(path: str) -> list[bytes]:
  """All records of one ArrayRecord shard, in order (tests and tools)."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return [reader.read() for _ in range(reader.num_records())]
  finally:
    reader.close()
