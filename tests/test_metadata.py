"""pipelines.shards.metadata: one typed reader of a job's metadata.json, with clear errors."""

import json

import pytest

from pipelines.shards import metadata

DOC = {
    "dataset": "percepiano",
    "config": {"window_s": 2.56, "hop_s": 1.28},
    "normalization": {"mean": -4.0, "std": 2.5, "split": "train"},
    "splits": {"shards_follow": "piece",
               "piece": {"a": "fold1", "b": "test", "c": "fold0", "d": "fold1", "e": "test"}},
    "shards": [
        {"file": "x-train.array_record-00000-of-00002", "kind": "windows", "split": "train",
         "format": "array_record", "records": 3, "sha256": "s1"},
        {"file": "x-train.array_record-00001-of-00002", "kind": "windows", "split": "train",
         "format": "array_record", "records": 0, "sha256": "s2"},
        {"file": "x-test.tfrecord-00000-of-00001", "kind": "windows", "split": "test",
         "format": "tfrecord", "records": 2, "sha256": "s3"},
        {"file": "x_audio-train.array_record-00000-of-00001", "kind": "audio", "split": "train",
         "format": "array_record", "records": 4, "sha256": "s4"},
    ],
}


def write(tmp_path, doc) -> None:
  (tmp_path / "metadata.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_typed_fields(tmp_path):
  write(tmp_path, DOC)
  meta = metadata.read(tmp_path)
  assert meta.dataset == "percepiano" and meta.config["hop_s"] == 1.28
  assert meta.folds("piece") == [0, 1]
  assert meta.test_keys("piece") == ["b", "e"]
  assert meta.normalization == (-4.0, 2.5)
  # Empty shards and other formats/kinds are left out; order is the metadata's.
  assert [f.file for f in meta.shard_files("windows")] == ["x-train.array_record-00000-of-00002"]
  assert [(f.records, f.sha256) for f in meta.shard_files("audio")] == [(4, "s4")]
  assert meta.shard_files("windows", splits=("test",)) == []
  assert [f.split for f in meta.shard_files("windows", fmt="tfrecord")] == ["test"]


def test_missing_file_and_damaged_json_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no metadata.json"):
    metadata.read(tmp_path)
  write(tmp_path, '{"dataset": "percepiano", "sh')
  with pytest.raises(metadata.MetadataError, match="not valid JSON"):
    metadata.read(tmp_path)
  write(tmp_path, "[1, 2]")
  with pytest.raises(metadata.MetadataError, match="JSON list"):
    metadata.read(tmp_path)


def test_missing_fields_are_named_when_asked_for(tmp_path):
  write(tmp_path, {"config": {}, "normalization": {"mean": None, "std": 0}})
  meta = metadata.read(tmp_path)
  assert meta.config == {}
  with pytest.raises(metadata.MetadataError, match="has no 'dataset'"):
    meta.dataset
  with pytest.raises(metadata.MetadataError, match="has no 'shards'"):
    meta.shard_files("windows")
  with pytest.raises(metadata.MetadataError, match="no normalisation statistics"):
    meta.normalization
  write(tmp_path, {"splits": {"piece": {}}, "dataset": "maestro"})
  with pytest.raises(metadata.MetadataError, match="no 'performer' split table"):
    metadata.read(tmp_path).folds("performer")


def test_soundfont_labels_agree_between_the_jobs_and_the_trainer():
  """One rule names a SoundFont everywhere: the Beam config's None and the jobs'
  "default" are the bundled TimGM6mb (whose file stem it is), any other path its stem."""
  from pipelines.audio import render
  assert metadata.soundfont_label(None) == render.default_soundfont().stem
  assert metadata.soundfont_label("default") == metadata.DEFAULT_SOUNDFONT
  assert metadata.soundfont_label("/usr/share/sounds/sf2/FluidR3_GM.sf2") == "FluidR3_GM"
  # A job before the list (one --soundfont) is named by the same rule.
  raw = {"soundfont_sha256": "ab", "config": {"soundfont": "/x/sf_GMbank.sf2"}}
  assert metadata.soundfonts(raw) == {"sf_GMbank": "ab"}
  assert metadata.soundfonts({"soundfont_sha256": "cd", "config": {}}) == {"TimGM6mb": "cd"}
