"""The shard record format (schema version 3): one `tf.train.Example` per record.

Every record in the ArrayRecord and TFRecord shards is a serialised `tf.train.Example`
(written with the message classes of `pipelines.shards.example_proto`, no TensorFlow),
so `tf.io.parse_single_example`, TFDS (`pipelines.shards.tfds_info` writes the
directory's `features.json` and `dataset_info.json`) and Grain outside this repository
read them with their own tools. Named features (`SPEC` below, also in every job's
metadata):

  kind "window":
    features      bytes    float16 LE `[num_mel_bins, num_frames]` (mel-major, as AST's
                           `[128, 1024]`); TFDS: Tensor(float16, encoding="bytes")
    labels        float    `[num_labels]` (0 for unlabelled MAESTRO windows)
    label_mask    int64    `[num_labels]`, 1 = the label is valid for this augmented window
  kind "audio":
    samples       bytes    the clean 16 kHz mono waveform, int16 LE `[num_samples]`, kept
                           so augmented shards can be regenerated without the sources
    labels        float    the performance's labels `[num_labels]` (0: unlabelled)
  both:
    notes         float    `[num_notes, 4]` flattened: onset s, offset s, key, velocity, in
                           the record's own time base (`pipelines.audio.notes`)
    pedal         float    `[num_pedal, 2]` flattened: sustain-pedal start s, end s
    num_notes     int64    -1 (and `num_pedal` -1) says the record has no note targets:
                           its source had no MIDI, and nothing is guessed
    schema_version int64   3
    augmentation/time_stretch, augmentation/pitch_shift, augmentation/noise_snr_db
                  float    the applied augmentation (1, 0, +inf when not applied)
    augmentation/noise_seed int64  (-1 when no noise)
    every other header field (key, split, fold, variant, window_index, window_count,
    valid_frames, start_s, trim_start_s, soundfont_sha256, performer, ...): a scalar
    feature of its Python type (str -> bytes, int -> int64, float -> float32).

Layout: the writer serialises the Example as two chunks, every other feature in key order and
then the big bytes feature (`features` or `samples`) alone. Protobuf parsers merge repeated
chunks of a message field, so to every reader it is one Example; to `decode` it means the
record ends with the raw window, which it reads in place. Records laid out otherwise (one
chunk, as TensorFlow writes them) decode the same, through a full parse.

`decode` returns `(header, arrays)` as for every earlier version: the header's scalars,
`augmentation` as a dict of the applied parameters only, and audio records' `labels` as
a list (None when unlabelled). Float header values are float32 in an Example. A header
field may be None only where `NULLS` gives its stand-in ("" for a recording without a
SoundFont). Version 1 and 2 records (`pipelines.shards.legacy_records`) still decode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection

import numpy as np
from google.protobuf import message

from pipelines.shards import example_proto, layout, legacy_records

VERSION = 3
NOTES_SINCE = 2  # the first schema whose records carry note targets
READABLE_VERSIONS = (*legacy_records.READABLE_VERSIONS, VERSION)
# Log-mel values are stored as little-endian float16: half the bytes, below the front end's
# own precision.
FEATURE_DTYPE = np.dtype("<f2")
RecordError = layout.RecordError

# The augmentation parameters a record names, with the value that means "not applied".
AUGMENTATION = {"time_stretch": 1.0, "pitch_shift": 0.0, "noise_snr_db": math.inf,
                "noise_seed": -1}
# Header fields that may be None, with the value that stands for None in an Example.
NULLS = {"soundfont_sha256": "", "maestro_filename": ""}
_ARRAYS = {"window": ("features", "labels", "label_mask", "notes", "pedal"),
           "audio": ("samples", "labels", "notes", "pedal")}
_BIG = ("features", "samples")  # each kind's one large bytes feature, last in a record
NO_NOTES = {"num_notes": -1, "num_pedal": -1, "notes_dropped": 0}

SPEC = {
    "schema_version": VERSION,
    "record": "a serialised tf.train.Example (tensorflow/core/example/example.proto)",
    "window_features": {
        "features": "bytes: float16 LE [num_mel_bins, num_frames], mel-major",
        "labels": "float [num_labels]", "label_mask": "int64 [num_labels] (1 = valid)"},
    "audio_features": {"samples": "bytes: int16 LE [num_samples] at sample_rate",
                       "labels": "float [num_labels] (0: unlabelled)"},
    "note_features": {"notes": "float [num_notes * 4]: onset s, offset s, key, velocity",
                      "pedal": "float [num_pedal * 2]: start s, end s",
                      "num_notes": "int64, -1: no note targets"},
    "augmentation_features": {f"augmentation/{k}": f"{'int64' if k == 'noise_seed' else 'float'}"
                              f", {v} when not applied" for k, v in AUGMENTATION.items()},
    "header_features": "every other header field: a scalar, str -> bytes, int -> int64, "
                       "float -> float32",
    "nulls": NULLS,
    "legacy": "versions 1-2: magic b'PPTR' | version u8 | header_len u32 LE | JSON | payload",
}


def _scalar(feature, name: str, value) -> None:
  if value is None:
    if name not in NULLS:
      raise ValueError(f"header field {name!r} is None and records.NULLS gives it no "
                       "stand-in")
    value = NULLS[name]
  if isinstance(value, str):
    feature.bytes_list.value.append(value.encode("utf-8"))
  elif isinstance(value, (bool, int, np.integer)):
    feature.int64_list.value.append(int(value))
  elif isinstance(value, (float, np.floating)):
    feature.float_list.value.append(float(value))
  else:
    raise ValueError(f"header field {name!r} is a {type(value).__name__}; an Example header "
                     "holds str, int or float scalars")


def _floats(feature, values: np.ndarray) -> None:
  feature.float_list.SetInParent()  # an empty list is still a float feature
  feature.float_list.value.extend(np.asarray(values, np.float32).ravel().tolist())


def _serialise(header: dict, arrays: dict) -> bytes:
  """`header` scalars + `augmentation`, and `arrays` (name -> bytes or float/int64 array)."""
  header = dict(header)
  params = dict(header.pop("augmentation", None) or {})
  unknown = set(params) - set(AUGMENTATION)
  if unknown:
    raise ValueError(f"augmentation parameters {sorted(unknown)} have no feature; known: "
                     f"{sorted(AUGMENTATION)}")
  feature = example_proto.feature_class()
  features = {}
  for name, value in header.items():
    if name in arrays or name.startswith("augmentation/") or name == "schema_version":
      raise ValueError(f"header field {name!r} would shadow a record feature")
    _scalar(features.setdefault(name, feature()), name, value)
  for name, identity in AUGMENTATION.items():
    _scalar(features.setdefault(f"augmentation/{name}", feature()), name,
            params.get(name, identity))
  _scalar(features.setdefault("schema_version", feature()), "schema_version", VERSION)
  for name, value in arrays.items():
    f = features[name] = feature()
    if isinstance(value, bytes):
      f.bytes_list.value.append(value)
    elif value.dtype.kind in "biu":
      f.int64_list.SetInParent()
      f.int64_list.value.extend(value.astype(np.int64).tolist())
    else:
      _floats(f, value)
  # Two chunks, which every protobuf parser merges into one Example (repeated entries
  # concatenate): the entries in key order, then the one big bytes feature (the log-mel window
  # or the waveform) alone, so a record ends with its raw bytes and `decode` reads them in
  # place instead of copying them out of a parsed message.
  big = next((n for n in _BIG if n in arrays), None)
  head, tail = example_proto.example_class()(), example_proto.example_class()()
  for name in sorted(features):
    (tail if name == big else head).features.feature.add(key=name, value=features[name])
  return head.SerializeToString() + tail.SerializeToString()


def _varint(n: int) -> bytes:
  out = bytearray()
  while n > 0x7F:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  return bytes(out + bytes([n]))


@functools.lru_cache(maxsize=64)  # one size per job and kind: built once, not per record
def _tail_prefix(name: str, size: int) -> bytes:
  """What precedes `size` raw bytes in the tail chunk `_serialise` writes for feature `name`:
  Example.features (1) > Features.feature (1) > {key (1), value (2)} > Feature.bytes_list (1)
  > BytesList.value (1), each a length-delimited field (wire tag 0x0A / 0x12)."""
  inner = b"\x0a" + _varint(size)                         # BytesList.value
  inner = b"\x0a" + _varint(len(inner) + size) + inner    # Feature.bytes_list
  key = name.encode()
  inner = (b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(inner) + size) + inner)
  inner = b"\x0a" + _varint(len(inner) + size) + inner    # Features.feature (one entry)
  return b"\x0a" + _varint(len(inner) + size) + inner     # Example.features


def _head_end(record: bytes) -> int | None:
  """Where the first `Example.features` chunk ends, when more follows it (else None)."""
  if not record or record[0] != 0x0A:
    return None
  length = shift = 0
  for i in range(1, min(len(record), 11)):
    length |= (record[i] & 0x7F) << shift
    shift += 7
    if record[i] < 0x80:
      end = i + 1 + length
      return end if end < len(record) else None
  return None


def _notes_part(notes: tuple[np.ndarray, np.ndarray, int] | None) -> tuple[dict, dict]:
  """Header fields and arrays of `(notes [N, 4], pedal [P, 2], dropped)` or None."""
  if notes is None:
    return dict(NO_NOTES), {"notes": np.zeros(0, np.float32), "pedal": np.zeros(0, np.float32)}
  values, pedal, dropped = notes
  values = np.asarray(values, np.float32).reshape(-1, 4)
  pedal = np.asarray(pedal, np.float32).reshape(-1, 2)
  return ({"num_notes": values.shape[0], "num_pedal": pedal.shape[0],
           "notes_dropped": int(dropped)}, {"notes": values, "pedal": pedal})


def encode_window(header: dict, features: np.ndarray, labels: np.ndarray | None = None,
                  label_mask: np.ndarray | None = None,
                  notes: tuple[np.ndarray, np.ndarray, int] | None = None) -> bytes:
  """`features` is `[mel, frames]`; `labels`/`label_mask` `[19]` or None (unlabelled);
  `notes` the window's `(notes [N, 4], pedal [P, 2], dropped)` or None (no MIDI)."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"features must be [mel, frames], got {features.shape}")
  labels = np.zeros(0, np.float32) if labels is None else np.asarray(labels, np.float32)
  mask = np.ones(labels.shape, np.uint8) if label_mask is None else np.asarray(label_mask,
                                                                               np.uint8)
  if mask.shape != labels.shape:
    raise ValueError(f"label mask {mask.shape} does not match labels {labels.shape}")
  note_fields, note_arrays = _notes_part(notes)
  full = dict(header, kind="window", num_mel_bins=features.shape[0],
              num_frames=features.shape[1], num_labels=labels.shape[0], **note_fields)
  return _serialise(full, {"features": features.astype(FEATURE_DTYPE).tobytes(),
                           "labels": labels, "label_mask": mask, **note_arrays})


def encode_audio(header: dict, samples: np.ndarray, sample_rate: int,
                 notes: tuple[np.ndarray, np.ndarray, int] | None = None) -> bytes:
  """Stores float samples in [-1, 1] as int16 PCM (clipped), then the note targets; a
  `labels` header entry (a list, or None) becomes the `labels` feature."""
  pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767)
  header = dict(header)
  labels = header.pop("labels", None)
  labels = np.zeros(0, np.float32) if labels is None else np.asarray(labels, np.float32)
  note_fields, note_arrays = _notes_part(notes)
  full = dict(header, kind="audio", sample_rate=sample_rate, num_samples=int(pcm.shape[0]),
              num_labels=labels.shape[0], **note_fields)
  return _serialise(full, {"samples": pcm.astype("<i2").tobytes(), "labels": labels,
                           **note_arrays})


def _value(name: str, feature):
  which = feature.WhichOneof("kind")
  values = getattr(feature, which).value if which else ()
  if len(values) != 1:
    raise RecordError(f"feature {name!r} holds {len(values)} values, a header field one")
  value = values[0]
  if which == "bytes_list":
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      raise RecordError(f"feature {name!r} is not UTF-8 text") from None
    return None if name in NULLS and value == NULLS[name] else value
  return int(value) if which == "int64_list" else float(value)


def _array(features: dict, name: str, kind: str, dtype, count: int) -> np.ndarray:
  feature = features.get(name)
  which = feature.WhichOneof("kind") if feature is not None else None
  values = getattr(feature, kind).value if which == kind else ()
  if which not in (kind, None) or len(values) != count:
    raise RecordError(f"feature {name!r} holds {len(values)} {which} values, the header "
                      f"implies {count} {kind}")
  if kind == "float_list" and count:
    # Serialised, a float list is a tag, a length and then the raw float32 LE values (proto3
    # packs it): one copy, where np.array(values) makes a Python float of each (~10x slower).
    data = feature.float_list.SerializeToString()
    return np.frombuffer(data, "<f4", count=count, offset=len(data) - 4 * count)
  return np.array(values, dtype)


def _bytes(features: dict, name: str, size: int, dtype) -> np.ndarray:
  feature = features.get(name)
  values = feature.bytes_list.value if feature is not None else ()
  got = len(values[0]) if len(values) == 1 else None
  if got != size:
    raise RecordError(f"feature {name!r} holds {got} bytes, the header implies {size}")
  return np.frombuffer(values[0], dtype)


def _notes(header: dict, features) -> dict[str, np.ndarray]:
  if header["num_notes"] < 0:
    return {"notes": np.zeros((0, 4), np.float32), "pedal": np.zeros((0, 2), np.float32)}
  return {"notes": _array(features, "notes", "float_list", np.float32,
                          4 * header["num_notes"]).reshape(-1, 4),
          "pedal": _array(features, "pedal", "float_list", np.float32,
                          2 * header["num_pedal"]).reshape(-1, 2)}


# The header fields decode always reads: what sizes the arrays.
_SIZES = frozenset({"kind", "num_mel_bins", "num_frames", "num_labels", "num_notes", "num_pedal",
                    "notes_dropped", "num_samples"})


def decode(record: bytes, header_fields: Collection[str] | None = None
           ) -> tuple[dict, dict[str, np.ndarray]]:
  """Returns (header, arrays). Raises RecordError on any schema violation.

  `header_fields`: the header fields the caller reads (besides the sizes, always there); the
  rest are not converted (a schema-3 header of ~30 fields is a third of a window's decode
  time; the input pipeline reads five). None: all, with `augmentation`.
  """
  if record[:4] == legacy_records.MAGIC:
    return legacy_records.decode(record)
  end = _head_end(record)
  return _decode_example(record, header_fields, end)


def _parse(data: bytes) -> dict:
  try:
    example = example_proto.example_class().FromString(data)
  except message.DecodeError as e:
    raise RecordError(f"not a tf.train.Example ({e}) nor a version 1-2 record") from None
  features = {entry.key: entry.value for entry in example.features.feature}
  if len(features) != len(example.features.feature):
    raise RecordError("record repeats a feature name")
  return features


def _decode_example(record: bytes, header_fields: Collection[str] | None, end: int | None
                    ) -> tuple[dict, dict[str, np.ndarray]]:
  """`end`: where the record's first chunk ends when it may be `_serialise`'s two chunks (the
  big bytes read in place); None parses the whole record, as any Example writer lays it out."""
  features = _parse(record if end is None else record[:end])
  if "schema_version" not in features:
    raise RecordError("record has no schema_version feature: not a pipelines.shards record")
  version = _value("schema_version", features["schema_version"])
  if version != VERSION:
    raise RecordError(f"schema version {version}, this code reads {list(READABLE_VERSIONS)}")
  kind = _value("kind", features["kind"]) if "kind" in features else None
  if kind not in _ARRAYS:
    raise RecordError(f"unknown record kind {kind!r}")
  header, params = {}, {}
  if header_fields is None:
    skip = _ARRAYS[kind]
    for name, feature in features.items():
      if name in skip or name == "schema_version":
        continue
      if name.startswith("augmentation/"):
        params[name[13:]] = _value(name, feature)
      else:
        header[name] = _value(name, feature)
    header["augmentation"] = {k: params[k] for k in AUGMENTATION
                              if k in params and params[k] != AUGMENTATION[k]}
  else:
    for name in _SIZES.union(header_fields):
      if name in features:
        header[name] = _value(name, features[name])
  try:
    big, dtype = ("features", FEATURE_DTYPE) if kind == "window" else ("samples", "<i2")
    size = (2 * header["num_mel_bins"] * header["num_frames"] if kind == "window"
            else 2 * header["num_samples"])
    if end is None:
      values = _bytes(features, big, size, dtype)
    else:
      prefix = _tail_prefix(big, size)
      if len(record) != end + len(prefix) + size or not record.startswith(prefix, end):
        return _decode_example(record, header_fields, None)  # laid out by another writer
      values = np.frombuffer(record, dtype, count=size // 2, offset=end + len(prefix))
    labels = _array(features, "labels", "float_list", np.float32, header["num_labels"])
    if kind == "window":
      return header, {
          "features": values.reshape(header["num_mel_bins"], header["num_frames"]),
          "labels": labels,
          "label_mask": _array(features, "label_mask", "int64_list", bool,
                               header["num_labels"]),
          **_notes(header, features)}
    samples = values
    header["labels"] = labels.tolist() if labels.size else None
    return header, {"samples": samples.astype(np.float32) / 32767.0,
                    **_notes(header, features)}
  except KeyError as e:
    raise RecordError(f"record lacks field {e}") from None
