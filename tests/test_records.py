"""pipelines.shards.records: the versioned binary schema round-trips and rejects damage."""

import json
import struct

import numpy as np
import pytest

from pipelines.shards import records


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
  a = records.encode_window({"b": 1, "a": [1, 2]}, features, labels, mask)
  b = records.encode_window({"a": [1, 2], "b": 1}, features, labels, mask)
  assert a == b


def _corrupt(data: bytes, how: str) -> bytes:
  if how == "magic":
    return b"XXXX" + data[4:]
  if how == "version":
    return data[:4] + bytes([99]) + data[5:]
  if how == "truncated":
    return data[:-10]
  if how == "short":
    return data[:5]
  if how == "header":
    return data[:9] + b"\xff" + data[10:]
  raise ValueError(how)


@pytest.mark.parametrize("how,message", [("magic", "magic"), ("version", "version 99"),
                                         ("truncated", "payload"), ("short", "prefix"),
                                         ("header", "header")])
def test_damaged_records_raise(how, message):
  features, labels, mask = _window()
  data = records.encode_window({"key": "k"}, features, labels, mask)
  with pytest.raises(records.RecordError, match=message):
    records.decode(_corrupt(data, how))


def test_missing_header_field_and_unknown_kind():
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
