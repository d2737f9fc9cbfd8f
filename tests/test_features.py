"""pipelines.audio.features against independent Kaldi front ends.

Oracles:
- `transformers`' ASTFeatureExtractor, numpy path (torchaudio is not installed,
  so it takes it): the AST front end in float64, which REFERENCE.md measured to
  agree with torchaudio.compliance.kaldi.fbank to 5e-4.
- kaldi-native-fbank (the Kaldi C++ algorithm) at 80 bins, since it refuses
  AST's 128 bins at a 512-point FFT.
Tolerance 1e-3 absolute on natural-log energies (the issue's bound); we run in
float32, the oracles' own float32/float64 disagreement is ~5e-4.
"""

import kaldi_native_fbank as knf
import numpy as np
import pytest
from transformers import ASTFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from pipelines.audio import features, frontend, render

TOLERANCE = 1e-3


def _ast_oracle(waveform):
  extractor = ASTFeatureExtractor(do_normalize=False)
  frames = features.AST.num_frames(len(waveform))
  return extractor._extract_fbank_features(waveform.astype(np.float32), max_length=frames)


def _knf(waveform, num_bins):
  opts = knf.FbankOptions()
  opts.frame_opts.samp_freq = 16_000
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = "hanning"
  opts.frame_opts.snip_edges = True
  opts.frame_opts.preemph_coeff = 0.97
  opts.frame_opts.remove_dc_offset = True
  opts.mel_opts.num_bins = num_bins
  opts.mel_opts.low_freq = 20.0
  opts.mel_opts.high_freq = 0.0
  opts.use_energy = False
  opts.htk_compat = True
  fbank = knf.OnlineFbank(opts)
  fbank.accept_waveform(16_000, waveform.tolist())
  fbank.input_finished()
  return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.fixture(scope="module")
def piano(make_midi, chords):
  rendered = render.render_midi(make_midi(chords(velocity=90, seconds=6.0)), name="chords")
  return rendered.samples


def _noise(seconds=3.0, seed=0):
  return (0.1 * np.random.default_rng(seed).standard_normal(int(16_000 * seconds))).astype(
      np.float32)


def test_matches_ast_front_end_on_rendered_piano(piano):
  ours, oracle = features.log_mel(piano), _ast_oracle(piano)
  assert ours.shape == oracle.shape == (features.AST.num_frames(len(piano)), 128)
  assert np.max(np.abs(ours - oracle)) < TOLERANCE


def test_matches_ast_front_end_on_noise():
  x = _noise()
  np.testing.assert_allclose(features.log_mel(x), _ast_oracle(x), atol=TOLERANCE, rtol=0)


def test_float64_fft_keeps_low_energy_bins_exact():
  # Noise puts some narrow low mel bins near zero energy by chance, where a
  # float32 FFT drifts by ~7e-4 in the log; our float64 path stays near 1e-6.
  x = _noise(seconds=20.0, seed=0)
  assert np.max(np.abs(features.log_mel(x) - _ast_oracle(x))) < 1e-5


@pytest.mark.real_data
def test_matches_ast_front_end_on_real_percepiano_render(percepiano_dir):
  midi = percepiano_dir / "virtuoso/data/all_2rounds/Schubert_D960_mv2_8bars_3_07.mid"
  x = render.render_midi(midi).samples
  assert np.max(np.abs(features.log_mel(x) - _ast_oracle(x))) < TOLERANCE


@pytest.mark.parametrize("num_bins", [23, 40, 80])
def test_matches_kaldi_native_fbank_at_bins_it_accepts(piano, num_bins):
  config = features.FbankConfig(num_mel_bins=num_bins)
  ours, oracle = features.log_mel(piano, config), _knf(piano, num_bins)
  assert ours.shape == oracle.shape
  assert np.max(np.abs(ours - oracle)) < TOLERANCE


def test_mel_banks_match_transformers_kaldi_scale():
  theirs = mel_filter_bank(num_frequency_bins=257, num_mel_filters=128, min_frequency=20,
                           max_frequency=8000, sampling_rate=16_000, norm=None,
                           mel_scale="kaldi", triangularize_in_mel_space=True)
  np.testing.assert_allclose(features.mel_banks(), theirs, atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e-12])
def test_silence_and_digital_zero_are_finite(scale):
  x = np.full(16_000, scale, np.float32)
  out = features.log_mel(x)
  assert np.all(np.isfinite(out))
  # DC is removed per frame, so a constant is digital zero: the log floor.
  np.testing.assert_allclose(out, np.log(features.LOG_FLOOR), atol=1e-6)


def test_large_dc_offset_does_not_change_features():
  x = _noise()
  np.testing.assert_allclose(features.log_mel(x + 0.5), features.log_mel(x), atol=TOLERANCE)


@pytest.mark.parametrize("samples,frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2),
                                            (16_000, 98), (163_840, 1022)])
def test_frame_count_follows_kaldi_snip_edges(samples, frames):
  assert features.AST.num_frames(samples) == frames
  assert features.log_mel(np.zeros(samples, np.float32)).shape == (frames, 128)


def test_blocks_do_not_change_results(monkeypatch):
  # Longer than one matmul block: block boundaries must be seamless.
  x = _noise(seconds=50.0, seed=1)
  assert features.AST.num_frames(len(x)) > features._BLOCK_FRAMES
  whole = features.log_mel(x)
  np.testing.assert_allclose(whole, _ast_oracle(x), atol=TOLERANCE)
  monkeypatch.setattr(features, "_BLOCK_FRAMES", 7)
  np.testing.assert_allclose(features.log_mel(x), whole, atol=1e-5)


def test_rejects_multichannel():
  with pytest.raises(ValueError, match="mono"):
    features.log_mel(np.zeros((2, 16_000), np.float32))


def _fixed_length(x: np.ndarray, frames: int = 1024) -> np.ndarray:
  """`[frames, mel]` zero-padded or cut to `frames`, as the AST extractor fixes its input."""
  out = np.zeros((frames, x.shape[1]), x.dtype)
  out[:min(frames, len(x))] = x[:frames]
  return out


def test_fixed_length_matches_ast_extractor(piano):
  ours = _fixed_length(features.log_mel(piano))
  extractor = ASTFeatureExtractor(do_normalize=False)
  theirs = extractor._extract_fbank_features(piano, max_length=1024)
  assert ours.shape == theirs.shape == (1024, 128)
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE)


def test_normalize_matches_ast_extractor(piano):
  x = piano[:16_000 * 3]
  ours = _fixed_length(features.log_mel(x))
  ours = frontend.normalize(ours, features.AUDIOSET_MEAN, features.AUDIOSET_STD)
  theirs = ASTFeatureExtractor()(x, sampling_rate=16_000, return_tensors="np")["input_values"][0]
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE)


def test_normalize_rejects_bad_std():
  with pytest.raises(ValueError, match="std"):
    frontend.normalize(np.zeros(3), 0.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_normalize_is_bitwise_the_plain_formula(dtype):
  # The in-place path must give exactly what `(x - mean) / (2 std)` in float32 gives: the
  # shards' windows (float16) and the recordings' (float32) are normalised by it.
  x = np.random.default_rng(0).normal(-4, 3, (128, 64)).astype(dtype)
  mean, std = -4.2677393, 4.5689974
  want = (x.astype(np.float32) - mean) / (2.0 * std)
  got = frontend.normalize(x, mean, std)
  assert got.dtype == np.float32 and got.tobytes() == want.astype(np.float32).tobytes()
