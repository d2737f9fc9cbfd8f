"""pipelines.audio.windowing: fixed windows, padding, valid lengths, silence."""

import numpy as np
import pytest

from pipelines.audio import windowing

CONFIG = windowing.WindowConfig(frames=100, hop_frames=50)


@pytest.mark.parametrize("total,expected_starts,last_valid", [
    (1, [0], 1), (100, [0], 100), (101, [0, 50], 51), (150, [0, 50], 100),
    (151, [0, 50, 100], 51), (30, [0], 30)])
def test_windows_cover_everything(total, expected_starts, last_valid):
  logmel = np.arange(total * 4, dtype=np.float32).reshape(total, 4)
  windows = windowing.cut(logmel, CONFIG)
  assert [w.start_frame for w in windows] == expected_starts
  assert [w.index for w in windows] == list(range(len(expected_starts)))
  last = windows[-1]
  assert last.valid_frames == last_valid and last.features.shape == (100, 4)
  np.testing.assert_array_equal(last.features[:last_valid], logmel[last.start_frame:])
  np.testing.assert_array_equal(last.features[last_valid:], 0.0)
  covered = set()
  for w in windows:
    covered.update(range(w.start_frame, w.start_frame + w.valid_frames))
  assert covered == set(range(total))


def test_empty_input_has_no_windows():
  assert windowing.cut(np.zeros((0, 128), np.float32)) == []


@pytest.mark.parametrize("frames,hop", [(0, 1), (100, 0), (100, 101), (-5, -5)])
def test_bad_config(frames, hop):
  # A hop beyond the window would leave audio unseen (and once crashed cut()).
  with pytest.raises(ValueError, match="at most the window"):
    windowing.WindowConfig(frames=frames, hop_frames=hop)


def test_near_silence():
  from pipelines.audio import features
  silent = features.log_mel(np.zeros(16_000, np.float32))
  tone = features.log_mel((0.01 * np.sin(np.arange(16_000) * 0.3)).astype(np.float32))
  config = windowing.WindowConfig()
  assert windowing.is_near_silent(windowing.cut(silent, config)[0], config)
  assert not windowing.is_near_silent(windowing.cut(tone, config)[0], config)
  # Digital zero sits at -48.2 dB.
  assert windowing.frame_energy_db(silent).max() == pytest.approx(-48.2, abs=0.1)
