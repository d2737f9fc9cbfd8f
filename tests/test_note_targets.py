"""Note targets in the shards: the notes and pedal of each window, checked through silence
trimming, time stretch and pitch shift against the source MIDI and against the audio itself."""

import json
import struct

import ml_collections
import numpy as np
import pretty_midi
import pytest
import soundfile

from pipelines.audio import decode, note_statistics, notes, render, windowing
from pipelines.beam import augment_presets, preprocess
from pipelines.shards import example_proto, layout, records

FRAME_S = 0.01
WINDOW = windowing.WindowConfig(frames=256, hop_frames=256)
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def performance() -> bytes:
  """1 s of silence, then 12 notes (one on the top B, which a +2 shift pushes off the
  keyboard) and one sustain-pedal press."""
  midi = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0)
  for i in range(12):
    key = 107 if i == 5 else 60 + (i * 5) % 17
    piano.notes.append(pretty_midi.Note(velocity=40 + 6 * i, pitch=key, start=1.0 + 0.45 * i,
                                        end=1.0 + 0.45 * i + 0.3))
  piano.control_changes += [pretty_midi.ControlChange(64, 100, 2.0),
                            pretty_midi.ControlChange(64, 0, 3.5)]
  midi.instruments.append(piano)
  return render.midi_to_bytes(midi)


# ----------------------------------------------------------------------------- units

def test_transforms_follow_the_audio():
  n = notes.Notes([[1.0, 2.0, 60, 80], [0.5, 0.7, 107, 50], [3.0, 3.5, 21, 90]],
                  [[1.5, 2.5]])
  assert n.notes[0, 0] == 0.5  # sorted by onset
  shifted = n.shifted(0.5)
  np.testing.assert_allclose(shifted.notes[:, :2], n.notes[:, :2] - 0.5)
  np.testing.assert_allclose(shifted.pedal, [[1.0, 2.0]])
  stretched = n.stretched(1.25)
  np.testing.assert_allclose(stretched.notes[:, :2], n.notes[:, :2] / 1.25, rtol=1e-6)
  up, down = n.transposed(2), n.transposed(-1)
  assert (up.dropped, sorted(up.notes[:, 2])) == (1, [23, 62])
  assert (down.dropped, sorted(down.notes[:, 2])) == (1, [59, 106])
  # A fractional shift keeps a key whose nearest semitone is on the keyboard.
  assert n.transposed(1.4).dropped == 0 and n.transposed(1.6).dropped == 1
  window = n.window(0.6, 1.0)  # [0.6, 1.6): the first note still sounding, the second starting
  np.testing.assert_allclose(window.notes[:, :2], [[-0.1, 0.1], [0.4, 1.4]], atol=1e-6)
  np.testing.assert_allclose(window.pedal, [[0.9, 1.9]], atol=1e-6)
  assert n.window(5.0, 1.0).notes.shape == (0, 4)


def test_from_midi_reads_notes_and_pedal_intervals():
  midi = pretty_midi.PrettyMIDI()
  piano, drums = pretty_midi.Instrument(0), pretty_midi.Instrument(0, is_drum=True)
  piano.notes += [pretty_midi.Note(90, 64, 0.5, 1.0), pretty_midi.Note(30, 67, 0.1, 4.0)]
  drums.notes.append(pretty_midi.Note(100, 36, 0.0, 0.2))
  piano.control_changes += [pretty_midi.ControlChange(64, 127, 1.0),
                            pretty_midi.ControlChange(64, 90, 1.2),  # still down
                            pretty_midi.ControlChange(64, 10, 2.0),
                            pretty_midi.ControlChange(67, 127, 2.2),  # soft pedal: not sustain
                            pretty_midi.ControlChange(64, 64, 3.0)]  # never released
  midi.instruments += [piano, drums]
  got = notes.from_midi(render.midi_to_bytes(midi))
  np.testing.assert_allclose(got.notes, [[0.1, 4.0, 67, 30], [0.5, 1.0, 64, 90]], atol=1e-3)
  np.testing.assert_allclose(got.pedal, [[1.0, 2.0], [3.0, 4.0]], atol=1e-3)
  with pytest.raises(notes.NotesError, match="bad.mid: unreadable MIDI"):
    notes.from_midi(b"MThd", name="bad.mid")


def test_records_carry_notes_or_say_they_have_none():
  features = np.zeros((8, 4), np.float32)
  values = np.array([[-0.2, 0.5, 60, 70], [0.1, 0.3, 62.5, 40]], np.float32)
  pedal = np.array([[0.0, 1.0]], np.float32)
  header, arrays = records.decode(records.encode_window({"key": "k"}, features,
                                                        notes=(values, pedal, 3)))
  assert (header["num_notes"], header["num_pedal"], header["notes_dropped"]) == (2, 1, 3)
  np.testing.assert_array_equal(arrays["notes"], values)
  np.testing.assert_array_equal(arrays["pedal"], pedal)
  header, arrays = records.decode(records.encode_window({"key": "k"}, features))
  assert header["num_notes"] == -1 and arrays["notes"].shape == (0, 4)
  audio = records.encode_audio({"key": "k"}, np.zeros(10), 16000, notes=(values, pedal, 0))
  header, arrays = records.decode(audio)
  assert arrays["samples"].shape == (10,) and arrays["notes"].shape == (2, 4)
  damaged = example_proto.example_class().FromString(audio)
  notes_feature = next(e.value for e in damaged.features.feature if e.key == "notes")
  del notes_feature.float_list.value[-1]  # a note value lost
  with pytest.raises(records.RecordError, match="'notes' holds 7 .* implies 8"):
    records.decode(damaged.SerializeToString())
  # A version-1 record (before note targets) reads as one without them.
  text = json.dumps({"key": "k", "kind": "window", "num_mel_bins": 8, "num_frames": 4,
                     "num_labels": 0}).encode()
  old = struct.pack("<4sBI", b"PPTR", 1, len(text)) + text + features.astype("<f2").tobytes()
  header, arrays = records.decode(old)
  assert header["num_notes"] == -1 and arrays["features"].shape == (8, 4)


# ----------------------------------------------------------------------------- the job

def _run(tmp_path, name, sources, domain="audio", variants=1, first_variant=0):
  augment = augment_presets.get_config("maestro")
  augment.variants = variants
  augment.domain = domain
  augment.time_stretch = ml_collections.ConfigDict(dict(enabled=True, low=1.25, high=1.25,
                                                        invalidates=()))
  augment.pitch_shift = ml_collections.ConfigDict(dict(enabled=True, low=2.0, high=2.0,
                                                       invalidates=()))
  augment.noise.enabled = False
  out = tmp_path / name
  preprocess.run(sources, dict(dataset="t", augment=augment, window=WINDOW,
                               first_variant=first_variant),
                 output_dir=str(out), overwrite=False, beam_args=IN_MEMORY, job_config={},
                 source_checksums={}, splits={}, max_failure_fraction=0.0)
  return out


def _records(root, kind="windows"):
  meta = json.loads((root / layout.METADATA).read_text())
  return [records.decode(r) for row in meta["shards"] if row["kind"] == kind
          for r in layout.read_array_record(str(root / row["file"]))]


def _recording(windows, variant):
  """A variant's windows -> (notes in the recording's time base, deduplicated; the
  log-mel frames concatenated; the header of its first window)."""
  mine = sorted((w for w in windows if w[0]["variant"] == variant),
                key=lambda w: w[0]["window_index"])
  found = {}
  for header, arrays in mine:
    for onset, offset, key, velocity in arrays["notes"]:
      start = header["window_index"] * WINDOW.hop_frames * FRAME_S
      found[(round(onset + start, 3), round(float(key), 3))] = (onset + start, offset + start,
                                                                 key, velocity)
  frames = np.concatenate([a["features"].astype(np.float32).T[:h["valid_frames"]]
                           for h, a in mine])
  ordered = notes.Notes(np.array(list(found.values()), np.float32), np.zeros((0, 2))).notes
  return ordered, frames, mine[0][0]


def _expect_onsets_audible(found, frames):
  """The audio agrees with the targets: the first onset ends the silence, and the spectral
  flux (summed rise of the log-mel bins) peaks at the onsets, not elsewhere."""
  energy = windowing.frame_energy_db(frames)
  first = int(round(found[0, 0] / FRAME_S))
  assert energy[first + 3] - energy[:max(first - 2, 1)].max() > 10.0  # phase vocoder smears
  flux = np.maximum(np.diff(frames, axis=0), 0).sum(axis=1)  # flux[i]: frame i -> i + 1
  at = [flux[max(int(round(t / FRAME_S)) - 3, 0):int(round(t / FRAME_S)) + 3].max()
        for t in found[:, 0]]
  # Clean renders measure ~45x; the phase vocoder's smeared, noisy stretch ~2.4x.
  assert np.median(at) > 2 * np.median(flux), (np.median(at), np.median(flux))
  # Shifted by 0.2 s the targets miss the flux peaks.
  off = [flux[int(round(t / FRAME_S)) + 17:int(round(t / FRAME_S)) + 23].max()
         for t in found[:, 0] if int(round(t / FRAME_S)) + 23 < len(flux)]
  assert np.median(at) > 3 * np.median(off), (np.median(at), np.median(off))  # measured >= 5.7x


@pytest.mark.parametrize("domain", ["audio", "midi"])
def test_note_targets_follow_trim_stretch_and_shift(tmp_path, domain):
  midi_path = tmp_path / "p.mid"
  midi_path.write_bytes(performance())
  source = notes.from_midi(midi_path.read_bytes())
  out = _run(tmp_path, "out", [preprocess.Source(key="p", split="train",
                                                 midi_path=str(midi_path))], domain)
  windows = _records(out)
  # Clean: the source MIDI, shifted by the silence the render trimmed (the note at 1.0 s
  # lands just after the start, the trim's margin).
  clean, frames, header = _recording(windows, 0)
  trim = header["trim_start_s"]
  assert 0.85 < trim < 1.0 and header["notes_dropped"] == 0
  np.testing.assert_allclose(clean, source.shifted(trim).notes, atol=2e-5)
  _expect_onsets_audible(clean, frames)
  # Augmented: 1.25x faster, 2 semitones up (the top B dropped and counted), trimmed again
  # in the MIDI domain (the render of the faster MIDI has its own leading silence).
  stretched, frames, header = _recording(windows, 1)
  expected = source.stretched(1.25).transposed(2).shifted(header["trim_start_s"])
  if domain == "audio":  # the clean audio is stretched, so the clean trim carries over
    assert header["trim_start_s"] == trim
    expected = source.shifted(trim).stretched(1.25).transposed(2)
  else:
    assert 0.6 < header["trim_start_s"] < 0.8
  assert header["notes_dropped"] == 1 and len(stretched) == len(source.notes) - 1
  np.testing.assert_allclose(stretched, expected.notes, atol=2e-5)
  _expect_onsets_audible(stretched, frames)
  # Every window carries its pedal interval in its own time base.
  pedal = [(h["window_index"], a["pedal"]) for h, a in windows if h["variant"] == 0]
  assert any(p.size for _, p in pedal)
  # The stored clean audio keeps the recording's notes, so regenerated augmentations
  # (the augment job's path) have them too.
  (audio_header, audio_arrays), = _records(out, "audio")
  np.testing.assert_array_equal(audio_arrays["notes"], source.shifted(trim).notes)
  if domain == "audio":
    stored = [r for row in json.loads((out / layout.METADATA).read_text())["shards"]
              if row["kind"] == "audio"
              for r in layout.read_array_record(str(out / row["file"]))]
    again = _run(tmp_path, "again", [preprocess.Source(key="p", split="train",
                                                       audio_record=stored[0])],
                 first_variant=1)
    regenerated, _, _ = _recording(_records(again), 1)
    np.testing.assert_allclose(regenerated, stretched, atol=2e-5)


def test_decoded_audio_has_notes_only_with_aligned_midi(tmp_path):
  midi = performance()
  rendered = render.render_midi(midi, trim=render.TrimConfig(enabled=False))
  wav = tmp_path / "p.wav"
  soundfile.write(wav, rendered.samples, decode.TARGET_SAMPLE_RATE)
  (tmp_path / "p.mid").write_bytes(midi)
  out = _run(tmp_path, "out", [
      preprocess.Source(key="aligned", split="train", audio_path=str(wav),
                        aligned_midi_path=str(tmp_path / "p.mid")),
      preprocess.Source(key="bare", split="train", audio_path=str(wav))], variants=0)
  by_key = {}
  for header, arrays in _records(out):
    by_key.setdefault(header["key"], []).append((header, arrays))
  assert all(h["num_notes"] == -1 for h, _ in by_key["bare"])
  aligned, frames, header = _recording(by_key["aligned"], 0)
  assert header["trim_start_s"] == 0.0  # a decoded file is not trimmed: MIDI time as is
  np.testing.assert_allclose(aligned, notes.from_midi(midi).notes, atol=2e-5)
  _expect_onsets_audible(aligned, frames)


def test_real_performances_keep_their_notes_aligned(percepiano_dir, asap_dir, tmp_path):
  """Real PercePiano and ASAP performance MIDI (pedalled, dense): the windows' targets are
  the source notes in the trimmed render's time base, and the onsets are where the audio's
  flux peaks."""
  from pipelines.datasets import maestro, percepiano
  release = percepiano.read_release(percepiano_dir)
  chosen = [p.midi_path for p in release.performances if p.midi_path][::400][:3]
  asap = maestro.read_asap(asap_dir).performances[0]
  chosen.append(asap_dir / asap.midi_filename)
  sources = [preprocess.Source(key=f"r{i}", split="train", midi_path=str(path))
             for i, path in enumerate(chosen)]
  out = _run(tmp_path, "real", sources, variants=0)
  by_key = {}
  for header, arrays in _records(out):
    by_key.setdefault(header["key"], []).append((header, arrays))
  for i, path in enumerate(chosen):
    found, frames, header = _recording(by_key[f"r{i}"], 0)
    source = notes.from_midi(path.read_bytes()).shifted(header["trim_start_s"])
    audible = source.notes[source.notes[:, 0] < len(frames) * FRAME_S]
    assert len(found) == len(audible) > 20, path
    np.testing.assert_allclose(found, audible, atol=1e-4)
    assert any(a["pedal"].size for _, a in by_key[f"r{i}"]) or not source.pedal.size
    _expect_onsets_audible(found, frames)


# ----------------------------------------------------------------------------- note statistics

def test_note_statistics_on_a_known_performance():
  # Four chords of two notes every 0.5 s, each held 0.25 s (half the interval), velocities
  # 40, 60, 80, 100; one pedal press of 1 s over a 2 s clip.
  rows = []
  for i in range(4):
    for key in (60, 64):
      rows.append([0.5 * i + (0.01 if key == 64 else 0.0), 0.5 * i + 0.25, key, 40 + 20 * i])
  stats = dict(zip(note_statistics.names(),
                   note_statistics.compute(notes.Notes(rows, [[0.0, 1.0]]), duration_s=2.0)))
  assert len(note_statistics.names()) == 39
  assert stats["ioi_mean"] == pytest.approx(0.5) and stats["ioi_std"] == pytest.approx(0.0)
  assert stats["onset_rate"] == pytest.approx(2.0) and stats["note_rate"] == pytest.approx(4.0)
  assert stats["velocity_delta_abs_mean"] == pytest.approx(20.0)
  assert stats["velocity_spread"] == pytest.approx(np.percentile([40, 40, 60, 60, 80, 80, 100, 100], 90)
                                                   - np.percentile([40, 40, 60, 60, 80, 80, 100, 100], 10))
  # Held 0.25 of 0.5 s (the chord's second note 0.24 of 0.49): log ratio about log(0.5).
  assert stats["articulation_median"] == pytest.approx(np.log(0.5), abs=0.02)
  assert stats["pedal_fraction"] == pytest.approx(0.5) and stats["pedal_press_rate"] == 0.5
  assert stats["key_range"] == 4 and stats["polyphony_p90"] == 2
  assert stats["duration_s"] == 2.0 and stats["note_count"] == 8
  with pytest.raises(ValueError, match="no notes"):
    note_statistics.compute(notes.Notes(np.zeros((0, 4)), np.zeros((0, 2))))


# ----------------------------------------------------------------------------- dense rolls

def test_rolls_mark_onsets_frames_offsets_velocity_and_pedal():
  window = notes.Notes([[0.015, 0.052, 60, 127],  # frames 1..5, offset in frame 5
                        [-0.5, 0.03, 21, 64],  # already sounding: frames only, no onset
                        [0.08, 0.5, 108.4, 32],  # rounds to C8, runs past the window
                        [0.02, 0.04, 109, 90]],  # off the keyboard: ignored
                       [[0.06, 2.0]])
  r = notes.rolls(window, frames=10)
  assert r["onset"].sum() == 2 and r["onset"][1, 60 - 21] == 1 and r["onset"][8, 87] == 1
  assert r["velocity"][1, 60 - 21] == 1.0 and r["velocity"][8, 87] == pytest.approx(32 / 127)
  assert list(np.flatnonzero(r["frame"][:, 60 - 21])) == [1, 2, 3, 4, 5]
  assert list(np.flatnonzero(r["frame"][:, 0])) == [0, 1, 2] and r["onset"][:, 0].sum() == 0
  assert list(np.flatnonzero(r["offset"][:, 60 - 21])) == [5] and r["offset"][:, 87].sum() == 0
  assert list(np.flatnonzero(r["frame"][:, 87])) == [8, 9]
  assert list(np.flatnonzero(r["pedal"])) == [6, 7, 8, 9]


def test_the_input_pipeline_streams_rolls_of_the_stored_notes(train_shards):
  from pipelines import input_pipeline
  root = train_shards["maestro"]
  config = input_pipeline.InputConfig(batch_size=4, read_threads=1, prefetch_buffer_size=1,
                                      spec_augment=False, note_rolls=True,
                                      splits=("train",))
  windows = [records.decode(r) for row in json.loads((root / layout.METADATA).read_text())
             ["shards"] if row["kind"] == "windows" and row["split"] == "train"
             for r in layout.read_array_record(str(root / row["file"]))]
  expected = {}
  for header, arrays in windows:
    onsets = arrays["notes"][:, 0]
    inside = (onsets >= 0) & (onsets < header["num_frames"] * FRAME_S)
    expected[(header["key"], header["variant"], header["window_index"])] = (
        header["num_notes"] >= 0, int(inside.sum()))
  assert any(has and n for has, n in expected.values())
  seen = 0
  for batch in input_pipeline.evaluation(root, config):
    for i in np.flatnonzero(batch["weight"]):
      has, count = expected[(str(batch["key"][i]), int(batch["variant"][i]),
                             int(batch["window_index"][i]))]
      assert bool(batch["has_notes"][i]) == has and int(batch["onset"][i].sum()) == count
      seen += 1
  assert seen == len(expected)
  batch = next(iter(input_pipeline.pretraining(root, config)))
  assert batch["frame"].shape == (4, batch["features"].shape[-1], 88)
  assert set(batch) == {"features", "valid_frames", *input_pipeline.ROLL_FIELDS}
