"""pipelines.audio.decode against real files written with libsndfile, good and bad."""

import numpy as np
import pytest
import soundfile

from pipelines.audio import decode


def _tone(rate, seconds=1.0, freq=1000.0, amp=0.5):
  t = np.arange(int(rate * seconds)) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(x, rate):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spectrum) * rate / len(x)


@pytest.mark.parametrize("ext,fmt,subtype", [
    (".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS"),
    (".mp3", "MP3", "MPEG_LAYER_III")])
def test_decodes_resamples_and_downmixes(tmp_path, ext, fmt, subtype):
  if ext not in decode.supported_extensions():
    pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} has no {fmt}")
  rate = 44_100
  left, right = _tone(rate, freq=1000.0), _tone(rate, freq=1000.0, amp=0.1)
  path = tmp_path / f"stereo{ext}"
  soundfile.write(path, np.stack([left, right], axis=1), rate, format=fmt, subtype=subtype)

  out = decode.load_audio(path)

  assert out.dtype == np.float32 and out.ndim == 1
  assert abs(out.shape[0] - 16_000) <= 1200  # lossy codecs add encoder padding
  assert _dominant_hz(out, 16_000) == pytest.approx(1000.0, abs=5)
  # Mean downmix of amplitudes 0.5 and 0.1 in phase -> 0.3 peak.
  assert np.max(np.abs(out[2000:-2000])) == pytest.approx(0.3, rel=0.05)


def test_wav_matches_soxr_hq_reference(tmp_path):
  rate = 48_000
  x = np.random.default_rng(0).uniform(-0.5, 0.5, rate).astype(np.float32)
  path = tmp_path / "mono.wav"
  soundfile.write(path, x, rate, subtype="FLOAT")
  import soxr
  np.testing.assert_array_equal(decode.load_audio(path), soxr.resample(x, rate, 16_000, "HQ"))


def test_16k_input_passes_through_unchanged(tmp_path):
  x = _tone(16_000)
  path = tmp_path / "a.wav"
  soundfile.write(path, x, 16_000, subtype="FLOAT")
  np.testing.assert_array_equal(decode.load_audio(path), x)


def test_missing_file(tmp_path):
  with pytest.raises(decode.MissingAudioError, match="nope.wav"):
    decode.load_audio(tmp_path / "nope.wav")
  with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for callers that expect one
    decode.load_audio(tmp_path / "nope.wav")


def test_directory_is_not_audio(tmp_path):
  (tmp_path / "dir.wav").mkdir()
  with pytest.raises(decode.MissingAudioError, match="directory"):
    decode.load_audio(tmp_path / "dir.wav")


@pytest.mark.parametrize("name", ["notes.txt", "clip.aiff", "noextension"])
def test_unsupported_format(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(b"hello")
  with pytest.raises(decode.UnsupportedFormatError, match=name):
    decode.load_audio(path)


def test_corrupt_file(tmp_path):
  path = tmp_path / "garbage.wav"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(decode.CorruptAudioError, match="garbage.wav") as e:
    decode.load_audio(path)
  assert "BytesIO" not in str(e.value)  # the file's name, not our in-memory buffer's repr


def test_truncated_header(tmp_path):
  good = tmp_path / "good.wav"
  soundfile.write(good, _tone(16_000), 16_000)
  path = tmp_path / "truncated.wav"
  path.write_bytes(good.read_bytes()[:20])
  with pytest.raises(decode.CorruptAudioError, match="truncated.wav"):
    decode.load_audio(path)


def test_content_does_not_match_extension(tmp_path):
  path = tmp_path / "actually_flac.wav"
  soundfile.write(path, _tone(16_000), 16_000, format="FLAC")
  with pytest.raises(decode.CorruptAudioError, match="FLAC"):
    decode.load_audio(path)


def test_zero_byte_file(tmp_path):
  path = tmp_path / "empty.wav"
  path.write_bytes(b"")
  with pytest.raises(decode.EmptyAudioError, match="empty.wav"):
    decode.load_audio(path)


def test_zero_length_audio(tmp_path):
  path = tmp_path / "zero.wav"
  soundfile.write(path, np.zeros((0, 2), np.float32), 44_100)
  assert path.stat().st_size > 0  # a valid header with no frames
  with pytest.raises(decode.EmptyAudioError, match="zero.wav"):
    decode.load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
  x = _tone(16_000)
  x[100] = bad
  path = tmp_path / "nonfinite.wav"
  soundfile.write(path, x, 16_000, subtype="FLOAT")
  with pytest.raises(decode.NonFiniteAudioError, match="nonfinite.wav.*1 samples"):
    decode.load_audio(path)


def test_sample_rate_too_low(tmp_path):
  path = tmp_path / "phone.wav"
  soundfile.write(path, _tone(8_000), 8_000)
  with pytest.raises(decode.SampleRateError, match="8000 Hz"):
    decode.load_audio(path)
  # Explicitly allowed when the caller accepts an empty upper band.
  assert decode.load_audio(path, min_sample_rate=8_000).shape == (16_000,)


def test_silence_is_valid_audio(tmp_path):
  path = tmp_path / "silence.wav"
  soundfile.write(path, np.zeros(16_000, np.float32), 16_000)
  np.testing.assert_array_equal(decode.load_audio(path), np.zeros(16_000, np.float32))


def test_os_level_read_failure_is_typed(tmp_path):
  (tmp_path / "plain.txt").write_text("x")
  with pytest.raises(decode.UnreadableAudioError, match="plain.txt"):
    decode.load_audio(tmp_path / "plain.txt" / "clip.wav")  # a file used as a folder
