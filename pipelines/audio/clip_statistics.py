"""Clip-level statistics of one performance's audio: the closed-form baseline's features.

Per performance, on the silence-trimmed audio (the render's trim rule, so a WAV
read from --audio_dir is trimmed the same way as a render):

  mel_mean[128], mel_std[128]   the project's log-mel front end, per bin over time
  loudness (5)                  frame RMS in dB: mean, std, 10th / 50th / 90th percentile
  centroid (2)                  spectral centroid in Hz: mean, std
  onset_strength (2)            librosa's onset envelope: mean, std
  tempo (1)                     librosa's tempo estimate from that envelope (BPM)
  onsets (2)                    detected onsets: count, rate per second
  ioi (7)                       inter-onset intervals: mean, std, median, p10, p90, CV, std of log
  duration (1)                  trimmed length in seconds

Frames are 25 ms every 10 ms, the front end's; everything is deterministic (no
random choice). A clip with fewer than three onsets gets zero interval
statistics rather than NaN, so the ridge sees a value it can weigh.
"""

from __future__ import annotations

import librosa
import numpy as np

from pipelines.audio import frontend, render

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms, the log-mel front end's frame shift
FRAME = 400  # 25 ms, its frame length
N_FFT = 512
_EPS = 1e-5

_SCALARS = ("loudness_mean", "loudness_std", "loudness_p10", "loudness_p50", "loudness_p90",
            "centroid_mean", "centroid_std", "onset_strength_mean", "onset_strength_std",
            "tempo", "onset_count", "onset_rate", "ioi_mean", "ioi_std", "ioi_median",
            "ioi_p10", "ioi_p90", "ioi_cv", "log_ioi_std", "duration_s")


def names(num_mel_bins: int = 128) -> tuple[str, ...]:
  return (*(f"mel_mean_{i}" for i in range(num_mel_bins)),
          *(f"mel_std_{i}" for i in range(num_mel_bins)), *_SCALARS)


def trimmed(samples: np.ndarray) -> np.ndarray:
  start, end = render.trim_bounds(samples, SAMPLE_RATE)
  return samples[start:end]


def _interval_statistics(onset_times: np.ndarray) -> list[float]:
  ioi = np.diff(onset_times)
  if ioi.size < 2:
    return [0.0] * 7
  mean = float(ioi.mean())
  return [mean, float(ioi.std()), float(np.median(ioi)), float(np.percentile(ioi, 10)),
          float(np.percentile(ioi, 90)), float(ioi.std() / mean),
          float(np.log(np.maximum(ioi, _EPS)).std())]


def warm_numba_cache() -> None:
  """Compiles (or loads) librosa's cached numba kernels that `compute` uses, in this process.

  numba writes each cached `guvectorize` kernel as two files with nothing tying the pair
  together (numba/numba#10128). Processes compiling the same kernel at once, on a fresh
  environment, can leave one file from each, and a process that loads the pair calls a null
  pointer: a segfault in librosa's peak picker, seen in `make test` on a clean clone (two
  pytest workers computing statistics). Run once before parallel work starts, the workers
  only read a finished cache."""
  rng = np.random.default_rng(0)
  compute(rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1)


def compute(samples: np.ndarray) -> np.ndarray:
  """The statistics of one 16 kHz mono recording, in the order of `names()` (float64)."""
  samples = trimmed(np.asarray(samples, np.float32))
  if samples.size < FRAME:
    raise ValueError(f"{samples.size / SAMPLE_RATE * 1000:.0f} ms of audio after trimming: "
                     "too short for clip statistics")
  logmel = frontend.log_mel(samples).astype(np.float64)  # [frames, mel]
  rms = librosa.feature.rms(y=samples, frame_length=FRAME, hop_length=HOP)[0]
  loudness = 20.0 * np.log10(np.maximum(rms, _EPS))
  centroid = librosa.feature.spectral_centroid(y=samples, sr=SAMPLE_RATE, n_fft=N_FFT,
                                        hop_length=HOP)[0]
  envelope = librosa.onset.onset_strength(y=samples, sr=SAMPLE_RATE, hop_length=HOP)
  tempo = librosa.feature.tempo(onset_envelope=envelope, sr=SAMPLE_RATE,
                                hop_length=HOP)[0]
  onsets = librosa.onset.onset_detect(onset_envelope=envelope, sr=SAMPLE_RATE, hop_length=HOP,
                                      units="time")
  duration = samples.size / SAMPLE_RATE
  scalars = [loudness.mean(), loudness.std(), *np.percentile(loudness, [10, 50, 90]),
             centroid.mean(), centroid.std(), envelope.mean(), envelope.std(), tempo,
             float(onsets.size), onsets.size / duration, *_interval_statistics(onsets), duration]
  return np.concatenate([logmel.mean(0), logmel.std(0), np.asarray(scalars, np.float64)])
