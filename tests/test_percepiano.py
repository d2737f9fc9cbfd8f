"""pipelines.beam.percepiano_job on the real release and on small generated releases."""

import json
import math
import pathlib

import numpy as np
import pytest

from pipelines.datasets import percepiano, taxonomy

N = taxonomy.NUM_DIMENSIONS


def _write_release(root: pathlib.Path, labels: dict, *, std: dict | None = None,
                   midi_names=None) -> pathlib.Path:
  (root / "virtuoso/data/all_2rounds").mkdir(parents=True)
  (root / percepiano.LABELS_FILE).write_text(json.dumps(labels))
  if std is None:
    std = {k: [0.1] * N for k in labels}
  (root / percepiano.STD_FILE).write_text(json.dumps(std))
  for name in (midi_names if midi_names is not None else [f"{k}.mid" for k in labels]):
    (root / "virtuoso/data/all_2rounds" / name).write_bytes(b"MThd")
  return root


def _labels(performer=3, value=0.5):
  return [value] * N + [performer]


GOOD = {
    "Schubert_D960_mv2_8bars_3_07": _labels(7),
    "Schubert_D960_mv2_16bars_Score_2": _labels(1),
    "Beethoven_WoO80_var27_8bars_1_15": _labels(0),
    "Schubert_D935_no.3_4bars_3_25": _labels(7),
}


def test_parse_key():
  key = percepiano.parse_key("Schubert_D935_no.3_4bars_Score2_09")
  assert (key.composer, key.work, key.bars, key.performer, key.segment) == (
      "Schubert", "D935_no.3", 4, "Score2", "09")
  assert key.movement == "Schubert_D935_no.3"
  assert key.passage == "Schubert_D935_no.3_4bars_09"


@pytest.mark.parametrize("bad", ["Schubert_D960_mv2_3_07", "Schubert_D960_mv2_8bars_3",
                                 "_D960_8bars_3_07", "Schubert_D960 mv2_8bars_3_07",
                                 "Schubert_../x_8bars_3_07", ""])
def test_parse_key_rejects(bad):
  with pytest.raises(percepiano.PercePianoError, match="expected"):
    percepiano.parse_key(bad)


def test_reads_generated_release(tmp_path):
  release = percepiano.read_release(_write_release(tmp_path, GOOD))
  assert [p.key.text for p in release.performances] == sorted(GOOD)
  p = release.by_key()["Schubert_D960_mv2_8bars_3_07"]
  assert p.labels.dtype == np.float32 and p.labels.shape == (N,)
  assert p.performer_id == 7 and p.midi_path.name == "Schubert_D960_mv2_8bars_3_07.mid"
  assert p.label_std.shape == (N,)
  assert release.keys_without_midi == () and release.midi_without_keys == ()


def test_whitespace_around_midi_names_is_matched_generically(tmp_path):
  names = [f" {k}.mid" if i == 0 else f"{k}.mid " if i == 1 else f"{k}.MIDI"
           for i, k in enumerate(sorted(GOOD))]
  release = percepiano.read_release(_write_release(tmp_path, GOOD, midi_names=names))
  assert release.keys_without_midi == ()
  assert all(p.midi_path is not None for p in release.performances)


def test_reports_missing_and_unlabelled_midi(tmp_path):
  names = [f"{k}.mid" for k in sorted(GOOD)[1:]] + ["Schubert_D960_mv3_8bars_9_01.mid",
                                                    "readme.txt"]
  release = percepiano.read_release(_write_release(tmp_path, GOOD, midi_names=names))
  assert release.keys_without_midi == (sorted(GOOD)[0],)
  assert release.by_key()[sorted(GOOD)[0]].midi_path is None
  assert [p.name for p in release.midi_without_keys] == ["Schubert_D960_mv3_8bars_9_01.mid"]


def test_two_files_for_one_key_is_an_error(tmp_path):
  key = sorted(GOOD)[0]
  names = [f"{k}.mid" for k in GOOD] + [f" {key}.mid"]
  with pytest.raises(percepiano.PercePianoError, match=f"two MIDI files map to key '{key}'"):
    percepiano.read_release(_write_release(tmp_path, GOOD, midi_names=names))


@pytest.mark.parametrize("value,reason", [
    ([0.5] * N, "expected a list of 19"),
    ([0.5] * (N + 2), "expected a list of 19"),
    ("0.5", "expected a list of 19"),
    ([math.nan] + [0.5] * (N - 1) + [3], "not finite"),
    ([0.5] * (N - 1) + [1.5, 3], r"\[0, 1\]"),
    ([-0.1] + [0.5] * (N - 1) + [3], r"\[0, 1\]"),
    (["high"] + [0.5] * (N - 1) + [3], "not a number"),
    ([True] + [0.5] * (N - 1) + [3], "not a number"),
    ([0.5] * N + [2.5], "not a non-negative integer"),
    ([0.5] * N + ["3"], "not a non-negative integer"),
    ([0.5] * N + [-1], "not a non-negative integer"),
])
def test_malformed_labels_name_the_key(tmp_path, value, reason):
  labels = dict(GOOD, Schubert_D960_mv3_8bars_9_01=value)
  with pytest.raises(percepiano.PercePianoError, match=rf"'Schubert_D960_mv3_8bars_9_01'.*{reason}"):
    percepiano.read_release(_write_release(tmp_path, labels))


def test_malformed_key_in_labels(tmp_path):
  labels = dict(GOOD, **{"not a key": _labels()})
  with pytest.raises(percepiano.PercePianoError, match="'not a key'"):
    percepiano.read_release(_write_release(tmp_path, labels))


def test_all_errors_listed_together(tmp_path):
  labels = {f"Schubert_D960_mv3_8bars_9_{i:02d}": [2.0] * N + [9] for i in range(30)}
  with pytest.raises(percepiano.PercePianoError, match=r"30 invalid entries(.|\n)*and 10 more"):
    percepiano.read_release(_write_release(tmp_path, labels))


def test_float_performer_id_that_is_integral_is_accepted(tmp_path):
  labels = dict(GOOD, Schubert_D960_mv3_8bars_9_01=[0.5] * N + [9.0])
  release = percepiano.read_release(_write_release(tmp_path, labels))
  assert release.by_key()["Schubert_D960_mv3_8bars_9_01"].performer_id == 9


def test_inconsistent_performer_ids(tmp_path):
  labels = dict(GOOD, Schubert_D960_mv3_8bars_3_01=_labels(8))  # token "3" is id 7 elsewhere
  with pytest.raises(percepiano.PercePianoError, match="inconsistent performer ids"):
    percepiano.read_release(_write_release(tmp_path, labels))


def test_std_file_must_match_keys_and_be_valid(tmp_path):
  std = {k: [0.1] * N for k in sorted(GOOD)[1:]}
  with pytest.raises(percepiano.PercePianoError, match="different keys"):
    percepiano.read_release(_write_release(tmp_path / "a", GOOD, std=std))
  std = dict({k: [0.1] * N for k in GOOD}, **{sorted(GOOD)[0]: [-0.1] * N})
  with pytest.raises(percepiano.PercePianoError, match=">= 0"):
    percepiano.read_release(_write_release(tmp_path / "b", GOOD, std=std))
  # Without the std file requested, it is not read at all.
  release = percepiano.read_release(tmp_path / "b", read_std=False)
  assert release.performances[0].label_std is None


def test_invalid_json(tmp_path):
  root = _write_release(tmp_path, GOOD)
  (root / percepiano.LABELS_FILE).write_text("{not json")
  with pytest.raises(percepiano.PercePianoError, match="not valid JSON"):
    percepiano.read_release(root)
  (root / percepiano.LABELS_FILE).write_text("[]")
  with pytest.raises(percepiano.PercePianoError, match="non-empty JSON object"):
    percepiano.read_release(root)


@pytest.mark.parametrize("remove", [percepiano.LABELS_FILE, percepiano.STD_FILE,
                                    percepiano.MIDI_DIR])
def test_missing_parts_of_the_layout(tmp_path, remove):
  root = _write_release(tmp_path, GOOD)
  target = root / remove
  if target.is_dir():
    for f in target.iterdir():
      f.unlink()
    target.rmdir()
  else:
    target.unlink()
  with pytest.raises(FileNotFoundError, match=pathlib.Path(remove).name):
    percepiano.read_release(root)


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    percepiano.read_release(tmp_path / "nowhere")


@pytest.mark.real_data
def test_real_release(percepiano_dir):
  release = percepiano.read_release(percepiano_dir)
  assert len(release.performances) == 1202
  assert release.keys_without_midi == () and release.midi_without_keys == ()
  composers = [p.key.composer for p in release.performances]
  assert composers.count("Schubert") == 964 and composers.count("Beethoven") == 238
  assert len({p.key.movement for p in release.performances}) == 20
  # The one file whose name has a leading space resolves to its key.
  p = release.by_key()["Schubert_D935_no.3_4bars_2_1"]
  assert p.midi_path.name == " Schubert_D935_no.3_4bars_2_1.mid"
  labels = np.stack([p.labels for p in release.performances])
  assert labels.min() >= 1 / 7 - 1e-6 and labels.max() <= 1.0
  first = release.by_key()["Schubert_D935_no.3_4bars_1_25"]
  assert first.labels[0] == pytest.approx(4 / 7) and first.performer_id == 0


@pytest.mark.real_data
def test_raw_ratings_reproduce_the_real_labels(percepiano_dir):
  raw = percepiano.read_raw_ratings(percepiano_dir / percepiano.RAW_RATINGS_FILE)
  assert raw.answers.shape == (14934, 19) and len(set(raw.users)) == 65
  labels = raw.labels()
  release = percepiano.read_release(percepiano_dir)
  assert set(labels) == {p.key.text for p in release.performances}
  for p in release.performances:
    np.testing.assert_allclose(p.labels, labels[p.key.text][0], atol=1e-6)
  # The std file is the population std / 7 for almost every clip (a few differ).
  std_error = [np.abs(p.label_std - labels[p.key.text][1]).max() for p in release.performances]
  assert np.median(std_error) < 1e-6


def _write_raw(tmp_path, rows, header=percepiano.RAW_HEADER):
  path = tmp_path / "total_2rounds.csv"
  lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
  path.write_text("\n".join(lines) + "\n")
  return path


def test_raw_ratings_rule_on_a_small_file(tmp_path):
  key = "Schubert_D960_mv2_8bars_3_07"
  rows = [[1, 1, f"{key}.wav"] + [7.0] * 19 + ["", ""],
          [2, 2, f"{key}.wav"] + [5.0] * 19 + ["", ""],
          [3, 3, f"{key}.wav"] + [9.0] + [1.0] * 18 + ["", ""],  # invalid row: dropped
          [4, 4, f"{key}.wav"] + [""] + [3.0] * 18 + ["", "hi"],  # dimension 0 missing
          [4, 4, f"{key}.wav"] + [0] + [3.0] * 18 + ["", "hi"]]  # duplicate, 0 = missing
  mean, std = percepiano.read_raw_ratings(_write_raw(tmp_path, rows)).labels()[key]
  assert mean[0] == pytest.approx(6 / 7) and std[0] == pytest.approx(1 / 7)
  assert mean[1] == pytest.approx((7 + 5 + 3 + 3) / 4 / 7)


@pytest.mark.parametrize("row,message", [
    ([1, 1, "a.wav"] + ["x"] * 19 + ["", ""], "line 2"),
    ([1, 1, "a.wav"] + [3.0] * 5, "line 2"),
    (["me", 1, "a.wav"] + [3.0] * 19 + ["", ""], "line 2"),
    ([1, 1, "a.mp3"] + [3.0] * 19 + ["", ""], "not <key>.wav"),
    ([1, 1, "a.wav"] + ["nan"] + [3.0] * 18 + ["", ""], "finite"),
])
def test_malformed_raw_ratings(tmp_path, row, message):
  with pytest.raises(percepiano.PercePianoError, match=message):
    percepiano.read_raw_ratings(_write_raw(tmp_path, [row]))


def test_raw_ratings_header_and_missing_file(tmp_path):
  with pytest.raises(percepiano.PercePianoError, match="header"):
    percepiano.read_raw_ratings(_write_raw(tmp_path, [], header=("User", "id", "file")))
  with pytest.raises(FileNotFoundError):
    percepiano.read_raw_ratings(tmp_path / "none.csv")


def test_duplicate_key_in_label_json(tmp_path):
  root = _write_release(tmp_path, GOOD)
  text = (root / percepiano.LABELS_FILE).read_text()
  key = sorted(GOOD)[0]
  (root / percepiano.LABELS_FILE).write_text(
      text[:-1] + f', "{key}": {json.dumps(_labels(7))}}}')
  with pytest.raises(percepiano.PercePianoError, match="listed twice"):
    percepiano.read_release(root)


def test_std_file_keys_are_validated(tmp_path):
  std = dict({k: [0.1] * N for k in GOOD}, **{"bad key": [0.1] * N})
  with pytest.raises(percepiano.PercePianoError, match="'bad key'"):
    percepiano.read_release(_write_release(tmp_path, GOOD, std=std))
