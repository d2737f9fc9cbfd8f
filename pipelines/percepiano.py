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

import dataclasses
import json
import math
import os
import pathlib
import re

import numpy as np

from pipelines import taxonomy

LABELS_FILE = "label_2round_mean_reg_19_with0_rm_highstd0.json"
STD_FILE = "label_2round_std_reg_19_with0_rm_highstd0.json"
RAW_RATINGS_FILE = "labels/total_2rounds.csv"
MIDI_DIR = "virtuoso/data/all_2rounds"
MIDI_SUFFIXES = (".mid", ".midi")
# Columns of the 19 answers in the raw CSV, in label order (the release's names).
RAW_QUESTION_COLUMNS = (
    "Question_1_1_1", "Question_2_1_1", "Question_2_2_1", "Question_3_1_1", "Question_3_2_1",
    "Question_4_1_1", "Question_4_2_1", "Question_4_3_1", "Question_4_4_1_5_2_1",
    "Question_5_3_1", "Question_5_5_1", "Question_6_1_1", "Question_6_4_1",
    "Question_6_5_1_5_4_1", "Question_6_6_1_5_1_1", "Question_7_1_1", "Question_7_2_1",
    "Question_8_1_1", "Question_9_1_1")

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


def _load_json_object(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"PercePiano file not found: {path}")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PercePianoError(f"{path}: not valid JSON ({e})") from None
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


def read_labels(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, int]]:
  """Reads the mean-label file: key -> (labels float32 [19], performer id)."""
  path = pathlib.Path(path)
  data = _load_json_object(path)
  n = taxonomy.NUM_DIMENSIONS
  out, errors = {}, []
  for key, value in data.items():
    try:
      parse_key(key)
    except PercePianoError as e:
      errors.append(str(e))
      continue
    if not isinstance(value, list) or len(value) != n + 1:
      errors.append(f"key {key!r}: expected a list of {n} ratings + performer id, got {value!r:.80}")
      continue
    problem = _finite_numbers(value, n)
    if problem is None and not all(0.0 <= v <= 1.0 for v in value[:n]):
      problem = "ratings must lie in [0, 1] (mean rating / 7)"
    performer = value[n]
    if problem is None and (isinstance(performer, bool) or not isinstance(performer, (int, float))
                            or not float(performer).is_integer() or performer < 0):
      problem = f"performer id {performer!r} is not a non-negative integer"
    if problem:
      errors.append(f"key {key!r}: {problem}")
      continue
    out[key] = (np.asarray(value[:n], dtype=np.float32), int(performer))
  _raise_collected(str(path), errors)
  return out


def read_label_std(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the std file: key -> float32 [19] (a trailing performer id is allowed)."""
  path = pathlib.Path(path)
  data = _load_json_object(path)
  n = taxonomy.NUM_DIMENSIONS
  out, errors = {}, []
  for key, value in data.items():
    if not isinstance(value, list) or len(value) not in (n, n + 1):
      errors.append(f"key {key!r}: expected {n} standard deviations, got {value!r:.80}")
      continue
    problem = _finite_numbers(value, n)
    if problem is None and any(v < 0 for v in value[:n]):
      problem = "standard deviations must be >= 0"
    if problem:
      errors.append(f"key {key!r}: {problem}")
      continue
    out[key] = np.asarray(value[:n], dtype=np.float32)
  _raise_collected(str(path), errors)
  return out


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
