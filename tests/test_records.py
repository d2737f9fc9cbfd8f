"""pipelines.shards.records: the tf.train.Example schema round-trips, reads version 1-2
records, and rejects damage."""

import json
import struct

import numpy as np
import pytest

from pipelines.shards import example_proto, legacy_records, records


def _window():
  features = np.random.default_rng(0).normal(-5, 3, (128, 1024)).astype(np.float32)
  labels = np.linspace(0.1, 0.9, 19).astype(np.float32)
  mask = np.ones(19, bool)
  mask[11] = False
  return features, labels, mask


def test_window_round_trip():
  features, labels, mask = _window()
  data = records.encode_window({"key": "k", "window_index": 2}, features, labels, mask)
  header, arrays = records.decode(data)
  assert header["key"] == "k" and header["kind"] == "window" and header["num_labels"] == 19
  np.testing.assert_array_equal(arrays["features"], features.astype(np.float16))
  assert arrays["features"].shape == (128, 1024) and arrays["features"].dtype == np.float16
  np.testing.assert_array_equal(arrays["labels"], labels)
  np.testing.assert_array_equal(arrays["label_mask"], mask)
  assert len(data) > 2 * 128 * 1024  # float16 payload


def test_unlabelled_window():
  features, _, _ = _window()
  header, arrays = records.decode(records.encode_window({"key": "m"}, features))
  assert header["num_labels"] == 0 and arrays["labels"].shape == (0,)


def test_audio_round_trip_is_int16():
  x = np.sin(np.linspace(0, 100, 16_000)).astype(np.float32) * 0.5
  header, arrays = records.decode(records.encode_audio({"key": "a"}, x, 16_000))
  assert header["num_samples"] == 16_000 and header["sample_rate"] == 16_000
  np.testing.assert_allclose(arrays["samples"], x, atol=1 / 32767)


def test_encoding_is_deterministic():
  features, labels, mask = _window()
  a = records.encode_window({"b": 1, "a": "x", "c": 0.5}, features, labels, mask)
  b = records.encode_window({"c": 0.5, "a": "x", "b": 1}, features, labels, mask)
  assert a == b


def test_header_fields_keep_their_types_and_nulls():
  features, labels, mask = _window()
  params = {"time_stretch": 1.25, "noise_snr_db": 20.0, "noise_seed": 7}
  header, _ = records.decode(records.encode_window(
      {"key": "k", "fold": -1, "start_s": 10.24, "soundfont_sha256": None,
       "augmentation": params}, features, labels, mask))
  assert header["fold"] == -1 and isinstance(header["fold"], int)
  assert header["start_s"] == pytest.approx(10.24) and isinstance(header["start_s"], float)
  assert header["soundfont_sha256"] is None
  assert header["augmentation"] == params  # only what was applied; float32-exact values here
  assert records.decode(records.encode_window({"key": "k"}, features))[0]["augmentation"] == {}


@pytest.mark.parametrize("header,message", [
    ({"performer": None}, "None"), ({"a": [1, 2]}, "list"),
    ({"augmentation": {"reverb": 1.0}}, "reverb"), ({"features": "x"}, "shadow")])
def test_headers_an_example_cannot_hold_are_refused(header, message):
  with pytest.raises(ValueError, match=message):
    records.encode_window(header, np.zeros((2, 2)))


def test_audio_labels_round_trip_as_a_list_or_none():
  labelled = records.encode_audio({"key": "a", "labels": [0.25, 0.5]}, np.zeros(4), 16_000)
  assert records.decode(labelled)[0]["labels"] == [0.25, 0.5]
  assert records.decode(records.encode_audio({"key": "a", "labels": None}, np.zeros(4),
                                             16_000))[0]["labels"] is None


def test_version_2_records_still_decode():
  features, labels, mask = _window()
  new = records.encode_window({"key": "k", "fold": 1, "augmentation": {}}, features, labels,
                              mask, (np.ones((3, 4)), np.ones((1, 2)), 2))
  old = legacy_records.encode_window(*records.decode(new))
  assert old.startswith(b"PPTR\x02")
  (h_old, a_old), (h_new, a_new) = records.decode(old), records.decode(new)
  assert h_old == h_new
  assert a_old.keys() == a_new.keys()
  for name in a_old:
    np.testing.assert_array_equal(a_old[name], a_new[name])


def _corrupt_legacy(data: bytes, how: str) -> bytes:
  if how == "magic":
    return b"PPTR" + b"\x09" + data[5:]
  if how == "truncated":
    return data[:-10]
  if how == "short":
    return data[:5]
  if how == "header":
    return data[:9] + b"\xff" + data[10:]
  raise ValueError(how)


@pytest.mark.parametrize("how,message", [("magic", "version 9"), ("truncated", "payload"),
                                         ("short", "prefix"), ("header", "header")])
def test_damaged_legacy_records_raise(how, message):
  features, labels, mask = _window()
  data = legacy_records.encode_window(
      *records.decode(records.encode_window({"key": "k"}, features, labels, mask)))
  with pytest.raises(records.RecordError, match=message):
    records.decode(_corrupt_legacy(data, how))


def _example(**features) -> bytes:
  example = example_proto.example_class()()
  for name, (kind, values) in features.items():
    getattr(example.features.feature.add(key=name).value, kind).value.extend(values)
  return example.SerializeToString()


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[:-10], "tf.train.Example|holds"),
    (lambda d: b"XXXX" + d[4:], "tf.train.Example|schema_version"),
    (lambda d: _example(kind=("bytes_list", [b"window"])), "schema_version"),
    (lambda d: _example(schema_version=("int64_list", [99])), "version 99"),
    (lambda d: _example(schema_version=("int64_list", [3]), kind=("bytes_list", [b"video"])),
     "unknown record kind"),
    (lambda d: _example(schema_version=("int64_list", [3]), kind=("bytes_list", [b"window"])),
     "lacks field"),
])
def test_damaged_records_raise(damage, message):
  features, labels, mask = _window()
  data = records.encode_window({"key": "k"}, features, labels, mask)
  with pytest.raises(records.RecordError, match=message):
    records.decode(damage(data))


def _feature(example, name: str):
  return next(e.value for e in example.features.feature if e.key == name)


def test_a_repeated_feature_name_is_refused():
  data = records.encode_window({"key": "k"}, np.zeros((2, 2)))
  example = example_proto.example_class().FromString(data)
  example.features.feature.add(key="key").value.bytes_list.value.append(b"other")
  with pytest.raises(records.RecordError, match="repeats a feature"):
    records.decode(example.SerializeToString())


def test_features_of_the_wrong_size_are_refused():
  features, labels, mask = _window()
  data = records.encode_window({"key": "k"}, features[:, :8], labels, mask)
  example = example_proto.example_class().FromString(data)
  _feature(example, "features").bytes_list.value[0] = b"\0" * 10
  with pytest.raises(records.RecordError, match="'features' holds 10 bytes"):
    records.decode(example.SerializeToString())
  example = example_proto.example_class().FromString(data)
  del _feature(example, "labels").float_list.value[-1]
  with pytest.raises(records.RecordError, match="'labels' holds 18"):
    records.decode(example.SerializeToString())


def test_missing_header_field_and_unknown_kind_in_legacy_records():
  text = json.dumps({"kind": "window"}).encode()
  data = struct.pack("<4sBI", b"PPTR", 1, len(text)) + text
  with pytest.raises(records.RecordError, match="lacks field"):
    records.decode(data)
  text = json.dumps({"kind": "video"}).encode()
  with pytest.raises(records.RecordError, match="unknown record kind"):
    records.decode(struct.pack("<4sBI", b"PPTR", 1, len(text)) + text)


def test_bad_shapes_refused_at_encode():
  with pytest.raises(ValueError, match="mel, frames"):
    records.encode_window({}, np.zeros(10))
  with pytest.raises(ValueError, match="mask"):
    records.encode_window({}, np.zeros((2, 2)), np.zeros(19), np.ones(3))


def test_the_window_is_read_in_place_and_any_example_layout_decodes_the_same():
  # The writer puts the log-mel bytes last, in a chunk of their own, so decode reads them
  # from the record itself; the same Example serialised in one chunk (as TensorFlow or any
  # other writer would) must decode to the same header and arrays.
  features, labels, mask = _window()
  data = records.encode_window({"key": "k", "fold": 2}, features, labels, mask,
                               (np.ones((3, 4)), np.ones((1, 2)), 0))
  header, arrays = records.decode(data)
  assert arrays["features"].base is not None and not arrays["features"].flags.owndata
  assert data.endswith(arrays["features"].tobytes())
  one_chunk = example_proto.example_class().FromString(data).SerializeToString()
  assert one_chunk != data
  again_header, again = records.decode(one_chunk)
  assert again_header == header
  for name in arrays:
    assert again[name].tobytes() == arrays[name].tobytes()
  audio = records.encode_audio({"key": "a"}, np.linspace(-1, 1, 1000), 16_000)
  one_chunk = example_proto.example_class().FromString(audio).SerializeToString()
  np.testing.assert_array_equal(records.decode(audio)[1]["samples"],
                                records.decode(one_chunk)[1]["samples"])
