"""Reader for the PercePiano release layout (labels, std, performance MIDI).

Layout (github.com/JonghoKimSNU/PercePiano, and what `make_corpus` generates):

  <root>/label_2round_mean_reg_19_with0_rm_highstd0.json   key -> 19 means/7 + performer id
  <root>/label_2round_std_reg_19_with0_rm_highstd0.json    key -> 19 rating std
  <root>/labels/total_2rounds.csv                          raw per-rater answers
  <root>/virtuoso/data/all_2rounds/<key>.mid               performance MIDI

Keys look like `Schubert_D960_mv2_8bars_3_07`: composer, work (which may contain
underscores, e.g. `D960_mv2`), passage length in bars, performer token (`3`,
`Score`, `Score2`) and segment number. Every validation error names the key.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re

import numpy as np

from pipelines.datasets import taxonomy

LABELS_FILE = "label_2round_mean_reg_19_with0_rm_highstd0.json"
STD_FILE = "label_2round_std_reg_19_with0_rm_highstd0.json"
RAW_RATINGS_FILE = "labels/total_2rounds.csv"
# Labels are mean ratings / RATING_SCALE (the questionnaire's 1-7 scale); x RATING_SCALE undoes it.
RATING_SCALE = 7.0
MIDI_DIR = "virtuoso/data/all_2rounds"
MIDI_SUFFIXES = (".mid", ".midi")
# The raw CSV's columns: user, answer id, clip file name, the 19 answers in label
# order, one more question that is not a label dimension, and a free-text message.
RAW_QUESTION_COLUMNS = (
    "Question_1_1_1", "Question_2_1_1", "Question_2_2_1", "Question_3_1_1", "Question_3_2_1",
    "Question_4_1_1", "Question_4_2_1", "Question_4_3_1", "Question_4_4_1_5_2_1",
    "Question_5_3_1", "Question_5_5_1", "Question_6_1_1", "Question_6_4_1",
    "Question_6_5_1_5_4_1", "Question_6_6_1_5_1_1", "Question_7_1_1", "Question_7_2_1",
    "Question_8_1_1", "Question_9_1_1")
RAW_HEADER = ("user", "dataID", "filename") + RAW_QUESTION_COLUMNS + ("Question_9_2_1",
                                                                     "message")

_KEY = re.compile(
    r"^(?P<composer>[A-Za-z]+)_(?P<work>[^\s/\\]+?)_(?P<bars>\d+)bars_"
    r"(?P<performer>[A-Za-z0-9]+)_(?P<segment>\d+)$")

# Errors listed in one exception before "... and N more".
_MAX_LISTED = 20


class PercePianoError(ValueError):
  """The release at hand does not match the PercePiano layout or value rules."""


@dataclasses.dataclass(frozen=True)
class Key:
  """A parsed PercePiano key `{composer}_{work}_{bars}bars_{performer}_{segment}`."""

  text: str
  composer: str
  work: str
  bars: int
  performer: str  # the key's performer token: "3", "Score", "Score2"
  segment: str  # kept as text: "07" and "7" are different keys in the release

  @property
  def movement(self) -> str:
    """Work/movement: the unit of the piece split (all bar-lengths of it are the same music)."""
    return f"{self.composer}_{self.work}"

  @property
  def passage(self) -> str:
    """One passage of music; several performers play each passage."""
    return f"{self.composer}_{self.work}_{self.bars}bars_{self.segment}"


def parse_key(text: str) -> Key:
  match = _KEY.match(text)
  if match is None:
    raise PercePianoError(
        f"key {text!r}: expected {{composer}}_{{work}}_{{N}}bars_{{performer}}_{{segment}}")
  return Key(text=text, composer=match["composer"], work=match["work"],
             bars=int(match["bars"]), performer=match["performer"],
             segment=match["segment"])


@dataclasses.dataclass(frozen=True)
class Performance:
  """One rated performance (clip) of the release."""

  key: Key
  labels: np.ndarray  # float32 [19], mean rating / 7, in label order
  label_std: np.ndarray | None  # float32 [19] rating std, when the std file is read
  performer_id: int  # the integer performer id of the label file
  midi_path: pathlib.Path | None  # None when the MIDI file is missing


@dataclasses.dataclass(frozen=True)
class Release:
  """A PercePiano release read from disk."""

  root: pathlib.Path
  performances: tuple[Performance, ...]  # sorted by key
  keys_without_midi: tuple[str, ...]
  midi_without_keys: tuple[pathlib.Path, ...]

  def by_key(self) -> dict[str, Performance]:
    return {p.key.text: p for p in self.performances}


def _raise_collected(what: str, errors: list[str]) -> None:
  if errors:
    listed = "\n  ".join(errors[:_MAX_LISTED])
    more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
    raise PercePianoError(f"{what}: {len(errors)} invalid entries\n  {listed}{more}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
  keys = [k for k, _ in pairs]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    # Not a JSONDecodeError: its "line 1 column 1" would point at the wrong place.
    raise PercePianoError(f"key(s) listed twice: {repeated[:_MAX_LISTED]}")
  return dict(pairs)


def _load_json_object(path: pathlib.Path) -> dict:
  if not path.is_file():
    what = "is a directory, not a file" if path.is_dir() else "not found"
    raise FileNotFoundError(f"PercePiano file {what}: {path}")
  try:
    data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PercePianoError(f"{path}: not valid JSON ({e})") from None
  except PercePianoError as e:
    raise PercePianoError(f"{path}: {e}") from None
  if not isinstance(data, dict) or not data:
    raise PercePianoError(f"{path}: expected a non-empty JSON object keyed by performance")
  return data


def _finite_numbers(values: list, count: int) -> str | None:
  """Returns why `values[:count]` are not `count` finite numbers, else None."""
  for i, v in enumerate(values[:count]):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return f"dimension {i} is {v!r}, not a number"
    if not math.isfinite(v):
      return f"dimension {i} is {v!r}, not finite"
  return None


def _read_entries(path: pathlib.Path, check) -> dict:
  """Loads a label JSON, validating each key and `check(value) -> (parsed, problem)`.

  All invalid entries are collected and raised together, each naming its key.
  """
  out, errors = {}, []
  for key, value in _load_json_object(path).items():
    try:
      parse_key(key)
    except PercePianoError as e:
      errors.append(str(e))
      continue
    parsed, problem = check(value)
    if problem:
      errors.append(f"key {key!r}: {problem}")
    else:
      out[key] = parsed
  _raise_collected(str(path), errors)
  return out


def _check_label(value) -> tuple[tuple[np.ndarray, int] | None, str | None]:
  n = taxonomy.NUM_DIMENSIONS
  if not isinstance(value, list) or len(value) != n + 1:
    return None, f"expected a list of {n} ratings + performer id, got {value!r:.80}"
  problem = _finite_numbers(value, n)
  if problem is None and not all(0.0 <= v <= 1.0 for v in value[:n]):
    problem = "ratings must lie in [0, 1] (mean rating / 7)"
  performer = value[n]
  if problem is None and (isinstance(performer, bool) or not isinstance(performer, (int, float))
                          or not float(performer).is_integer() or performer < 0):
    problem = f"performer id {performer!r} is not a non-negative integer"
  if problem:
    return None, problem
  return (np.asarray(value[:n], dtype=np.float32), int(performer)), None


def _check_std(value) -> tuple[np.ndarray | None, str | None]:
  n = taxonomy.NUM_DIMENSIONS
  if not isinstance(value, list) or len(value) not in (n, n + 1):
    return None, f"expected {n} standard deviations, got {value!r:.80}"
  problem = _finite_numbers(value, n)
  if problem is None and any(v < 0 for v in value[:n]):
    problem = "standard deviations must be >= 0"
  if problem:
    return None, problem
  return np.asarray(value[:n], dtype=np.float32), None


def read_labels(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, int]]:
  """Reads the mean-label file: key -> (labels float32 [19], performer id)."""
  return _read_entries(pathlib.Path(path), _check_label)


def read_label_std(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the std file: key -> float32 [19] (a trailing performer id is allowed)."""
  return _read_entries(pathlib.Path(path), _check_std)


def index_midi(midi_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Maps key -> MIDI path for every `.mid`/`.midi` file in `midi_dir`.

  File names are matched to keys after stripping surrounding whitespace: the
  real release has a file named with a leading space whose key has none.
  """
  midi_dir = pathlib.Path(midi_dir)
  if not midi_dir.is_dir():
    raise FileNotFoundError(f"PercePiano MIDI folder not found: {midi_dir}")
  index: dict[str, pathlib.Path] = {}
  for path in sorted(midi_dir.iterdir()):
    name = pathlib.PurePath(path.name.strip())
    if not path.is_file() or name.suffix.lower() not in MIDI_SUFFIXES:
      continue
    key = name.stem.strip()
    if key in index:
      raise PercePianoError(
          f"two MIDI files map to key {key!r}: {index[key].name!r} and {path.name!r}")
    index[key] = path
  return index


def read_release(
    root: str | os.PathLike,
    *,
    read_std: bool = True,
) -> Release:
  """Reads and validates a PercePiano release rooted at `root`.

  Missing MIDI files are reported in `keys_without_midi` (their performances
  have `midi_path=None`) rather than raised, so a pipeline can dead-letter them
  with a reason; MIDI files without a label are listed in `midi_without_keys`.

  Raises:
    FileNotFoundError: a required file or folder is missing.
    PercePianoError: malformed keys or values (the message lists the keys).
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"PercePiano folder not found: {root}")
  labels = read_labels(root / LABELS_FILE)
  stds = read_label_std(root / STD_FILE) if read_std else {}
  if read_std and stds.keys() != labels.keys():
    only_std = sorted(stds.keys() - labels.keys())
    only_mean = sorted(labels.keys() - stds.keys())
    raise PercePianoError(
        f"{root}: mean and std label files list different keys; "
        f"only in std: {only_std[:_MAX_LISTED]}, only in mean: {only_mean[:_MAX_LISTED]}")
  midi = index_midi(root / MIDI_DIR)

  keys = {k: parse_key(k) for k in labels}
  # A performer token must always carry the same integer id, and vice versa:
  # otherwise the performer split would group the wrong clips.
  token_to_id: dict[str, int] = {}
  id_to_token: dict[int, str] = {}
  errors = []
  for text, key in sorted(keys.items()):
    pid = labels[text][1]
    known_id = token_to_id.setdefault(key.performer, pid)
    known_token = id_to_token.setdefault(pid, key.performer)
    if known_id != pid or known_token != key.performer:
      errors.append(f"key {text!r}: performer {key.performer!r} with id {pid} conflicts with "
                    f"earlier keys ({key.performer!r} -> id {known_id}, "
                    f"id {pid} -> {known_token!r})")
  _raise_collected(f"{root / LABELS_FILE}: inconsistent performer ids", errors)

  performances = tuple(
      Performance(key=keys[text], labels=labels[text][0], label_std=stds.get(text),
                  performer_id=labels[text][1], midi_path=midi.get(text))
      for text in sorted(labels))
  return Release(
      root=root,
      performances=performances,
      keys_without_midi=tuple(sorted(labels.keys() - midi.keys())),
      midi_without_keys=tuple(midi[k] for k in sorted(midi.keys() - labels.keys())),
  )


@dataclasses.dataclass(frozen=True)
class RawRatings:
  """Per-rater answers: one row per (user, clip) answer of `labels/total_2rounds.csv`."""

  users: np.ndarray  # [rows] int
  keys: tuple[str, ...]  # [rows] clip key (file name without .wav)
  answers: np.ndarray  # [rows, 19] float; 0 = missing answer

  def labels(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The release's rule: key -> (mean / 7, population std / 7), each float64 [19].

    Rows with any answer above 7 are invalid and dropped; an empty or 0 answer is
    missing for its dimension; exact duplicate rows count twice, as they do in
    the released labels (this reproduces the real label file exactly).
    """
    valid = ~np.any(self.answers > 7, axis=1)
    by_key: dict[str, list[np.ndarray]] = {}
    for key, row in zip(np.asarray(self.keys)[valid], self.answers[valid]):
      by_key.setdefault(str(key), []).append(row)
    out = {}
    for key, rows in by_key.items():
      a = np.stack(rows)
      present = a > 0
      count = present.sum(axis=0)
      if np.any(count == 0):
        raise PercePianoError(f"key {key!r}: a dimension has no valid answer")
      mean = np.where(present, a, 0.0).sum(axis=0) / count
      var = np.where(present, (a - mean) ** 2, 0.0).sum(axis=0) / count
      out[key] = (mean / RATING_SCALE, np.sqrt(var) / RATING_SCALE)
    return out


def read_raw_ratings(path: str | os.PathLike) -> RawRatings:
  """Reads the raw per-rater CSV; malformed rows raise errors naming the line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"raw ratings not found: {path}")
  users, keys, answers = [], [], []
  with path.open(newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = tuple(next(reader, ()))
    if header[3:3 + len(RAW_QUESTION_COLUMNS)] != RAW_QUESTION_COLUMNS or header[:3] != (
        "user", "dataID", "filename"):
      raise PercePianoError(f"{path}: header {header[:4]}... is not the release's")
    for line, row in enumerate(reader, start=2):
      try:
        values = [float(v) if v.strip() else 0.0 for v in row[3:3 + len(RAW_QUESTION_COLUMNS)]]
        if len(values) != len(RAW_QUESTION_COLUMNS) or not all(map(math.isfinite, values)):
          raise ValueError("expected 19 finite answers")
        user = int(row[0])
      except (ValueError, IndexError) as e:
        raise PercePianoError(f"{path} line {line}: {e}") from None
      filename = row[2]
      if not filename.endswith(".wav"):
        raise PercePianoError(f"{path} line {line}: file name {filename!r} is not <key>.wav")
      users.append(user)
      keys.append(filename[:-len(".wav")])
      answers.append(values)
  return RawRatings(users=np.asarray(users), keys=tuple(keys),
                    answers=np.asarray(answers, dtype=np.float64).reshape(-1, len(
                        RAW_QUESTION_COLUMNS)))
