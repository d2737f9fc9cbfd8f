"""Slow checks over the whole real PercePiano release (run by `make test-slow` and CI)."""

import concurrent.futures

import pytest

from pipelines import features, percepiano, render


def _render_summary(path):
  out = render.render_midi(path)
  logmel = features.log_mel(out.samples)
  return out.untrimmed_seconds, out.trimmed_end_seconds, out.seconds, logmel.shape[0]


@pytest.mark.slow
@pytest.mark.real_data
def test_every_real_performance_renders_and_trims_as_measured(percepiano_dir):
  release = percepiano.read_release(percepiano_dir)
  keys = [p.key for p in release.performances]
  with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
    results = list(pool.map(_render_summary, [p.midi_path for p in release.performances],
                            chunksize=16))
  assert len(results) == 1202
  # REFERENCE.md: 774 clips end with 5-20 s of silence after the last note, all
  # of them human performances of Schubert D960 (774 of its 778); no score
  # rendition and no other piece does.
  long_tail = {k.text for k, r in zip(keys, results) if r[1] > 5.0}
  d960_human = {k.text for k in keys
                if k.movement.startswith("Schubert_D960") and not k.performer.startswith("Score")}
  assert len(long_tail) == 774
  assert long_tail <= d960_human and len(d960_human) == 778
  assert max(r[1] for r in results) < 21.0
  # After trimming: median ~12.4 s, every clip has at least one full frame.
  trimmed = sorted(r[2] for r in results)
  assert 10.0 < trimmed[len(trimmed) // 2] < 15.0
  assert all(r[3] > 0 for r in results)
