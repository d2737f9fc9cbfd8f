"""Slow checks over the whole real PercePiano release (run by `make test-slow` and CI)."""


import numpy as np
import pretty_midi
import pytest

from pipelines import process_pool
from pipelines.audio import features, render
from pipelines.datasets import percepiano


def _render_summary(path):
  out = render.render_midi(path)
  logmel = features.log_mel(out.samples)
  # TimGM6mb through midirenderer is digital silence at velocity <= 10 (measured),
  # so only louder notes must survive trimming.
  onsets = [n.start for i in pretty_midi.PrettyMIDI(str(path)).instruments for n in i.notes
            if n.velocity > 10]
  kept = (out.trimmed_start_seconds, out.untrimmed_seconds - out.trimmed_end_seconds)
  return out.trimmed_end_seconds, out.seconds, logmel.shape[0], kept, (min(onsets), max(onsets))


@pytest.mark.slow
@pytest.mark.real_data
def test_every_real_performance_renders_and_trims_as_measured(percepiano_dir):
  release = percepiano.read_release(percepiano_dir)
  keys = [p.key for p in release.performances]
  # In make test-slow this process has started JAX's threads by now: spawn, never fork.
  with process_pool.spawning(2) as pool:
    results = list(pool.map(_render_summary, [p.midi_path for p in release.performances],
                            chunksize=16))
  assert len(results) == 1202
  # REFERENCE.md: 774 clips end with 5-20 s of silence after the end of the
  # last note, all of them human performances of Schubert D960 (774 of its
  # 778); no score rendition and no other piece does.
  long_tail = {k.text for k, r in zip(keys, results) if r[0] > 5.0}
  d960_human = {k.text for k in keys
                if k.movement.startswith("Schubert_D960") and not k.performer.startswith("Score")}
  assert len(long_tail) == 774
  assert long_tail <= d960_human and len(d960_human) == 778
  # Trimming never cuts an audible onset (a few very quiet D960 clips also lose
  # 10-25 s of a held chord whose sample has decayed below -80 dB re peak).
  for key, (_, _, _, (start, end), (first, last)) in zip(keys, results):
    assert start <= first + 1e-3 and end >= last, key
  # REFERENCE.md after trimming: median 12.4 s, p90 44 s; every clip has frames.
  trimmed = np.array([r[1] for r in results])
  assert 10.0 < np.median(trimmed) < 15.0
  assert 35.0 < np.percentile(trimmed, 90) < 50.0
  assert all(r[2] > 0 for r in results)
