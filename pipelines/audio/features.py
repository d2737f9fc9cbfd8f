"""Kaldi-compatible log-mel filterbank, exactly as AST computes its input.

AST feeds `torchaudio.compliance.kaldi.fbank(wave, htk_compat=True,
window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)` on 16 kHz
audio. Per 25 ms frame (400 samples, 10 ms hop, frames that do not fit are
dropped: Kaldi's `snip_edges`) Kaldi removes the frame's DC offset, applies
pre-emphasis (x[n] -= 0.97 x[n-1], and x[0] -= 0.97 x[0]), multiplies by a
symmetric Hann window, zero-pads to 512 samples, takes the power spectrum and
applies 128 triangular filters spaced evenly on the mel scale 1127 ln(1 + f/700)
between 20 Hz and Nyquist, then the natural log floored at float32 epsilon (so
silence and digital zero give log(eps), never -inf).

Design: the frames are processed in blocks of 256 (views into the waveform, no
per-frame Python), in float64 through the FFT so we agree with the float64
reference to ~1e-6 rather than float32's ~1e-3 on low-energy bins, and the mel
filters are one float32 matmul. `benchmarks/features_speed.py` measures the
speed against librosa, kaldi-native-fbank and the `transformers` extractor;
`tests/test_features.py` checks the values against the `transformers` Kaldi
front end and kaldi-native-fbank.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.fft

# AudioSet statistics used by the original AST; our pipelines compute their own.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# torch.finfo(torch.float32).eps: the floor Kaldi/torchaudio put under the mel energies.
LOG_FLOOR = float(np.finfo(np.float32).eps)

# Frames per block: bounds memory on hour-long files and keeps each block's
# intermediates in cache (256 measured fastest of 128/256/512/1024).
_BLOCK_FRAMES = 256


@dataclasses.dataclass(frozen=True)
class FbankConfig:
  """AST's arguments to Kaldi fbank (all others are Kaldi defaults)."""

  sample_rate: int = 16_000
  frame_length_ms: float = 25.0
  frame_shift_ms: float = 10.0
  num_mel_bins: int = 128
  preemphasis: float = 0.97
  low_freq_hz: float = 20.0
  high_freq_hz: float = 0.0  # <= 0 means offset from Nyquist, as in Kaldi

  @property
  def frame_length(self) -> int:
    return int(self.sample_rate * self.frame_length_ms / 1000)

  @property
  def frame_shift(self) -> int:
    return int(self.sample_rate * self.frame_shift_ms / 1000)

  @property
  def fft_length(self) -> int:
    return 1 << (self.frame_length - 1).bit_length()  # next power of two

  def num_frames(self, num_samples: int) -> int:
    """Frames Kaldi produces for `num_samples` with snip_edges=True."""
    if num_samples < self.frame_length:
      return 0
    return 1 + (num_samples - self.frame_length) // self.frame_shift


AST = FbankConfig()


def _mel(hz: np.ndarray) -> np.ndarray:
  return 1127.0 * np.log(1.0 + hz / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(config: FbankConfig = AST) -> np.ndarray:
  """Triangular mel filters `[fft_length // 2 + 1, num_mel_bins]` (Kaldi layout).

  Triangles are linear in mel (not in Hz), evaluated at the FFT bin centre
  frequencies; the Nyquist bin gets zero weight, as in Kaldi.
  """
  nyquist = config.sample_rate / 2
  high = config.high_freq_hz if config.high_freq_hz > 0 else nyquist + config.high_freq_hz
  if not 0 <= config.low_freq_hz < high <= nyquist:
    raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist, got {config}")
  num_bins = config.fft_length // 2
  mel_low, mel_high = _mel(np.float64(config.low_freq_hz)), _mel(np.float64(high))
  delta = (mel_high - mel_low) / (config.num_mel_bins + 1)
  edges = mel_low + delta * np.arange(config.num_mel_bins + 2)
  left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  bin_mel = _mel(np.arange(num_bins) * config.sample_rate / config.fft_length)[None, :]
  weights = np.maximum(0.0, np.minimum((bin_mel - left) / (centre - left),
                                       (right - bin_mel) / (right - centre)))
  weights = np.concatenate([weights, np.zeros((config.num_mel_bins, 1))], axis=1)
  return np.ascontiguousarray(weights.T, dtype=np.float32)


def hann_window(config: FbankConfig = AST) -> np.ndarray:
  """Symmetric Hann window (torch.hann_window(n, periodic=False)), Kaldi's "hanning"."""
  n = config.frame_length
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))


def log_mel(waveform: np.ndarray, config: FbankConfig = AST) -> np.ndarray:
  """Kaldi log-mel filterbank of a mono waveform.

  Args:
    waveform: `[samples]` float audio at `config.sample_rate` (any scale; AST
      uses [-1, 1] floats).
    config: front-end parameters; the default is AST's.

  Returns:
    `[frames, num_mel_bins]` float32 natural-log mel energies, `frames =
    config.num_frames(samples)` (0 for audio shorter than one frame).
  """
  waveform = np.asarray(waveform, dtype=np.float32)
  if waveform.ndim != 1:
    raise ValueError(f"expected a mono [samples] waveform, got shape {waveform.shape}")
  num_frames = config.num_frames(waveform.shape[0])
  out = np.empty((num_frames, config.num_mel_bins), dtype=np.float32)
  if num_frames == 0:
    return out
  n, coeff = config.frame_length, config.preemphasis
  frames = np.lib.stride_tricks.sliding_window_view(
      waveform, n)[::config.frame_shift][:num_frames]
  window, banks = hann_window(config), mel_banks(config)
  # Time domain and FFT in float64: a float32 FFT is faster but loses ~1e-3 in
  # the log of low-energy bins (measured in BUILD_NOTES.md); float64 costs
  # little because the work is dominated by memory passes, not arithmetic.
  frame = np.empty((_BLOCK_FRAMES, n))
  padded = np.zeros((_BLOCK_FRAMES, config.fft_length))
  for start in range(0, num_frames, _BLOCK_FRAMES):
    count = min(_BLOCK_FRAMES, num_frames - start)
    f, p = frame[:count], padded[:count]
    np.copyto(f, frames[start:start + count])
    f -= f.mean(axis=1, keepdims=True)  # Kaldi's per-frame DC removal
    np.multiply(f[:, :-1], -coeff, out=p[:, 1:n])  # pre-emphasis: x[i] - c x[i-1] ...
    p[:, 1:n] += f[:, 1:]
    np.multiply(f[:, 0], 1.0 - coeff, out=p[:, 0])  # ... and x[0] - c x[0]
    p[:, :n] *= window
    spectrum = scipy.fft.rfft(p, axis=1)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    energies = power.astype(np.float32) @ banks
    np.log(np.maximum(energies, LOG_FLOOR, out=energies), out=out[start:start + count])
  return out
