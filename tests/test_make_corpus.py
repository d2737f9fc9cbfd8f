"""pipelines.corpus.make_corpus: real layouts, determinism, the release's label rule, safety."""

import collections
import csv
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipelines.corpus import make_corpus, performance
from pipelines.datasets import maestro, percepiano, splits, taxonomy

REPO = pathlib.Path(__file__).resolve().parent.parent


def _checksums(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("tiny") / "corpus"
  make_corpus.make_corpus(out, "tiny", seed=7, workers=1)
  return out


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tiny, tmp_path):
  again = tmp_path / "again"
  make_corpus.make_corpus(again, "tiny", seed=7, workers=2)
  first, second = _checksums(tiny), _checksums(again)
  assert len(first) > 40 and first == second
  other = tmp_path / "other"
  make_corpus.make_corpus(other, "tiny", seed=8, workers=1, parts=("percepiano",))
  assert _checksums(other)["percepiano/" + percepiano.LABELS_FILE] != first[
      "percepiano/" + percepiano.LABELS_FILE]


def test_parts_are_independent(tiny, tmp_path):
  only = tmp_path / "only"
  make_corpus.make_corpus(only, "tiny", seed=7, parts=("percepiano",))
  assert sorted(p.name for p in only.iterdir()) == [make_corpus.MANIFEST, "percepiano"]
  part = lambda sums: {k: v for k, v in sums.items() if k.startswith("percepiano/")}
  assert part(_checksums(only)) == part(_checksums(tiny))
  manifest = json.loads((only / make_corpus.MANIFEST).read_text())
  assert manifest["parts"] == ["percepiano"] and manifest["seed"] == 7


def test_percepiano_layout_passes_the_real_reader(tiny):
  release = percepiano.read_release(tiny / "percepiano")
  size = make_corpus.SIZES["tiny"]
  assert release.keys_without_midi == () and release.midi_without_keys == ()
  passages = collections.Counter(p.key.passage for p in release.performances)
  assert set(passages.values()) == {size.performers_per_passage + 1}  # + the Score rendition
  assert len({p.key.movement for p in release.performances}) == size.movements
  # One movement is cut at two lengths, as D960 is in the real release.
  lengths = collections.defaultdict(set)
  for p in release.performances:
    lengths[p.key.movement].add(p.key.bars)
  assert sorted(map(len, lengths.values())) == [1, 1, 2]
  # Performer tokens are not the integer ids, as in the release.
  assert any(p.key.performer != str(p.performer_id) for p in release.performances)
  piece = splits.piece_split(release.performances, test_fraction=0.34, num_folds=2)
  assert piece.test and all(piece.folds)


def test_raw_ratings_reproduce_the_labels_exactly(tiny):
  root = tiny / "percepiano"
  labels = percepiano.read_raw_ratings(root / percepiano.RAW_RATINGS_FILE).labels()
  release = percepiano.read_release(root)
  assert set(labels) == {p.key.text for p in release.performances}
  for p in release.performances:
    np.testing.assert_allclose(p.labels, labels[p.key.text][0], atol=1e-6)
    np.testing.assert_allclose(p.label_std, labels[p.key.text][1], atol=1e-6)
  with (root / percepiano.RAW_RATINGS_FILE).open() as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == percepiano.RAW_HEADER  # the release's header, column for column
  assert any(r[3:22].count("") for r in rows[1:])  # missing answers written empty ...
  assert any("0.0" in r[3:22] for r in rows[1:])  # ... and as 0, as in the release


def test_ceiling_and_factors_are_recorded(tiny):
  root = tiny / "percepiano"
  ceiling = json.loads((root / make_corpus.CEILING_FILE).read_text())
  for kind in ("overall", "within_passage"):
    assert set(ceiling[kind]) == set(taxonomy.DIMENSION_NAMES)
    assert all(-1 <= v <= 1 for v in ceiling[kind].values())
  assert np.mean(list(ceiling["overall"].values())) > 0.7
  factors = json.loads((root / make_corpus.FACTORS_FILE).read_text())
  release = percepiano.read_release(root)
  assert set(factors) == {p.key.text for p in release.performances}
  deadpan = {k: v for k, v in factors.items() if "_Score_" in k}
  assert deadpan and all(
      {n: v[n] for n in performance.FACTOR_NAMES} == performance.DEADPAN.__dict__
      for v in deadpan.values())


def test_maestro_layout_passes_the_real_reader(tiny):
  index = maestro.read_maestro(tiny / "maestro-v3.0.0")
  size = make_corpus.SIZES["tiny"]
  assert index.missing_files == ()
  assert len(index.performances) == size.maestro_compositions * size.maestro_renditions
  split_of = collections.defaultdict(set)
  for p in index.performances:
    split_of[p.canonical_title].add(p.split)
    assert p.midi_filename.startswith(f"{p.year}/") and p.audio_filename.endswith(".wav")
  assert all(len(s) == 1 for s in split_of.values())  # splits disjoint by composition
  assert {s for v in split_of.values() for s in v} == set(maestro.SPLITS)
  first = index.performances[0]
  info = soundfile.info(index.root / first.audio_filename)
  assert (info.samplerate, info.channels, info.subtype) == (48_000, 2, "PCM_16")
  assert info.duration == pytest.approx(first.duration, abs=1e-5)
  csv_rows = maestro.read_maestro_csv(tiny / "maestro-v3.0.0" / maestro.CSV_FILE)
  assert csv_rows == maestro.read_maestro_json(tiny / "maestro-v3.0.0" / maestro.JSON_FILE)


def test_refuses_a_non_empty_output_dir(tmp_path):
  (tmp_path / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    make_corpus.make_corpus(tmp_path, "tiny", seed=0)
  assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_an_empty_output_dir_is_filled(tmp_path):
  out = tmp_path / "empty"
  out.mkdir()
  make_corpus.make_corpus(out, "tiny", seed=0, parts=("percepiano",))
  assert (out / "percepiano" / percepiano.LABELS_FILE).is_file()


def test_a_failure_leaves_no_partial_output(tmp_path):
  out = tmp_path / "corpus"
  with pytest.raises(FileNotFoundError, match="missing.sf2"):
    make_corpus.make_corpus(out, "tiny", seed=0, soundfont=str(tmp_path / "missing.sf2"))
  assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="size"):
    make_corpus.make_corpus(tmp_path / "a", "huge", seed=0)
  with pytest.raises(ValueError, match="parts"):
    make_corpus.make_corpus(tmp_path / "b", "tiny", seed=0, parts=("audioset",))


def test_command_line(tmp_path):
  out = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.corpus.make_corpus", f"--output_dir={out}", "--size=tiny",
       "--seed=3", "--workers=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "Wrote 28 rated PercePiano-layout clips" in proc.stdout
  again = subprocess.run(
      [sys.executable, "-m", "pipelines.corpus.make_corpus", f"--output_dir={out}", "--size=tiny"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert again.returncode != 0 and "refusing to overwrite" in again.stderr
