"""What a pipelines job's output directory holds, as its readers see it.

The file names, formats and ArrayRecord options of the shards and their
metadata. Kept apart from the Beam writer (`pipelines.beam.writer`) so that the
readers (the Grain input pipeline, the trainer, cross-validation, tests and
tools) never import Apache Beam.
"""

from __future__ import annotations

from array_record.python import array_record_module

FORMATS = ("array_record", "tfrecord")
# The job's description of its shards (counts, statistics, splits), beside them.
METADATA = "metadata.json"
ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for Grain


def shard_name(name: str, split: str, fmt: str, index: int, count: int) -> str:
  """TFDS-style `{name}-{split}.{format}-{i:05d}-of-{n:05d}`."""
  return f"{name}-{split}.{fmt}-{index:05d}-of-{count:05d}"


class RecordError(ValueError):
  """A record does not follow its schema; the message says where and why."""


class ShardReadError(ValueError):
  """A shard file is missing or damaged (truncated, overwritten); the message names it."""


def read_array_record(path: str) -> list[bytes]:
  """All records of one ArrayRecord shard, in order (tests and tools)."""
  reader = array_record_module.ArrayRecordReader(path)
  if not reader.ok():
    # A missing or truncated file opens as a reader of 0 records; only close() says why,
    # as a RuntimeError that does not name the file.
    try:
      reader.close()
    except RuntimeError as e:
      raise ShardReadError(f"{path}: cannot read the ArrayRecord shard ({e})") from None
    raise ShardReadError(f"{path}: cannot read the ArrayRecord shard")
  try:
    return [reader.read() for _ in range(reader.num_records())]
  finally:
    reader.close()
