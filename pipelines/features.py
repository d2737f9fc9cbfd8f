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

Design: DC removal, pre-emphasis, the window and the DFT are all linear in the
frame, so we fold them into one `[400, 514]` real matrix (cosine and sine
columns) computed once in float64. A window of audio is then two BLAS matmuls:
`frames @ A` (spectrum) and `power @ mel_banks`. This is both simpler and faster
than per-frame FFT calls; `benchmarks/features_speed.py` measures it against
librosa, kaldi-native-fbank and the `transformers` extractor, and
`tests/test_features.py` checks it against the `transformers` Kaldi front end.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# AudioSet statistics used by the original AST; our pipelines compute their own.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# torch.finfo(torch.float32).eps: the floor Kaldi/torchaudio put under the mel energies.
LOG_FLOOR = float(np.finfo(np.float32).eps)

# Frames per matmul block: bounds memory on hour-long files and keeps the
# [block, 514] intermediate in cache.
_BLOCK_FRAMES = 2048


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


@functools.lru_cache(maxsize=8)
def frame_operator(config: FbankConfig = AST) -> np.ndarray:
  """`[frame_length, 2 * (fft_length // 2 + 1)]`: frame -> (Re, Im) of its spectrum.

  Folds DC removal, pre-emphasis, the symmetric Hann window and the zero-padded
  DFT into one matrix (built in float64, stored in float32).
  """
  n = config.frame_length
  dc_removal = np.eye(n) - np.full((n, n), 1.0 / n)
  preemphasis = np.eye(n) - config.preemphasis * np.eye(n, k=-1)
  preemphasis[0, 0] -= config.preemphasis  # Kaldi: x[0] -= coeff * x[0]
  # Symmetric Hann (torch.hann_window(n, periodic=False)), Kaldi's "hanning".
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
  time_domain = window[:, None] * preemphasis @ dc_removal  # column form: y = M x
  k = np.arange(config.fft_length // 2 + 1)
  phase = 2 * np.pi * np.outer(np.arange(n), k) / config.fft_length
  dft = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1)  # [n, 2 * bins]
  return np.ascontiguousarray(time_domain.T @ dft, dtype=np.float32)


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
  # Subtract the waveform mean as AST's loader does. Per-frame DC removal makes
  # this a no-op mathematically; it keeps float32 frames well-conditioned when a
  # file carries a large DC offset.
  waveform = waveform - waveform.mean(dtype=np.float64).astype(np.float32)
  frames = np.lib.stride_tricks.sliding_window_view(
      waveform, config.frame_length)[::config.frame_shift][:num_frames]
  operator, banks = frame_operator(config), mel_banks(config)
  half = operator.shape[1] // 2
  for start in range(0, num_frames, _BLOCK_FRAMES):
    spectrum = frames[start:start + _BLOCK_FRAMES] @ operator
    power = np.square(spectrum[:, :half])
    power += np.square(spectrum[:, half:])
    energies = power @ banks
    np.log(np.maximum(energies, LOG_FLOOR, out=energies), out=out[start:start + len(energies)])
  return out


def pad_or_crop(features: np.ndarray, num_frames: int = 1024) -> tuple[np.ndarray, int]:
  """Fixes the time axis of `[frames, mel]` features to `num_frames`.

  Shorter inputs are padded with zeros at the end (as AST does, in the log
  domain); longer ones are cut. Returns the features and the number of valid
  (unpadded) frames.
  """
  valid = min(features.shape[0], num_frames)
  out = np.zeros((num_frames,) + features.shape[1:], dtype=features.dtype)
  out[:valid] = features[:valid]
  return out, valid


def normalize(features: np.ndarray, mean: float, std: float) -> np.ndarray:
  """AST's normalisation `(x - mean) / (2 std)` with dataset statistics."""
  if not std > 0:
    raise ValueError(f"std must be positive, got {std}")
  return ((features - mean) / (2.0 * std)).astype(np.float32)
