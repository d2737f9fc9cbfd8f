"""pipelines.beam.writer: shard files, spills, the remote-copy path and empty shards."""

import json

import pytest

from pipelines.beam import writer
from pipelines.shards import layout


def test_spill_round_trip_and_truncation(tmp_path):
  path = str(tmp_path / "a.bin")
  data = [b"one", b"", b"three" * 1000]
  assert writer.write_spill(path, data) == (3, 3 + 5000)
  assert list(writer.read_spill(path)) == data
  raw = (tmp_path / "a.bin").read_bytes()
  (tmp_path / "a.bin").write_bytes(raw[:-10])
  with pytest.raises(OSError, match="truncated"):
    list(writer.read_spill(path))


def test_write_shard_both_formats(tmp_path):
  rows = writer.write_shard(str(tmp_path), "ds", "train", ("array_record", "tfrecord"), 1, 3,
                            iter([b"a", b"bb"]), "windows")
  assert [r["file"] for r in rows] == ["ds-train.array_record-00001-of-00003",
                                       "ds-train.tfrecord-00001-of-00003"]
  assert all(r["records"] == 2 and (tmp_path / r["file"]).stat().st_size == r["bytes"]
             for r in rows)
  assert layout.read_array_record(str(tmp_path / rows[0]["file"])) == [b"a", b"bb"]
  # TFRecord framing: u64 length, masked crc, data, masked crc.
  blob = (tmp_path / rows[1]["file"]).read_bytes()
  assert len(blob) == (8 + 4 + 1 + 4) + (8 + 4 + 2 + 4)


def test_remote_destinations_are_copied_through_beam_filesystems(tmp_path, monkeypatch):
  monkeypatch.setattr(writer, "is_local", lambda path: False)
  rows = writer.write_shard(str(tmp_path / "out"), "ds", "test", ("array_record",), 0, 1,
                            [b"x"], "windows")
  assert layout.read_array_record(str(tmp_path / "out" / rows[0]["file"])) == [b"x"]


def test_fill_empty_shards(tmp_path):
  rows = writer.write_shard(str(tmp_path), "ds", "train", ("array_record",), 2, 4, [b"x"],
                            "windows")
  filled = writer.fill_empty_shards(str(tmp_path), rows)
  assert sorted(r["index"] for r in filled) == [0, 1, 2, 3]
  for r in filled:
    assert len(layout.read_array_record(str(tmp_path / r["file"]))) == r["records"]
  assert json.dumps(filled)  # descriptions stay JSON-serialisable


@pytest.mark.parametrize("recordings,size_mb,target,expected", [
    (10, 0.5, 1.0, 1), (10, 5.5, 1.0, 6), (3, 100.0, 1.0, 3), (0, 0.0, 1.0, 1)])
def test_shard_count(recordings, size_mb, target, expected):
  assert writer.shard_count(recordings, int(size_mb * 2**20), target) == expected


def test_unknown_format_refused():
  with pytest.raises(ValueError, match="formats"):
    writer.WriteShards("/tmp/x", "ds", 1.0, ("parquet",), "windows")
