"""pipelines.audio.render: determinism, checksums, the silence rule, and bad MIDI."""

import hashlib

import librosa
import numpy as np
import pytest

from pipelines.audio import render


def test_render_is_deterministic_and_reports_soundfont_checksum(make_midi, chords):
  midi = make_midi(chords())
  a, b = render.render_midi(midi), render.render_midi(midi)
  np.testing.assert_array_equal(a.samples, b.samples)
  expected = hashlib.sha256(render.default_soundfont().read_bytes()).hexdigest()
  assert a.soundfont_sha256 == expected
  assert a.samples.dtype == np.float32 and a.sample_rate == 16_000
  assert 3.5 < a.seconds < 6.0


def test_renders_from_path_and_bytes_identically(tmp_path, make_midi, chords):
  midi = make_midi(chords())
  path = tmp_path / "p.mid"
  path.write_bytes(midi)
  np.testing.assert_array_equal(render.render_midi(path).samples,
                                render.render_midi(midi).samples)


def test_trims_late_end_of_track_on_a_quiet_render(make_midi, chords):
  # Quiet playing (peak far below 0 dBFS) and an end-of-track marker 10 s after
  # the last note, like the real Schubert D960 files.
  midi = make_midi(chords(velocity=20, seconds=3.0), end_of_track_s=13.0)
  untrimmed = render.render_midi(midi, trim=render.TrimConfig(enabled=False))
  assert untrimmed.seconds > 12.5
  peak_dbfs = 20 * np.log10(np.max(np.abs(untrimmed.samples)))
  assert peak_dbfs < -35
  # The regression this rule exists for: librosa's trim leaves the silence in.
  _, (start, end) = librosa.effects.trim(untrimmed.samples, top_db=60)
  assert (end - start) / 16_000 > 12.5

  trimmed = render.render_midi(midi)
  assert 3.0 < trimmed.seconds < 4.5  # notes end at 3.0 s + release tail
  assert trimmed.trimmed_end_seconds > 8.5
  assert trimmed.untrimmed_seconds == pytest.approx(untrimmed.seconds)
  # Trimming cuts, it never rescales: loudness is a label.
  start = int(round(trimmed.trimmed_start_seconds * 16_000))
  np.testing.assert_array_equal(trimmed.samples,
                                untrimmed.samples[start:start + len(trimmed.samples)])


def test_trim_keeps_decay_tail():
  rate = 16_000
  t = np.arange(3 * rate) / rate
  tone = np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)  # ~26 dB down per second
  x = np.concatenate([np.zeros(rate), tone, np.zeros(5 * rate)]).astype(np.float32)
  start, end = render.trim_bounds(x, rate)
  assert abs(start - rate) <= 0.12 * rate
  # 80 dB below the peak is reached ~3 s into the decay: the whole tail stays.
  assert end >= 3.9 * rate


def test_trim_rejects_digital_silence():
  with pytest.raises(ValueError, match="silence"):
    render.trim_bounds(np.zeros(16_000, np.float32), 16_000)


def test_no_gain_normalisation(make_midi, chords):
  soft = render.render_midi(make_midi(chords(velocity=30)))
  loud = render.render_midi(make_midi(chords(velocity=110)))
  rms = lambda x: np.sqrt(np.mean(np.square(x.samples, dtype=np.float64)))
  assert rms(loud) > 3 * rms(soft)


def test_midi_without_notes_is_a_render_error(make_midi):
  with pytest.raises(render.RenderError, match="empty.mid.*silent"):
    render.render_midi(make_midi([]), name="empty.mid")


def test_missing_midi(tmp_path):
  with pytest.raises(render.RenderError, match="gone.mid.*not found"):
    render.render_midi(tmp_path / "gone.mid")


def test_not_midi(tmp_path):
  path = tmp_path / "text.mid"
  path.write_text("not midi")
  with pytest.raises(render.RenderError, match="text.mid.*MThd"):
    render.render_midi(path)


def test_truncated_midi(make_midi, chords):
  with pytest.raises(render.RenderError, match="cut.mid.*synthesiser failed"):
    render.render_midi(make_midi(chords())[:60], name="cut.mid")


def test_missing_and_invalid_soundfont(tmp_path, make_midi, chords):
  with pytest.raises(FileNotFoundError, match="nope.sf2"):
    render.render_midi(make_midi(chords()), soundfont=tmp_path / "nope.sf2")
  bogus = tmp_path / "bogus.sf2"
  bogus.write_bytes(b"not a soundfont")
  with pytest.raises(ValueError, match="bogus.sf2"):
    render.render_midi(make_midi(chords()), soundfont=bogus)


def test_soundfont_checksum_follows_file_changes(tmp_path):
  copy = tmp_path / "font.sf2"
  copy.write_bytes(render.default_soundfont().read_bytes())
  first = render.soundfont_sha256(copy)
  copy.write_bytes(copy.read_bytes() + b"\0")
  assert render.soundfont_sha256(copy) != first


@pytest.mark.real_data
def test_real_d960_clip_loses_its_trailing_silence(percepiano_dir):
  midi = percepiano_dir / "virtuoso/data/all_2rounds/Schubert_D960_mv2_8bars_3_07.mid"
  out = render.render_midi(midi)
  assert out.untrimmed_seconds > 45 and out.trimmed_end_seconds > 20
  assert 24 < out.seconds < 26


def test_unreadable_midi_path(tmp_path):
  (tmp_path / "folder.mid").mkdir()
  with pytest.raises(render.RenderError, match="folder.mid.*cannot read"):
    render.render_midi(tmp_path / "folder.mid")


def _late_end_of_track(midi: bytes, seconds: float) -> bytes:
  """Moves the end-of-track marker `seconds` past the last event, as in the real D960 files."""
  import io

  import mido
  parsed = mido.MidiFile(file=io.BytesIO(midi))
  for track in parsed.tracks:
    track[-1] = track[-1].copy(time=int(seconds * 2 * parsed.ticks_per_beat))  # 120 bpm
  buf = io.BytesIO()
  parsed.save(file=buf)
  return buf.getvalue()


def test_capping_the_end_of_track_changes_nothing_audible(make_midi, chords):
  midi = _late_end_of_track(make_midi(chords(velocity=50, seconds=3.0)), 30.0)
  capped_bytes, removed = render.cap_trailing_time(midi, 5.0)
  assert removed == pytest.approx(25.0, abs=0.01) and len(capped_bytes) < len(midi) + 8
  capped = render.render_midi(midi)  # caps at 5 s by default
  full = render.render_midi(midi, trim=render.TrimConfig(max_tail_s=1000.0))
  np.testing.assert_array_equal(capped.samples, full.samples)
  assert capped.untrimmed_seconds == pytest.approx(full.untrimmed_seconds, abs=1e-3)
  assert capped.trimmed_end_seconds == pytest.approx(full.trimmed_end_seconds, abs=1e-3)


def test_cap_leaves_short_tails_and_malformed_midi_alone(make_midi, chords):
  midi = make_midi(chords())
  assert render.cap_trailing_time(midi, 5.0) == (midi, 0.0)
  assert render.cap_trailing_time(b"MThd" + bytes(10), 5.0) == (b"MThd" + bytes(10), 0.0)


@pytest.mark.real_data
@pytest.mark.parametrize("key", ["Schubert_D960_mv2_8bars_3_07", "Schubert_D960_mv2_16bars_0_09",
                                 "Schubert_D960_mv3_8bars_2_11", "Schubert_D960_mv2_8bars_4_03"])
def test_capping_is_exact_on_real_d960_clips(percepiano_dir, key):
  midi = percepiano_dir / f"virtuoso/data/all_2rounds/{key}.mid"
  capped = render.render_midi(midi)
  full = render.render_midi(midi, trim=render.TrimConfig(max_tail_s=1000.0))
  np.testing.assert_array_equal(capped.samples, full.samples)
  assert capped.untrimmed_seconds == pytest.approx(full.untrimmed_seconds, abs=1e-3)
