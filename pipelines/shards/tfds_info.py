"""What TFDS needs to load a job's window shards by path: `features.json` and `dataset_info.json`.

A Beam job's output directory already names its window shards the TFDS way
(`{dataset}-{split}.{format}-{i:05d}-of-{n:05d}`). With these two files beside them,

  builder = tfds.builder_from_directory(output_dir)
  builder.as_dataset(split="train")      # tf.data over the TFRecord shards
  builder.as_data_source(split="train")  # random access over the ArrayRecord shards

work with TFDS's own reader and no code from this project. The feature connectors are
derived from one written record (`pipelines.shards.records`): the arrays get their
tensor shapes, every other feature a scalar of its Example kind (bytes -> Text,
int64 -> int64, float -> float32), and `augmentation/*` a nested dict, which TFDS
serialises under the same `augmentation/<name>` keys. Audio shards are not described:
they hold the clean waveforms the augment job regenerates from, not training examples.

Written as JSON in the layout TFDS 4.9 reads (`tfds.folder_dataset.write_metadata`
writes the same two documents); no TFDS import at run time.
"""

from __future__ import annotations

from pipelines.shards import example_proto, records

FEATURES = "features.json"
DATASET_INFO = "dataset_info.json"
FILE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_TFDS = "tensorflow_datasets.core.features."
_SCALAR_DTYPES = {"int64_list": "int64", "float_list": "float32"}


def _tensor(shape: tuple[int, ...], dtype: str, encoding: str = "none",
            cls: str = "tensor_feature.Tensor") -> dict:
  dims = {"dimensions": [str(d) for d in shape]} if shape else {}
  return {"pythonClassName": _TFDS + cls,
          "tensor": {"shape": dims, "dtype": dtype, "encoding": encoding}}


def _scalar(kind: str) -> dict:
  if kind == "bytes_list":
    return {"pythonClassName": _TFDS + "text_feature.Text", "text": {}}
  return _tensor((), _SCALAR_DTYPES[kind], cls="scalar.Scalar")


def _features_dict(features: dict) -> dict:
  return {"pythonClassName": _TFDS + "features_dict.FeaturesDict",
          "featuresDict": {"features": features}}


def features_json(window_record: bytes) -> dict:
  """The FeaturesDict (as `features.json` holds it) of a job whose windows look like this one."""
  header, _ = records.decode(window_record)
  if header["kind"] != "window":
    raise ValueError(f"a {header['kind']} record does not describe the window shards")
  example = example_proto.example_class().FromString(window_record)
  arrays = {
      "features": _tensor((header["num_mel_bins"], header["num_frames"]), "float16", "bytes"),
      "labels": _tensor((-1,), "float32"),
      "label_mask": _tensor((-1,), "bool"),
      "notes": _tensor((-1, 4), "float32"),
      "pedal": _tensor((-1, 2), "float32"),
  }
  top, augmentation = {}, {}
  for entry in example.features.feature:
    name, kind = entry.key, entry.value.WhichOneof("kind")
    if name in arrays:
      top[name] = arrays[name]
    elif name.startswith("augmentation/"):
      augmentation[name.removeprefix("augmentation/")] = _scalar(kind)
    else:
      top[name] = _scalar(kind)
  top["augmentation"] = _features_dict(augmentation)
  return {"type": _TFDS + "features_dict.FeaturesDict",
          "content": {"features": top},
          "proto_cls": "tensorflow_datasets.FeaturesDict"}


def dataset_info_json(dataset: str, shard_rows: list[dict], formats: tuple[str, ...],
                      description: str) -> dict:
  """`dataset_info.json` for the window shards in `shard_rows` (the metadata's `shards`)."""
  # TFRecord first when written: `as_dataset` reads the main format, `as_data_source` picks
  # the random-access one (ArrayRecord) from the alternatives.
  main = "tfrecord" if "tfrecord" in formats else formats[0]
  windows = [r for r in shard_rows if r["kind"] == "windows" and r["format"] == main]
  splits = []
  for split in sorted({r["split"] for r in windows}):
    rows = sorted((r for r in windows if r["split"] == split), key=lambda r: r["index"])
    splits.append({"name": split, "filepathTemplate": FILE_TEMPLATE,
                   "numBytes": str(sum(r["bytes"] for r in rows)),
                   "shardLengths": [str(r["records"]) for r in rows]})
  return {"name": dataset, "version": f"{records.VERSION}.0.0", "description": description,
          "fileFormat": main, "alternativeFileFormats": [f for f in formats if f != main],
          "splits": splits}
