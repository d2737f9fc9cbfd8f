"""Record schema versions 1 and 2 (before `tf.train.Example`): read, never written by jobs.

Shards written before schema version 3 hold records of this project's own binary layout:

  magic  b"PPTR" | version u8 | header_len u32 LE | header (UTF-8 JSON, sorted keys)
  | payload

  kind "window":  features float16 LE `[num_mel_bins, num_frames]`, labels float32 LE
                  `[num_labels]`, label mask u8 `[num_labels]`; then (version 2) notes
                  float32 LE `[num_notes, 4]` and pedal float32 LE `[num_pedal, 2]`
                  (`num_notes` -1: none).
  kind "audio":   int16 LE `[num_samples]`, then the note targets as above.

`pipelines.shards.records.decode` hands such records here, so old shards keep working.
`encode_window` writes version 2, for the tests that read old shards and for the input
benchmark's side-by-side baseline; the jobs write version 3 only.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from pipelines.shards.layout import RecordError

MAGIC = b"PPTR"
VERSION = 2  # what encode_window writes
READABLE_VERSIONS = (1, 2)  # 1: before note targets
# Log-mel values are stored as little-endian float16: half the bytes, below the front end's
# own precision.
FEATURE_DTYPE = np.dtype("<f2")
_PREFIX = struct.Struct("<4sBI")

NO_NOTES = {"num_notes": -1, "num_pedal": -1, "notes_dropped": 0}


def _pack(header: dict, payload: bytes) -> bytes:
  text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
  return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + payload


def _notes_part(notes: tuple[np.ndarray, np.ndarray, int] | None) -> tuple[dict, bytes]:
  """Header fields and payload bytes of `(notes [N, 4], pedal [P, 2], dropped)` or None."""
  if notes is None:
    return dict(NO_NOTES), b""
  values, pedal, dropped = notes
  values = np.asarray(values, "<f4").reshape(-1, 4)
  pedal = np.asarray(pedal, "<f4").reshape(-1, 2)
  return ({"num_notes": values.shape[0], "num_pedal": pedal.shape[0],
           "notes_dropped": int(dropped)}, values.tobytes() + pedal.tobytes())


def encode_window(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
  """A window as schema 2 wrote it, from what `records.decode` returns for one: `header`
  (its size fields are recomputed) and `arrays` (`features [mel, frames]`, `labels`,
  `label_mask`, `notes`, `pedal`); `header["num_notes"]` -1 writes no note targets."""
  features, labels = arrays["features"], np.asarray(arrays["labels"], "<f4")
  has_notes = header.get("num_notes", 0) >= 0
  note_fields, note_bytes = _notes_part(
      (arrays["notes"], arrays["pedal"], header.get("notes_dropped", 0)) if has_notes else None)
  full = dict(header, kind="window", num_mel_bins=features.shape[0],
              num_frames=features.shape[1], num_labels=labels.shape[0], **note_fields)
  payload = (np.asarray(features, FEATURE_DTYPE).tobytes() + labels.tobytes()
             + np.asarray(arrays["label_mask"], np.uint8).tobytes() + note_bytes)
  return _pack(full, payload)


def _notes_size(header: dict, version: int) -> int:
  if version < 2 or header["num_notes"] < 0:
    return 0
  return 16 * header["num_notes"] + 8 * header["num_pedal"]


def _decode_notes(header: dict, payload: memoryview, version: int) -> dict[str, np.ndarray]:
  """`notes [N, 4]` and `pedal [P, 2]` (empty, and header num_notes -1, when none)."""
  if version < 2:
    header.update(NO_NOTES)
  if header["num_notes"] < 0:
    return {"notes": np.zeros((0, 4), np.float32), "pedal": np.zeros((0, 2), np.float32)}
  n = 16 * header["num_notes"]
  return {"notes": np.frombuffer(payload[:n], "<f4").reshape(-1, 4),
          "pedal": np.frombuffer(payload[n:], "<f4").reshape(-1, 2)}


def decode(record: bytes) -> tuple[dict, dict[str, np.ndarray]]:
  """Returns (header, arrays). Raises RecordError on any schema violation."""
  if len(record) < _PREFIX.size:
    raise RecordError(f"record of {len(record)} bytes is shorter than the prefix")
  magic, version, header_len = _PREFIX.unpack_from(record)
  if magic != MAGIC:
    raise RecordError(f"bad magic {magic!r}")
  if version not in READABLE_VERSIONS:
    raise RecordError(f"schema version {version}, this code reads {list(READABLE_VERSIONS)}")
  start = _PREFIX.size
  try:
    header = json.loads(record[start:start + header_len].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f"header is not UTF-8 JSON: {e}") from None
  payload = memoryview(record)[start + header_len:]
  kind = header.get("kind")
  try:
    notes = _notes_size(header, version)
    if kind == "window":
      mel, frames, n = header["num_mel_bins"], header["num_frames"], header["num_labels"]
      sizes = (2 * mel * frames, 4 * n, n)
      if len(payload) != sum(sizes) + notes:
        raise RecordError(f"window payload is {len(payload)} bytes, header implies "
                          f"{sum(sizes) + notes}")
      features = np.frombuffer(payload[:sizes[0]], FEATURE_DTYPE).reshape(mel, frames)
      labels = np.frombuffer(payload[sizes[0]:sizes[0] + sizes[1]], "<f4")
      mask = np.frombuffer(payload[sizes[0] + sizes[1]:sum(sizes)], np.uint8).astype(bool)
      return header, {"features": features, "labels": labels, "label_mask": mask,
                      **_decode_notes(header, payload[sum(sizes):], version)}
    if kind == "audio":
      size = 2 * header["num_samples"]
      if len(payload) != size + notes:
        raise RecordError(f"audio payload is {len(payload)} bytes, header implies "
                          f"{size + notes}")
      samples = np.frombuffer(payload[:size], "<i2").astype(np.float32) / 32767.0
      return header, {"samples": samples, **_decode_notes(header, payload[size:], version)}
  except KeyError as e:
    raise RecordError(f"header lacks field {e}") from None
  raise RecordError(f"unknown record kind {kind!r}")
