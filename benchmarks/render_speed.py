"""MIDI rendering speed, x real time, on real PercePiano performances.

  python benchmarks/render_speed.py --percepiano_dir ../shared/data/percepiano [--count 24]

Baseline in the same run: the bare synthesiser call (`midirenderer`, 48 kHz
stereo WAV bytes). Ours: `pipelines.render.render_midi` (synthesis + decode +
downmix + soxr HQ resample to 16 kHz + silence trim). The ratio is the cost of
everything we add around the synthesiser. Seconds are untrimmed audio seconds.
"""

from __future__ import annotations

import argparse
import time

import midirenderer
import numpy as np

from pipelines.audio import render
from pipelines.datasets import percepiano


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--percepiano_dir", default="../shared/data/percepiano")
  parser.add_argument("--count", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  performances = [p for p in percepiano.read_release(args.percepiano_dir).performances
                  if p.midi_path is not None]
  rng = np.random.default_rng(args.seed)
  chosen = [performances[i] for i in rng.choice(len(performances), args.count, replace=False)]
  midis = [p.midi_path.read_bytes() for p in chosen]
  font = render.load_soundfont()

  midirenderer.render_wave_from(font.data, midis[0])  # warm-up
  t0 = time.perf_counter()
  for midi in midis:
    midirenderer.render_wave_from(font.data, midi)
  synth_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  outputs = [render.render_midi(midi) for midi in midis]
  ours_s = time.perf_counter() - t0

  audio_s = sum(o.untrimmed_seconds for o in outputs)
  trimmed_s = sum(o.trimmed_start_seconds + o.trimmed_end_seconds for o in outputs)
  print(f"{args.count} PercePiano performances, {audio_s:.1f} s of audio "
        f"({trimmed_s:.1f} s trimmed as silence), 1 process")
  print(f"{'stage':<34}{'seconds':>9}{'x real time':>13}")
  print(f"{'midirenderer synthesis (baseline)':<34}{synth_s:>9.2f}{audio_s / synth_s:>13.0f}")
  print(f"{'render_midi (ours, end to end)':<34}{ours_s:>9.2f}{audio_s / ours_s:>13.0f}")
  print(f"overhead of decode+resample+trim: {ours_s / synth_s:.2f}x the synthesis time")


if __name__ == "__main__":
  main()
