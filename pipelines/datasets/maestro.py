"""Readers for MAESTRO v3 metadata and for ASAP as a MAESTRO-derived MIDI corpus.

MAESTRO v3 layout: `<root>/maestro-v3.0.0.csv` (and a `.json` with the same
columns) listing `YYYY/<name>.midi` and `YYYY/<name>.wav` relative to `<root>`.
Paths come from a file a user downloaded, so they are validated as relative
paths inside the root (no absolute paths, no `..`), and files that are listed
but absent are reported, never silently skipped.

ASAP (`metadata.csv`) holds MAESTRO performances as MIDI; its
`maestro_{midi,audio}_performance` columns name the MAESTRO files as
`{maestro}/YYYY/<name>`, which we resolve to MAESTRO-relative names and years.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re

CSV_FILE = "maestro-v3.0.0.csv"
JSON_FILE = "maestro-v3.0.0.json"
COLUMNS = ("canonical_composer", "canonical_title", "split", "year", "midi_filename",
           "audio_filename", "duration")
SPLITS = ("train", "validation", "test")

ASAP_METADATA = "metadata.csv"
ASAP_COLUMNS = ("composer", "title", "folder", "midi_performance", "maestro_midi_performance",
                "maestro_audio_performance")
_MAESTRO_PREFIX = "{maestro}/"
_YEAR_FOLDER = re.compile(r"^(\d{4})/")


class MetadataError(ValueError):
  """A metadata file is malformed; the message names the file and row."""


def safe_relative_path(value: str, *, where: str) -> str:
  """Returns `value` as a normalised POSIX path that stays inside its root.

  Rejects empty values, absolute paths (POSIX, Windows drive or UNC), and any
  `..` component, so a crafted manifest cannot read outside the dataset.
  """
  if not isinstance(value, str) or not value.strip():
    raise MetadataError(f"{where}: empty path")
  if "\x00" in value:
    raise MetadataError(f"{where}: path contains a NUL byte")
  path = value.replace("\\", "/")
  if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
    raise MetadataError(f"{where}: absolute path {value!r} not allowed")
  parts = [p for p in path.split("/") if p not in ("", ".")]
  if ".." in parts:
    raise MetadataError(f"{where}: path {value!r} escapes the dataset root ('..')")
  if not parts:
    raise MetadataError(f"{where}: empty path")
  return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class MaestroPerformance:
  canonical_composer: str
  canonical_title: str
  split: str
  year: int
  midi_filename: str  # relative to the dataset root, validated
  audio_filename: str
  duration: float  # seconds, from the metadata


@dataclasses.dataclass(frozen=True)
class MaestroIndex:
  root: pathlib.Path
  performances: tuple[MaestroPerformance, ...]
  missing_files: tuple[str, ...]  # listed but absent, relative to root


def _validate_row(row: dict, where: str) -> MaestroPerformance:
  missing = [c for c in COLUMNS if row.get(c) is None]
  if missing:
    raise MetadataError(f"{where}: missing values for {missing}")
  split = str(row["split"]).strip()
  if split not in SPLITS:
    raise MetadataError(f"{where}: split {split!r} is not one of {SPLITS}")
  try:
    year_value = float(str(row["year"]).strip())
    duration = float(str(row["duration"]).strip())
    if not year_value.is_integer():
      raise ValueError(year_value)
    year = int(year_value)
  except (ValueError, OverflowError):
    raise MetadataError(
        f"{where}: year {row['year']!r} / duration {row['duration']!r} not numeric") from None
  if not math.isfinite(duration) or duration < 0:
    raise MetadataError(f"{where}: duration {duration} must be finite and >= 0")
  return MaestroPerformance(
      canonical_composer=str(row["canonical_composer"]),
      canonical_title=str(row["canonical_title"]),
      split=split,
      year=year,
      midi_filename=safe_relative_path(str(row["midi_filename"]), where=f"{where} midi_filename"),
      audio_filename=safe_relative_path(str(row["audio_filename"]),
                                        where=f"{where} audio_filename"),
      duration=duration,
  )


def read_maestro_csv(path: str | os.PathLike) -> tuple[MaestroPerformance, ...]:
  path = pathlib.Path(path)
  try:
    with path.open(newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      absent = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
      if absent:
        raise MetadataError(f"{path}: missing required columns {absent}")
      return tuple(_validate_row(row, f"{path} row {i}")
                   for i, row in enumerate(reader, start=2))
  except (UnicodeDecodeError, csv.Error) as e:
    raise MetadataError(f"{path}: not a readable UTF-8 CSV ({e})") from None


def read_maestro_json(path: str | os.PathLike) -> tuple[MaestroPerformance, ...]:
  """Reads the column-oriented JSON MAESTRO ships ({column: {row_id: value}})."""
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise MetadataError(f"{path}: not valid UTF-8 JSON ({e})") from None
  if isinstance(data, list):  # also accept a list of row objects
    rows = data
    if not all(isinstance(r, dict) for r in rows):
      raise MetadataError(f"{path}: a list of rows must hold JSON objects")
  elif isinstance(data, dict):
    absent = [c for c in COLUMNS if c not in data]
    if absent:
      raise MetadataError(f"{path}: missing required columns {absent}")
    if not all(isinstance(data[c], dict) for c in COLUMNS):
      raise MetadataError(f"{path}: each column must be an object {{row id: value}}")
    ids = list(data[COLUMNS[0]])
    rows = [{c: data[c].get(i) for c in COLUMNS} for i in ids]
  else:
    raise MetadataError(f"{path}: expected an object of columns or a list of rows")
  return tuple(_validate_row(row, f"{path} row {i}") for i, row in enumerate(rows))


def read_maestro(root: str | os.PathLike) -> MaestroIndex:
  """Reads a MAESTRO v3 tree: the CSV (or, without it, the JSON) plus a file check.

  When both are present they must list the same performances.
  """
  root = pathlib.Path(root)
  csv_path, json_path = root / CSV_FILE, root / JSON_FILE
  if csv_path.is_file():
    performances = read_maestro_csv(csv_path)
    if json_path.is_file():
      other = read_maestro_json(json_path)
      if sorted(performances, key=lambda p: p.midi_filename) != sorted(
          other, key=lambda p: p.midi_filename):
        raise MetadataError(f"{csv_path} and {json_path} list different performances")
  elif json_path.is_file():
    performances = read_maestro_json(json_path)
  else:
    raise FileNotFoundError(f"no {CSV_FILE} or {JSON_FILE} in {root}")
  seen: set[str] = set()
  for p in performances:
    if p.midi_filename in seen:
      raise MetadataError(f"{root}: {p.midi_filename} is listed twice")
    seen.add(p.midi_filename)
  missing = tuple(
      rel for p in performances for rel in (p.midi_filename, p.audio_filename)
      if not (root / rel).is_file())
  return MaestroIndex(root=root, performances=performances, missing_files=missing)


@dataclasses.dataclass(frozen=True)
class AsapPerformance:
  composer: str
  title: str
  folder: str  # ASAP's piece folder, e.g. "Bach/Fugue/bwv_846": one composition
  midi_filename: str  # relative to the ASAP root, validated
  maestro_midi_filename: str | None  # "YYYY/<name>.midi" in MAESTRO, when ASAP links it
  maestro_audio_filename: str | None
  year: int | None  # the MAESTRO year folder, when linked


@dataclasses.dataclass(frozen=True)
class AsapIndex:
  root: pathlib.Path
  performances: tuple[AsapPerformance, ...]
  missing_files: tuple[str, ...]


def _maestro_name(value: str, where: str) -> str | None:
  value = (value or "").strip()
  if not value:
    return None
  if not value.startswith(_MAESTRO_PREFIX):
    raise MetadataError(f"{where}: expected '{_MAESTRO_PREFIX}YYYY/<name>', got {value!r}")
  return safe_relative_path(value[len(_MAESTRO_PREFIX):], where=where)


def read_asap(root: str | os.PathLike) -> AsapIndex:
  """Reads ASAP's `metadata.csv` as a corpus of MAESTRO performances in MIDI."""
  root = pathlib.Path(root)
  path = root / ASAP_METADATA
  if not path.is_file():
    raise FileNotFoundError(f"ASAP metadata not found: {path}")
  try:
    performances = _read_asap_rows(path)
  except (UnicodeDecodeError, csv.Error) as e:
    raise MetadataError(f"{path}: not a readable UTF-8 CSV ({e})") from None
  missing = tuple(p.midi_filename for p in performances if not (root / p.midi_filename).is_file())
  return AsapIndex(root=root, performances=tuple(performances), missing_files=missing)


def _read_asap_rows(path: pathlib.Path) -> list[AsapPerformance]:
  performances = []
  with path.open(newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    absent = [c for c in ASAP_COLUMNS if c not in (reader.fieldnames or ())]
    if absent:
      raise MetadataError(f"{path}: missing required columns {absent}")
    for i, row in enumerate(reader, start=2):
      where = f"{path} row {i}"
      midi = _maestro_name(row["maestro_midi_performance"], f"{where} maestro_midi_performance")
      year_match = _YEAR_FOLDER.match(midi or "")
      performances.append(AsapPerformance(
          composer=row["composer"],
          title=row["title"],
          folder=safe_relative_path(row["folder"], where=f"{where} folder"),
          midi_filename=safe_relative_path(row["midi_performance"],
                                           where=f"{where} midi_performance"),
          maestro_midi_filename=midi,
          maestro_audio_filename=_maestro_name(row["maestro_audio_performance"],
                                               f"{where} maestro_audio_performance"),
          year=int(year_match[1]) if year_match else None,
      ))
  return performances
