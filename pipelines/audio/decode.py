"""Audio decoding: any supported file -> mono float32 at 16 kHz.

Every failure raises a subclass of `AudioError` whose message names the file, so
a Beam job can route the element to its dead-letter output with a readable
reason instead of crashing mid-job or silently dropping the example.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
import soundfile
import soxr

TARGET_SAMPLE_RATE = 16_000

# Extensions we accept and the libsndfile major format each must decode as.
# MP3 needs libsndfile >= 1.1; `supported_extensions()` drops it when absent.
_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG"}


class AudioError(ValueError):
  """Base class: the audio at `path` cannot be used."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


class MissingAudioError(AudioError, FileNotFoundError):
  """The file does not exist."""


class UnreadableAudioError(AudioError):
  """The file exists but the operating system cannot read it (permissions, I/O)."""


class UnsupportedFormatError(AudioError):
  """The extension or container is not one this loader decodes."""


class CorruptAudioError(AudioError):
  """The file claims a supported format but cannot be decoded."""


class EmptyAudioError(AudioError):
  """The file decodes to zero samples."""


class NonFiniteAudioError(AudioError):
  """The decoded samples contain NaN or infinity."""


class SampleRateError(AudioError):
  """The source sample rate is too low to fill the 16 kHz band we analyse."""


def supported_extensions() -> tuple[str, ...]:
  available = soundfile.available_formats()
  return tuple(ext for ext, fmt in _FORMATS.items() if fmt in available)


def load_audio(
    path: str | os.PathLike,
    *,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    min_sample_rate: int = TARGET_SAMPLE_RATE,
) -> np.ndarray:
  """Reads `path` and returns mono float32 samples at `target_sample_rate`.

  Raises:
    MissingAudioError, UnreadableAudioError, UnsupportedFormatError,
    CorruptAudioError, EmptyAudioError, NonFiniteAudioError, SampleRateError.
  """
  path = pathlib.Path(path)
  _check_extension(path)
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise MissingAudioError(path, "file not found") from None
  except IsADirectoryError:
    raise MissingAudioError(path, "is a directory, not an audio file") from None
  except OSError as e:
    raise UnreadableAudioError(path, f"cannot read: {e.strerror or e}") from None
  return decode_audio(
      data,
      name=str(path),
      target_sample_rate=target_sample_rate,
      min_sample_rate=min_sample_rate,
  )


def decode_audio(
    data: bytes,
    *,
    name: str,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    min_sample_rate: int = TARGET_SAMPLE_RATE,
) -> np.ndarray:
  """Decodes encoded audio bytes (e.g. read through a Beam FileSystem).

  `name` is used for the format (its extension) and in error messages.
  """
  fmt = _check_extension(pathlib.PurePath(name))
  if not data:
    raise EmptyAudioError(name, "file is empty (0 bytes)")
  try:
    with soundfile.SoundFile(io.BytesIO(data)) as f:
      if f.format != fmt:
        raise CorruptAudioError(
            name, f"extension says {fmt} but the content is {f.format}")
      source_rate = f.samplerate
      samples = f.read(dtype="float32", always_2d=True)
  except soundfile.LibsndfileError as e:
    # The message names our in-memory buffer, not the file; `name` already says which.
    raise CorruptAudioError(name, f"cannot decode: {e.error_string}") from None
  except (RuntimeError, TypeError) as e:  # soundfile raises these for some broken headers
    raise CorruptAudioError(name, f"cannot decode: {e}") from None
  return _to_mono_resampled(
      samples, source_rate, name, target_sample_rate, min_sample_rate)


def _check_extension(path: pathlib.PurePath) -> str:
  ext = path.suffix.lower()
  if ext not in supported_extensions():
    raise UnsupportedFormatError(
        path, f"unsupported audio format {ext or '(no extension)'!r}; "
        f"supported: {', '.join(supported_extensions())}")
  return _FORMATS[ext]


def _to_mono_resampled(
    samples: np.ndarray,
    source_rate: int,
    name: str,
    target_rate: int,
    min_rate: int,
) -> np.ndarray:
  if samples.shape[0] == 0:
    raise EmptyAudioError(name, "decodes to zero samples")
  if not np.all(np.isfinite(samples)):
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    raise NonFiniteAudioError(name, f"{bad} samples are NaN or infinite")
  if source_rate < min_rate:
    raise SampleRateError(
        name, f"sample rate {source_rate} Hz is below the minimum {min_rate} Hz: "
        "upsampling would leave the upper mel bands empty")
  # Mean of channels: the standard downmix, and what AST's loader does for stereo.
  # Summed column by column: `mean(axis=1)` over 2 channels was 10x slower.
  mono = samples[:, 0].copy()
  for channel in range(1, samples.shape[1]):
    mono += samples[:, channel]
  if samples.shape[1] > 1:
    mono *= np.float32(1.0 / samples.shape[1])
  if source_rate != target_rate:
    mono = soxr.resample(mono, source_rate, target_rate, quality="HQ")
  return np.ascontiguousarray(mono, dtype=np.float32)
