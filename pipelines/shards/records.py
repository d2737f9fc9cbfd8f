"""The shard record format (schema version 1): a fixed binary layout, never pickle.

A record is

  magic  b"PPTR" | version u8 | header_len u32 LE | header (UTF-8 JSON, sorted keys)
  | payload

and the header says what the payload holds:

  kind "window":  features float16 LE `[num_mel_bins, num_frames]` (mel-major, as the
                  issue's `[128, 1024]`), then labels float32 LE `[num_labels]`
                  (num_labels 0 for unlabelled MAESTRO windows) and a label mask u8
                  `[num_labels]` (1 = the label is valid for this augmented window).
  kind "audio":   the clean 16 kHz mono waveform as int16 LE `[num_samples]`, kept
                  so augmented shards can be regenerated without the sources.

Header fields (all JSON scalars or lists): `kind`, `key` (performance key),
`variant` (0 = clean, k > 0 = k-th augmentation), `augmentation` (parameters),
`split`, `fold`, plus per kind: windows carry `window_index`, `window_count`,
`valid_frames`, `start_s`, `performer`, `performer_id`, `passage`,
`movement`; audio carries `sample_rate` and `num_samples`. `SPEC` below is
written into every dataset's metadata.
"""

from __future__ import annotations

import json
import struct

import numpy as np

MAGIC = b"PPTR"
VERSION = 1
# Log-mel values are stored as little-endian float16: half the bytes, below the front end's
# own precision.
FEATURE_DTYPE = np.dtype("<f2")
_PREFIX = struct.Struct("<4sBI")

SPEC = {
    "schema_version": VERSION,
    "layout": "magic b'PPTR' | version u8 | header_len u32 LE | header UTF-8 JSON | payload",
    "window_payload": "features float16 LE [num_mel_bins, num_frames] | labels float32 LE "
                      "[num_labels] | label_mask u8 [num_labels]",
    "audio_payload": "int16 LE [num_samples] at sample_rate",
}


class RecordError(ValueError):
  """A record does not follow the schema; the message says where and why."""


def _pack(header: dict, payload: bytes) -> bytes:
  text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
  return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + payload


def encode_window(header: dict, features: np.ndarray, labels: np.ndarray | None = None,
                  label_mask: np.ndarray | None = None) -> bytes:
  """`features` is `[mel, frames]`; `labels`/`label_mask` `[19]` or None (unlabelled)."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"features must be [mel, frames], got {features.shape}")
  labels = np.zeros(0, np.float32) if labels is None else np.asarray(labels, np.float32)
  mask = np.ones(labels.shape, np.uint8) if label_mask is None else np.asarray(label_mask,
                                                                               np.uint8)
  if mask.shape != labels.shape:
    raise ValueError(f"label mask {mask.shape} does not match labels {labels.shape}")
  full = dict(header, kind="window", num_mel_bins=features.shape[0],
              num_frames=features.shape[1], num_labels=labels.shape[0])
  payload = (features.astype(FEATURE_DTYPE).tobytes() + labels.astype("<f4").tobytes()
             + mask.tobytes())
  return _pack(full, payload)


def encode_audio(header: dict, samples: np.ndarray, sample_rate: int) -> bytes:
  """Stores float samples in [-1, 1] as int16 PCM (clipped)."""
  pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767)
  full = dict(header, kind="audio", sample_rate=sample_rate, num_samples=int(pcm.shape[0]))
  return _pack(full, pcm.astype("<i2").tobytes())


def decode(record: bytes) -> tuple[dict, dict[str, np.ndarray]]:
  """Returns (header, arrays). Raises RecordError on any schema violation."""
  if len(record) < _PREFIX.size:
    raise RecordError(f"record of {len(record)} bytes is shorter than the prefix")
  magic, version, header_len = _PREFIX.unpack_from(record)
  if magic != MAGIC:
    raise RecordError(f"bad magic {magic!r}")
  if version != VERSION:
    raise RecordError(f"schema version {version}, this code reads {VERSION}")
  start = _PREFIX.size
  try:
    header = json.loads(record[start:start + header_len].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f"header is not UTF-8 JSON: {e}") from None
  payload = memoryview(record)[start + header_len:]
  kind = header.get("kind")
  try:
    if kind == "window":
      mel, frames, n = header["num_mel_bins"], header["num_frames"], header["num_labels"]
      sizes = (2 * mel * frames, 4 * n, n)
      if len(payload) != sum(sizes):
        raise RecordError(f"window payload is {len(payload)} bytes, header implies {sum(sizes)}")
      features = np.frombuffer(payload[:sizes[0]], FEATURE_DTYPE).reshape(mel, frames)
      labels = np.frombuffer(payload[sizes[0]:sizes[0] + sizes[1]], "<f4")
      mask = np.frombuffer(payload[sizes[0] + sizes[1]:], np.uint8).astype(bool)
      return header, {"features": features, "labels": labels, "label_mask": mask}
    if kind == "audio":
      if len(payload) != 2 * header["num_samples"]:
        raise RecordError(f"audio payload is {len(payload)} bytes, header implies "
                          f"{2 * header['num_samples']}")
      samples = np.frombuffer(payload, "<i2").astype(np.float32) / 32767.0
      return header, {"samples": samples}
  except KeyError as e:
    raise RecordError(f"header lacks field {e}") from None
  raise RecordError(f"unknown record kind {kind!r}")
