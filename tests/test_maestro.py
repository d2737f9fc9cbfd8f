"""pipelines.beam.maestro_job on generated MAESTRO-layout trees (good and malformed) and on real ASAP."""

import csv
import json
import pathlib

import pytest

from pipelines.datasets import maestro

ROWS = [
    dict(canonical_composer="Franz Schubert", canonical_title="Sonata D960", split="train",
         year=2004, midi_filename="2004/a.midi", audio_filename="2004/a.wav", duration=12.5),
    dict(canonical_composer="Frédéric Chopin", canonical_title="Étude, Op. 10", split="validation",
         year=2006, midi_filename="2006/b.midi", audio_filename="2006/b.wav", duration=3.0),
    dict(canonical_composer="J. S. Bach", canonical_title="Prelude, BWV 846", split="test",
         year=2018, midi_filename="2018/c.midi", audio_filename="2018/c.wav", duration=60.25),
]


def _write_tree(root: pathlib.Path, rows=ROWS, *, csv_file=True, json_file=True,
                files=True, columns=maestro.COLUMNS) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  if csv_file:
    with (root / maestro.CSV_FILE).open("w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
  if json_file:  # MAESTRO's column-oriented JSON
    data = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in columns}
    (root / maestro.JSON_FILE).write_text(json.dumps(data), encoding="utf-8")
  if files:
    for r in rows:
      for rel in (r["midi_filename"], r["audio_filename"]):
        path = root / rel
        if rel.strip("./") and ".." not in rel and not pathlib.PurePath(rel).is_absolute():
          path.parent.mkdir(parents=True, exist_ok=True)
          path.write_bytes(b"x")
  return root


def test_reads_a_valid_tree(tmp_path):
  index = maestro.read_maestro(_write_tree(tmp_path))
  assert [p.split for p in index.performances] == ["train", "validation", "test"]
  assert index.performances[1].canonical_composer == "Frédéric Chopin"
  assert index.performances[2].duration == 60.25 and index.performances[2].year == 2018
  assert index.missing_files == ()
  assert (index.root / index.performances[0].midi_filename).is_file()


def test_json_alone_is_enough(tmp_path):
  index = maestro.read_maestro(_write_tree(tmp_path, csv_file=False))
  assert len(index.performances) == 3


def test_json_list_of_rows(tmp_path):
  path = tmp_path / "m.json"
  path.write_text(json.dumps(ROWS))
  assert len(maestro.read_maestro_json(path)) == 3


def test_missing_files_are_listed(tmp_path):
  root = _write_tree(tmp_path)
  (root / "2006/b.wav").unlink()
  (root / "2018/c.midi").unlink()
  assert maestro.read_maestro(root).missing_files == ("2006/b.wav", "2018/c.midi")


def test_no_metadata(tmp_path):
  with pytest.raises(FileNotFoundError, match="maestro-v3.0.0.csv"):
    maestro.read_maestro(tmp_path)


def test_missing_column(tmp_path):
  columns = [c for c in maestro.COLUMNS if c != "split"]
  with pytest.raises(maestro.MetadataError, match=r"missing required columns \['split'\]"):
    maestro.read_maestro(_write_tree(tmp_path, columns=columns, json_file=False))


@pytest.mark.parametrize("field,value,message", [
    ("split", "dev", "split 'dev'"),
    ("year", "MMIV", "not numeric"),
    ("duration", "long", "not numeric"),
    ("duration", "-1", ">= 0"),
    ("duration", "nan", "finite"),
    ("midi_filename", "/etc/passwd", "absolute path"),
    ("audio_filename", "C:\\maestro\\a.wav", "absolute path"),
    ("audio_filename", "\\\\server\\share\\a.wav", "absolute path"),
    ("midi_filename", "../../secrets.midi", "escapes the dataset root"),
    ("midi_filename", "2004/../../x.midi", "escapes the dataset root"),
    ("audio_filename", "2004\\..\\..\\x.wav", "escapes the dataset root"),
    ("midi_filename", "", "empty path"),
    ("midi_filename", "./", "empty path"),
])
def test_malformed_rows_name_file_and_row(tmp_path, field, value, message):
  rows = [dict(r) for r in ROWS]
  rows[1][field] = value
  root = _write_tree(tmp_path, rows, json_file=False)
  with pytest.raises(maestro.MetadataError, match=rf"maestro-v3.0.0.csv row 3.*{message}"):
    maestro.read_maestro(root)


def test_csv_and_json_must_agree(tmp_path):
  root = _write_tree(tmp_path)
  rows = [dict(r) for r in ROWS]
  rows[0]["split"] = "test"
  data = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in maestro.COLUMNS}
  (root / maestro.JSON_FILE).write_text(json.dumps(data))
  with pytest.raises(maestro.MetadataError, match="list different performances"):
    maestro.read_maestro(root)


def test_duplicate_rows(tmp_path):
  with pytest.raises(maestro.MetadataError, match="listed twice"):
    maestro.read_maestro(_write_tree(tmp_path, ROWS + ROWS[:1], json_file=False))


def test_safe_relative_path_normalises():
  assert maestro.safe_relative_path("2004//./a.wav", where="x") == "2004/a.wav"
  assert maestro.safe_relative_path("2004\\a.wav", where="x") == "2004/a.wav"
  with pytest.raises(maestro.MetadataError, match="NUL"):
    maestro.safe_relative_path("a\x00.wav", where="x")


def _write_asap(root, rows):
  root.mkdir(parents=True, exist_ok=True)
  columns = ["composer", "title", "folder", "xml_score", "midi_score", "midi_performance",
             "performance_annotations", "midi_score_annotations", "maestro_midi_performance",
             "maestro_audio_performance", "start", "end", "audio_performance"]
  with (root / "metadata.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
  return root


def test_asap_layout(tmp_path):
  root = _write_asap(tmp_path, [
      dict(composer="Bach", title="Fugue", folder="Bach/Fugue/bwv_846",
           midi_performance="Bach/Fugue/bwv_846/Shi05M.mid",
           maestro_midi_performance="{maestro}/2006/x.midi",
           maestro_audio_performance="{maestro}/2006/x.wav"),
      dict(composer="Bach", title="Fugue", folder="Bach/Fugue/bwv_846",
           midi_performance="Bach/Fugue/bwv_846/Other.mid"),
  ])
  (root / "Bach/Fugue/bwv_846").mkdir(parents=True)
  (root / "Bach/Fugue/bwv_846/Shi05M.mid").write_bytes(b"MThd")
  index = maestro.read_asap(root)
  first, second = index.performances
  assert (first.maestro_midi_filename, first.maestro_audio_filename, first.year) == (
      "2006/x.midi", "2006/x.wav", 2006)
  assert (second.maestro_midi_filename, second.year) == (None, None)
  assert index.missing_files == ("Bach/Fugue/bwv_846/Other.mid",)


@pytest.mark.parametrize("row,message", [
    (dict(midi_performance="../outside.mid"), "escapes the dataset root"),
    (dict(midi_performance="/abs.mid"), "absolute path"),
    (dict(maestro_midi_performance="2006/x.midi"), "expected '{maestro}/"),
    (dict(maestro_midi_performance="{maestro}/../x.midi"), "escapes"),
])
def test_asap_malformed(tmp_path, row, message):
  base = dict(composer="Bach", title="Fugue", folder="Bach/Fugue",
              midi_performance="Bach/Fugue/a.mid")
  root = _write_asap(tmp_path, [dict(base, **row)])
  with pytest.raises(maestro.MetadataError, match=rf"metadata.csv row 2.*{message}"):
    maestro.read_asap(root)


def test_asap_missing_metadata(tmp_path):
  with pytest.raises(FileNotFoundError, match="metadata.csv"):
    maestro.read_asap(tmp_path)


@pytest.mark.real_data
def test_real_asap(asap_dir):
  index = maestro.read_asap(asap_dir)
  assert len(index.performances) == 1067
  assert index.missing_files == ()
  linked = [p for p in index.performances if p.maestro_midi_filename]
  assert len(linked) == 519
  assert all(2004 <= p.year <= 2018 for p in linked)
  assert all(p.maestro_midi_filename.startswith(f"{p.year}/") for p in linked)


@pytest.mark.parametrize("content,message", [
    ({c: [1, 2] for c in maestro.COLUMNS}, "each column must be an object"),
    ([1, 2, 3], "must hold JSON objects"),
    ("\udcff", "UTF-8"),
])
def test_malformed_json_metadata(tmp_path, content, message):
  path = tmp_path / maestro.JSON_FILE
  if isinstance(content, str):
    path.write_bytes(b'{"canonical_composer": "\xff"}')
  else:
    path.write_text(json.dumps(content))
  with pytest.raises(maestro.MetadataError, match=message):
    maestro.read_maestro_json(path)


def test_non_utf8_csv(tmp_path):
  (tmp_path / maestro.CSV_FILE).write_bytes(",".join(maestro.COLUMNS).encode() + b"\n\xff\xfe,x\n")
  with pytest.raises(maestro.MetadataError, match="UTF-8"):
    maestro.read_maestro(tmp_path)


def test_integral_float_year_in_json(tmp_path):
  rows = [dict(r, year=float(r["year"])) for r in ROWS]
  path = tmp_path / "m.json"
  path.write_text(json.dumps(rows))
  assert [p.year for p in maestro.read_maestro_json(path)] == [2004, 2006, 2018]
  rows[0]["year"] = 2004.5
  path.write_text(json.dumps(rows))
  with pytest.raises(maestro.MetadataError, match="not numeric"):
    maestro.read_maestro_json(path)
