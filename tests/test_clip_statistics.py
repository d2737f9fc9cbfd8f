"""pipelines.audio.clip_statistics: known answers on synthetic recordings."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pipelines.audio import clip_statistics

SR = clip_statistics.SAMPLE_RATE


def clicks(period_s: float, seconds: float, lead_s: float = 1.0, amplitude: float = 0.5):
  """Decaying 1 kHz bursts every `period_s`, with `lead_s` of silence on both sides."""
  n = int((seconds + 2 * lead_s) * SR)
  x = np.zeros(n, np.float32)
  burst = amplitude * np.sin(2 * np.pi * 1000 * np.arange(800) / SR) * np.exp(
      -np.arange(800) / 200)
  for start in np.arange(lead_s, lead_s + seconds, period_s):
    i = int(start * SR)
    x[i:i + 800] += burst
  return x


def named(values: np.ndarray) -> dict[str, float]:
  return dict(zip(clip_statistics.names(), values))


def test_every_statistic_is_named_and_finite():
  values = clip_statistics.compute(clicks(0.5, 8.0))
  assert values.shape == (len(clip_statistics.names()),) == (276,)
  assert np.all(np.isfinite(values))


def test_onsets_and_intervals_of_a_click_train():
  s = named(clip_statistics.compute(clicks(0.5, 10.0)))
  assert s["onset_count"] == pytest.approx(20, abs=1)
  assert s["ioi_mean"] == pytest.approx(0.5, abs=0.02)
  assert s["ioi_median"] == pytest.approx(0.5, abs=0.02)
  assert s["ioi_cv"] < 0.1
  # Silence trimmed: the second of silence on each side is not counted.
  assert s["duration_s"] == pytest.approx(9.55, abs=0.3)
  assert s["onset_rate"] == pytest.approx(s["onset_count"] / s["duration_s"])
  faster = named(clip_statistics.compute(clicks(0.25, 10.0)))
  assert faster["onset_count"] == pytest.approx(40, abs=2)
  assert faster["ioi_mean"] == pytest.approx(0.25, abs=0.02)


def test_loudness_follows_the_level():
  tone = lambda a: (a * np.sin(2 * np.pi * 440 * np.arange(4 * SR) / SR)).astype(np.float32)
  loud, quiet = (named(clip_statistics.compute(tone(a))) for a in (0.5, 0.05))
  assert loud["loudness_p50"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.5)
  assert loud["loudness_p50"] - quiet["loudness_p50"] == pytest.approx(20.0, abs=0.5)
  assert loud["centroid_mean"] == pytest.approx(440, rel=0.2)
  # A steady tone has fewer than three onsets: zero interval statistics, not NaN.
  assert loud["ioi_mean"] == 0.0 and loud["log_ioi_std"] == 0.0


def test_silence_and_too_short_audio_are_errors():
  with pytest.raises(ValueError, match="silence"):
    clip_statistics.compute(np.zeros(SR, np.float32))
  with pytest.raises(ValueError, match="too short"):
    clip_statistics.compute(np.full(100, 0.1, np.float32))


def test_the_numba_warm_up_compiles_the_peak_picker_into_the_cache(tmp_path):
  """warm_numba_cache leaves librosa's peak picker (the kernel whose cache, written by two
  processes at once, segfaulted `make test` on a clean clone) compiled in numba's cache, so
  parallel workers only read it. Run in a fresh interpreter with an empty cache directory."""
  repo = pathlib.Path(__file__).resolve().parent.parent
  env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
  subprocess.run([sys.executable, "-c", "from pipelines.audio import clip_statistics; "
                  "clip_statistics.warm_numba_cache()"], cwd=repo, env=env, check=True,
                 timeout=300)
  cached = {p.name for p in tmp_path.rglob("*.nbi")}
  assert any("peak_pick" in name for name in cached), sorted(cached)
  assert any(name.startswith("guf-") for name in cached), sorted(cached)  # the gufunc wrapper
