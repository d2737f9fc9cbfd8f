"""Log-mel speed, x real time on one core, against other front ends in the same run.

  python benchmarks/features_speed.py [--seconds 60] [--repeats 5]

All front ends see the same rendered piano audio (16 kHz mono) and are limited
to one BLAS/OpenMP thread, so the ratios are per core. Compared:
  ours            pipelines.features.log_mel, AST settings (128 bins)
  ours@80         the same at 80 bins (the setting kaldi-native-fbank accepts)
  librosa         librosa.feature.melspectrogram (n_fft 512, win 400, hop 160,
                  128 mels, no centring) + log; not Kaldi-compatible, the usual
                  Python baseline
  transformers    ASTFeatureExtractor's numpy Kaldi path (the reference we match)
  knf@80          kaldi-native-fbank (C++ Kaldi), 80 bins
Reported: best-of-`repeats` wall time, x real time, and our ratio to each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import threadpoolctl


def _render_piano(seconds: float) -> np.ndarray:
  import pretty_midi

  from pipelines.audio import render

  pm = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(program=0)
  rng = np.random.default_rng(0)
  t = 0.0
  while t < seconds:
    for pitch in rng.choice(np.arange(36, 96), size=3, replace=False):
      piano.notes.append(pretty_midi.Note(int(rng.integers(40, 110)), int(pitch), t, t + 0.6))
    t += 0.25
  pm.instruments.append(piano)
  return render.render_midi(render.midi_to_bytes(pm),
                            trim=render.TrimConfig(enabled=False)).samples


def _front_ends():
  import kaldi_native_fbank as knf
  import librosa
  from transformers import ASTFeatureExtractor

  from pipelines.audio import features

  extractor = ASTFeatureExtractor(do_normalize=False)
  ours80 = features.FbankConfig(num_mel_bins=80)

  def librosa_logmel(x):
    power = librosa.feature.melspectrogram(
        y=x, sr=16_000, n_fft=512, hop_length=160, win_length=400, center=False,
        window="hann", power=2.0, n_mels=128)
    return np.log(np.maximum(power, 1e-10))

  def knf80(x):
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.htk_compat = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16_000, x)
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])

  return {
      "ours": features.log_mel,
      "ours@80": lambda x: features.log_mel(x, ours80),
      "librosa": librosa_logmel,
      "transformers": lambda x: extractor._extract_fbank_features(
          x, max_length=features.AST.num_frames(len(x))),
      "knf@80": knf80,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  audio = _render_piano(args.seconds)
  seconds = len(audio) / 16_000
  results = {}
  with threadpoolctl.threadpool_limits(limits=1):
    for name, fn in _front_ends().items():
      fn(audio)  # warm-up: caches, lazy imports, filter banks
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn(audio)
        times.append(time.perf_counter() - t0)
      results[name] = min(times)

  print(f"log-mel of {seconds:.1f} s rendered piano, 1 thread, best of {args.repeats}")
  print(f"{'front end':<14}{'seconds':>10}{'x real time':>14}{'ours is x faster':>18}")
  for name, t in results.items():
    ours = results["ours@80"] if name.endswith("@80") else results["ours"]
    print(f"{name:<14}{t:>10.4f}{seconds / t:>14.0f}{t / ours:>18.2f}")
  others = {n: t for n, t in results.items() if not n.startswith("ours")}
  fastest = min(others, key=others.get)
  print(f"fastest other: {fastest}; ours (128 bins) / fastest other speed ratio: "
        f"{others[fastest] / results['ours']:.2f}")


if __name__ == "__main__":
  main()
