"""Rated performances inside a pre-training corpus: found note for note, their compositions
left out of the MAESTRO/ASAP job (`pipelines.datasets.overlap`, `maestro_job
--exclude_overlap_with`)."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pipelines.audio import notes as notes_lib
from pipelines.beam import maestro_job
from pipelines.datasets import overlap
from pipelines.shards import layout

REPO = pathlib.Path(__file__).resolve().parent.parent


def _performance(seed: int, onsets: int = 60) -> list[tuple[int, int, float, float]]:
  """(key, velocity, start, end) of a random performance: single notes and chords."""
  rng = np.random.default_rng(seed)
  out, t = [], 0.2
  for _ in range(onsets):
    for key in rng.choice(np.arange(40, 90), size=rng.integers(1, 4), replace=False):
      out.append((int(key), int(rng.integers(20, 110)), t, t + float(rng.uniform(0.1, 0.6))))
    t += float(rng.uniform(0.08, 0.4))
  return out


def _sequence(notes) -> overlap.Sequence:
  rows = [(s, e, k, v) for k, v, s, e in notes]
  return overlap.Sequence.of(notes_lib.Notes(np.array(rows, np.float32), np.zeros((0, 2))))


def _excerpt(notes, first: int, last: int, shift: float = 0.0):
  """Notes `first:last` in onset order, moved to start at `shift` seconds (a cut)."""
  kept = sorted(notes, key=lambda n: (n[2], n[0]))[first:last]
  start = kept[0][2]
  return [(k, v, s - start + shift, e - start + shift) for k, v, s, e in kept]


CORPUS = {f"p{i}": _performance(i) for i in range(5)}


def _contained(rated: dict) -> dict:
  return overlap.contained({k: _sequence(v) for k, v in rated.items()},
                           {k: _sequence(v) for k, v in CORPUS.items()})


def test_an_excerpt_is_found_in_every_performance_it_was_cut_from():
  cut = _excerpt(CORPUS["p3"], 40, 100, shift=0.5)
  short = _excerpt(CORPUS["p0"], 7, 7 + overlap.NGRAM + 3)  # fewer notes than CONFIRM
  assert _contained({"cut": cut, "whole": CORPUS["p1"], "short": short}) == {
      "cut": ("p3",), "whole": ("p1",), "short": ("p0",)}
  # ASAP stores some performances twice (under two folders): both hold the excerpt.
  twice = overlap.contained({"cut": _sequence(cut)}, {"a": _sequence(CORPUS["p3"]),
                                                      "b": _sequence(CORPUS["p3"])})
  assert twice == {"cut": ("a", "b")}


def test_a_chord_re_saved_a_tick_apart_keeps_its_order():
  # In the source the higher note of a chord sounds 0.5 ms before the lower; in the excerpt
  # (saved on another tick grid) the lower sounds first. Ordered by onset alone, every
  # window holding the chord would differ, and this excerpt is nothing but such windows.
  body = sorted(_performance(5, onsets=10), key=lambda n: (n[2], n[0]))
  source = [(64, 80, 0.0, 0.4), (60, 70, 0.0005, 0.4)] + [
      (k, v, s + 0.5, e + 0.5) for k, v, s, e in body]
  resaved = [(60, 70, 0.0, 0.4), (64, 80, 0.0005, 0.4)] + source[2:overlap.NGRAM + 4]
  assert overlap.contained({"resaved": _sequence(resaved)}, {"source": _sequence(source)}) == {
      "resaved": ("source",)}


def test_what_is_not_a_copy_of_the_midi_is_not_found():
  cut = _excerpt(CORPUS["p2"], 30, 90)
  # The first NGRAM notes in common (a hash hit), then the same onsets on other keys: the
  # confirmation refuses it.
  n = overlap.NGRAM
  assert _contained({
      "one window in common": cut[:n] + [(k + 1, v, s, e) for k, v, s, e in cut[n:2 * n]],
      "transposed": [(k + 1, v, s, e) for k, v, s, e in cut],
      "louder": [(k, min(v + 3, 127), s, e) for k, v, s, e in cut],
      "slower": [(k, v, s * 1.05, e * 1.05) for k, v, s, e in cut],
      "too short to look up": cut[:overlap.NGRAM - 1],
      "another performance": _performance(99),
  }) == {}


def test_an_excerpt_found_once_per_probe_is_confirmed_around_it():
  # A changed note near the start leaves the later probes' windows intact: the excerpt is
  # still found there, confirmed on notes that do not include the change.
  cut = _excerpt(CORPUS["p4"], 10, 110)
  cut[0] = (cut[0][0], cut[0][1] % 100 + 5, cut[0][2], cut[0][3])
  assert _contained({"cut": cut}) == {"cut": ("p4",)}


def _asap_tree(root: pathlib.Path, performances: dict[str, list], midi_bytes) -> pathlib.Path:
  """An ASAP-layout tree: folder -> its performances' notes."""
  rows = []
  for folder, pieces in performances.items():
    (root / folder).mkdir(parents=True)
    for i, notes in enumerate(pieces):
      (root / folder / f"p{i}.mid").write_bytes(midi_bytes(notes))
      rows.append({"composer": folder.split("/")[0], "title": folder, "folder": folder,
                   "midi_performance": f"{folder}/p{i}.mid"})
  with (root / "metadata.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(maestro_job.maestro.ASAP_COLUMNS), restval="")
    writer.writeheader()
    writer.writerows(rows)
  return root


def test_exclude_overlap_leaves_out_the_holding_composition_and_keeps_the_other_splits(
    tmp_path, make_midi):
  midi_bytes = make_midi
  tree = _asap_tree(tmp_path / "asap", {f"C{c}/piece": [_performance(10 * c + i)
                                                        for i in range(2)] for c in range(6)},
                    midi_bytes)
  rated = tmp_path / "rated" / "nested"
  rated.mkdir(parents=True)
  (rated / "cut.mid").write_bytes(midi_bytes(_excerpt(_performance(31), 5, 50, shift=1.0)))
  (rated / "unrelated.MID").write_bytes(midi_bytes(_performance(77)))
  (rated / "broken.mid").write_bytes(b"MThd not a MIDI file")
  (rated / "notes.txt").write_text("not MIDI, not read")
  (tree / "C5/piece/p1.mid").write_bytes(b"MThd damaged")  # a corpus file that cannot be read
  sources, _ = maestro_job.maestro_sources(str(tree), True, split_seed=0,
                                           validation_fraction=0.34)
  kept, info = maestro_job.exclude_overlap(sources, [str(tmp_path / "rated")])
  assert info["compositions"] == ["C3/piece"]
  assert (info["midi_files"], info["found"], info["performances_left_out"]) == (3, 1, 2)
  assert len(info["rated_unreadable"]) == 1 and "broken.mid" in info["rated_unreadable"][0]
  assert len(info["sources_unreadable"]) == 1 and "C5/piece/p1.mid" in info[
      "sources_unreadable"][0]
  assert info["sources_unchecked"] == []
  assert kept == [s for s in sources if not s.key.startswith("C3/")]
  # Nothing to look for, nothing left out.
  assert maestro_job.exclude_overlap(sources, []) == (sources, {})
  # Refused: a directory without MIDI, a missing one, a file, only unreadable MIDI.
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no MIDI files under"):
    maestro_job.exclude_overlap(sources, [str(tmp_path / "empty")])
  for path in (tmp_path / "missing", rated / "cut.mid"):
    with pytest.raises(FileNotFoundError, match="not a directory of rated MIDI"):
      maestro_job.exclude_overlap(sources, [str(path)])
  (tmp_path / "unreadable").mkdir()
  (tmp_path / "unreadable" / "x.mid").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="none of the 1 MIDI files .* can be read"):
    maestro_job.exclude_overlap(sources, [str(tmp_path / "unreadable")])
  # A rated copy in every validation composition would leave that split empty: refused.
  validation = sorted({s.key.rsplit("/", 1)[0] for s in sources if s.split == "validation"})
  (tmp_path / "all_validation").mkdir()
  for i, folder in enumerate(validation):
    c = int(folder[1])
    (tmp_path / "all_validation" / f"{i}.mid").write_bytes(
        midi_bytes(_excerpt(_performance(10 * c), 0, 30)))
  with pytest.raises(ValueError, match=r"leaves nothing of split\(s\) \['validation'\]"):
    maestro_job.exclude_overlap(sources, [str(tmp_path / "all_validation")])


def _job(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pipelines.beam.maestro_job", *map(str, args),
                         "--direct_running_mode=in_memory", "--direct_num_workers=1"],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_the_job_renders_no_window_of_a_left_out_composition_and_records_why(tmp_path,
                                                                             make_midi):
  midi_bytes = make_midi
  short = {f"C{c}/piece": [_performance(10 * c + i, onsets=12) for i in range(2)]
           for c in range(3)}
  tree = _asap_tree(tmp_path / "asap", short, midi_bytes)
  rated = tmp_path / "rated"
  rated.mkdir()
  (rated / "cut.mid").write_bytes(midi_bytes(_excerpt(short["C1/piece"][0], 2, 30)))
  out = tmp_path / "out"
  proc = _job(f"--maestro_dir={tree}", f"--output_dir={out}", "--from_midi",
              "--validation_fraction=0.34", "--target_shard_mb=1", "--nowrite_audio",
              f"--exclude_overlap_with={rated}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"left out 1 compositions (2 performances) holding 1 of the 1 MIDI files under "
          f"['{rated}']: ['C1/piece']") in proc.stdout
  meta = json.loads((out / layout.METADATA).read_text())
  assert meta["splits"]["excluded_overlap"]["compositions"] == ["C1/piece"]
  assert meta["config"]["exclude_overlap_with"] == [str(rated)]
  assert "listed 4 = written 4" in proc.stdout
  bad = _job(f"--maestro_dir={tree}", f"--output_dir={tmp_path / 'bad'}", "--from_midi",
             "--validation_fraction=0.34", f"--exclude_overlap_with={tmp_path / 'missing'}")
  assert bad.returncode != 0 and "error: not a directory of rated MIDI" in bad.stderr
  assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.real_data
def test_the_real_percepiano_excerpts_inside_asap(percepiano_dir, asap_dir):
  """The known answer on the real releases: 52 of PercePiano's excerpts of Schubert's D935
  no. 3 are cut from ASAP's Impromptu op. 142 no. 3 performances, and nothing else is."""
  sources, _ = maestro_job.maestro_sources(str(asap_dir), True, split_seed=0)
  kept, info = maestro_job.exclude_overlap(sources, [str(percepiano_dir)], workers=2)
  assert info["compositions"] == ["Schubert/Impromptu_op142/3"]
  assert info["found"] == 52 and info["rated_unreadable"] == []
  assert len(sources) - len(kept) == info["performances_left_out"] == 8
