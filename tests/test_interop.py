"""The shards read by their consumers outside this project — tf.data with
`tf.io.parse_single_example`, TFDS by path (TFRecord and ArrayRecord) — and by our own Grain
pipeline, agree bitwise with `pipelines.shards.records.decode` on every field.

The jobs are the real Beam jobs (DirectRunner) on a generated release: a PercePiano job with
noise-augmented variants (labels, note targets, applied augmentation) and a MAESTRO job over
WAV files (unlabelled, aligned MIDI, no SoundFont).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines import input_pipeline as ip
from pipelines.audio import frontend
from pipelines.corpus import make_corpus
from pipelines.shards import layout, records, tfds_info

REPO = pathlib.Path(__file__).resolve().parent.parent
JOB = ["--format=array_record", "--format=tfrecord", "--window_s=2.56", "--hop_s=2.56",
       "--target_shard_mb=0.5", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _run(module: str, *args: str) -> None:
  proc = subprocess.run([sys.executable, "-m", f"pipelines.beam.{module}_job", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module", params=["percepiano", "maestro"])
def job(request, tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp(request.param)
  if request.param == "percepiano":
    make_corpus.make_corpus(root / "corpus", "tiny", seed=4, parts=("percepiano",))
    _run("percepiano", f"--percepiano_dir={root / 'corpus' / 'percepiano'}",
         f"--output_dir={root / 'out'}", "--test_fraction=0.34", "--num_folds=2",
         "--augment=noise", "--variants=1", *JOB)
  else:
    make_corpus.make_corpus(root / "corpus", "tiny", seed=4, parts=("maestro",))
    _run("maestro", f"--maestro_dir={root / 'corpus' / 'maestro-v3.0.0'}",
         f"--output_dir={root / 'out'}", "--max_failure_fraction=0.5", *JOB)
  return root / "out"


def _reference(root: pathlib.Path) -> dict[str, list[tuple[dict, dict]]]:
  """Split -> every window as `records.decode` reads it from the ArrayRecord shards, in
  shard order."""
  meta = json.loads((root / layout.METADATA).read_text())
  out: dict[str, list] = {}
  for row in meta["shards"]:
    if row["kind"] == "windows" and row["format"] == "array_record":
      out.setdefault(row["split"], []).extend(
          records.decode(r) for r in layout.read_array_record(str(root / row["file"])))
  return out


def _bits(a: np.ndarray) -> bytes:
  return np.ascontiguousarray(a).tobytes()


def _assert_same(got: dict, header: dict, arrays: dict) -> None:
  """`got`: one example as an outside reader returns it (numpy, flat feature names)."""
  assert _bits(np.asarray(got["features"], np.float16)) == _bits(arrays["features"])
  assert np.asarray(got["features"]).shape == arrays["features"].shape
  assert _bits(np.asarray(got["labels"], np.float32)) == _bits(arrays["labels"])
  assert _bits(np.asarray(got["label_mask"]).astype(bool)) == _bits(arrays["label_mask"])
  for name, width in (("notes", 4), ("pedal", 2)):
    assert _bits(np.asarray(got[name], np.float32).reshape(-1, width)) == _bits(arrays[name])
  params = {k: header["augmentation"].get(k, v) for k, v in records.AUGMENTATION.items()}
  for name, value in [*header.items(), *((f"augmentation/{k}", v) for k, v in params.items())]:
    if name == "augmentation":
      continue
    have = got[name]
    have = have.item() if isinstance(have, np.ndarray) else have
    if value is None:
      value = records.NULLS[name]
    if isinstance(value, str):
      assert have == value.encode(), name
    elif isinstance(value, float):
      assert np.float32(have).tobytes() == np.float32(value).tobytes(), name
    else:
      assert have == value, name


def _tf_parse_spec(first: dict) -> dict:
  """The parse spec a TensorFlow user writes from the documented schema (records.SPEC)."""
  spec = {"features": tf.io.FixedLenFeature([], tf.string),
          **{name: tf.io.VarLenFeature(tf.float32) for name in ("labels", "notes", "pedal")},
          "label_mask": tf.io.VarLenFeature(tf.int64)}
  for name, value in first.items():
    if name not in spec:
      kind = (tf.string if isinstance(value, (str, type(None))) else
              tf.float32 if isinstance(value, float) else tf.int64)
      spec[name] = tf.io.FixedLenFeature([], kind)
  for name, identity in records.AUGMENTATION.items():
    spec[f"augmentation/{name}"] = tf.io.FixedLenFeature(
        [], tf.int64 if isinstance(identity, int) else tf.float32)
  spec.pop("augmentation")
  return spec


def test_tf_data_parse_single_example_reads_every_field(job):
  reference = _reference(job)
  meta = json.loads((job / layout.METADATA).read_text())
  for split, windows in reference.items():
    files = sorted(str(job / r["file"]) for r in meta["shards"] if r["kind"] == "windows"
                   and r["format"] == "tfrecord" and r["split"] == split)
    spec = _tf_parse_spec(windows[0][0])
    mel, frames = windows[0][1]["features"].shape

    def parse(data):
      x = tf.io.parse_single_example(data, spec)
      x = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
           for k, v in x.items()}
      x["features"] = tf.reshape(tf.io.decode_raw(x["features"], tf.float16), [mel, frames])
      return x

    got = list(tf.data.TFRecordDataset(files).map(parse).as_numpy_iterator())
    assert len(got) == len(windows) > 0
    for example, (header, arrays) in zip(got, windows):
      _assert_same(example, header, arrays)


def _flat(example: dict) -> dict:
  """TFDS's nested `augmentation` dict as the flat `augmentation/<name>` keys."""
  example = dict(example)
  for k, v in example.pop("augmentation").items():
    example[f"augmentation/{k}"] = v
  return example


def _by_window(examples) -> dict:
  return {(x["key"].decode(), int(x["variant"]), int(x["window_index"])): x for x in examples}


def test_tfds_loads_the_directory_by_path_from_both_formats(job):
  reference = _reference(job)
  builder = tfds.builder_from_directory(str(job))
  assert set(builder.info.splits) == set(reference)
  for split, windows in reference.items():
    assert builder.info.splits[split].num_examples == len(windows)
    # TFDS interleaves the TFRecord files; the ArrayRecord source is in shard order. A fresh
    # builder each: as_data_source() switches its builder's file format to ArrayRecord.
    tfrecord = _by_window(tfds.as_numpy(tfds.builder_from_directory(str(job)).as_dataset(
        split=split, shuffle_files=False)))
    array_record = tfds.builder_from_directory(str(job)).as_data_source(split=split)
    assert len(tfrecord) == len(array_record) == len(windows)
    for i, (header, arrays) in enumerate(windows):
      _assert_same(_flat(tfrecord[header["key"], header["variant"], header["window_index"]]),
                   header, arrays)
      _assert_same(_flat(array_record[i]), header, arrays)


def test_our_grain_pipeline_reads_the_same_windows(job):
  reference = _reference(job)
  meta = json.loads((job / layout.METADATA).read_text())
  mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
  for split, windows in reference.items():
    config = ip.InputConfig(batch_size=len(windows), splits=(split,))
    batch = next(iter(ip.evaluation(job, config)))
    for i, (header, arrays) in enumerate(windows):
      assert batch["key"][i] == header["key"]
      assert batch["window_index"][i] == header["window_index"]
      want = frontend.normalize(arrays["features"].astype(np.float32), mean, std)
      assert _bits(batch["features"][i]) == _bits(want)
      assert _bits(batch["labels"][i]) == _bits(arrays["labels"])


def test_the_tfds_documents_describe_what_the_job_wrote(job):
  features = json.loads((job / tfds_info.FEATURES).read_text())
  info = json.loads((job / tfds_info.DATASET_INFO).read_text())
  assert info["fileFormat"] == "tfrecord" and info["alternativeFileFormats"] == ["array_record"]
  assert info["version"] == f"{records.VERSION}.0.0"
  top = features["content"]["features"]
  assert {"features", "labels", "label_mask", "notes", "pedal", "key", "augmentation"} <= set(top)
  # Written by TFDS itself from the same connectors, the document is the same.
  assert tfds.features.FeaturesDict.from_json(features).to_json() == features
