"""A Beam job's `metadata.json`, read once and typed.

The job (pipelines.beam.preprocess.finalize) writes it last, after every shard, so
its presence means the output is complete. Everything downstream asks it the same
few questions — which shard files hold which split and kind, the normalisation
statistics, the split tables, the job's flags — and before this module each reader
parsed the JSON by hand, with its own error for a missing or damaged file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from pipelines.shards import layout


class MetadataError(ValueError):
  """metadata.json is missing, not JSON, or lacks a field a reader needs."""


@dataclasses.dataclass(frozen=True)
class ShardFile:
  """One row of `shards`: a file of one kind, split and format."""

  file: str
  kind: str  # "windows" or "audio"
  split: str
  format: str
  records: int
  sha256: str
  bytes: int | None = None  # the file's size when the job wrote it


@dataclasses.dataclass(frozen=True)
class ShardMetadata:
  root: pathlib.Path
  raw: dict  # the whole document, for fields no typed accessor covers

  def _field(self, name: str):
    try:
      return self.raw[name]
    except KeyError:
      raise MetadataError(f"{self.root}/{layout.METADATA} has no {name!r}: not a "
                          "pipelines.beam job's metadata") from None

  @property
  def dataset(self) -> str:
    return self._field("dataset")

  @property
  def config(self) -> dict:
    """The job's resolved flags (window_s, hop_s, augment_config, ...)."""
    return self.raw.get("config", {})

  @property
  def splits(self) -> dict:
    """The split tables: "shards_follow", and key -> "test" / "fold<k>" per split."""
    return self._field("splits")

  def split_table(self, split: str) -> dict[str, str]:
    try:
      return self.splits[split]
    except KeyError:
      raise MetadataError(f"{self.root}: no {split!r} split table (a "
                          f"{self.raw.get('dataset')!r} job's output?)") from None

  def folds(self, split: str) -> list[int]:
    """The cross-validation folds of `split`, in order."""
    return sorted({int(v.removeprefix("fold")) for v in self.split_table(split).values()
                   if v.startswith("fold")})

  def test_keys(self, split: str) -> list[str]:
    return sorted(k for k, v in self.split_table(split).items() if v == "test")

  @property
  def normalization(self) -> tuple[float, float]:
    """(mean, std) of the training windows' log-mel values."""
    norm = self.raw.get("normalization", {})
    if norm.get("mean") is None or not norm.get("std"):
      raise MetadataError(f"{self.root}: metadata has no normalisation statistics")
    return float(norm["mean"]), float(norm["std"])

  def shard_files(self, kind: str, *, splits: Sequence[str] | None = None,
                  fmt: str = "array_record") -> list[ShardFile]:
    """Non-empty shard files of `kind` in `fmt`, in the metadata's (file name) order."""
    return [ShardFile(file=r["file"], kind=r["kind"], split=r["split"], format=r["format"],
                      records=r["records"], sha256=r["sha256"], bytes=r.get("bytes"))
            for r in self._field("shards")
            if r["kind"] == kind and r["format"] == fmt and r["records"]
            and (splits is None or r["split"] in splits)]


def read(root: str | pathlib.Path) -> ShardMetadata:
  """The metadata of the job output in `root`; a clear error when it is not one."""
  root = pathlib.Path(root)
  path = root / layout.METADATA
  if not path.is_file():
    raise FileNotFoundError(f"{root} has no {layout.METADATA}: not the finished output of a "
                            "pipelines.beam job")
  try:
    raw = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise MetadataError(f"{path} is not valid JSON ({e}); rerun the job") from None
  if not isinstance(raw, dict):
    raise MetadataError(f"{path} holds a JSON {type(raw).__name__}, not a pipelines.beam job's "
                        "metadata")
  return ShardMetadata(root=root, raw=raw)


# The name of a job's timbre when it read audio files instead of rendering MIDI.
RECORDED = "audio files"
# The name of the zero-install default SoundFont, the pretty_midi wheel's TimGM6mb.sf2.
DEFAULT_SOUNDFONT = "TimGM6mb"


def soundfont_label(font: str | None) -> str:
  """A SoundFont's name in metadata: its file name without the suffix. None (the Beam
  config's default) and "default" (the jobs' --soundfonts spelling) are TimGM6mb."""
  return DEFAULT_SOUNDFONT if font in (None, "default") else pathlib.Path(font).stem


def soundfonts(raw: dict) -> dict[str, str | None]:
  """Name -> SHA-256 of the SoundFonts a job rendered with, from its metadata (`raw`: the
  parsed file, or a run's copy of it). Jobs before the list rendered with the one
  `--soundfont` (by default TimGM6mb); jobs over audio files with none (RECORDED)."""
  if raw.get("soundfonts"):
    return dict(raw["soundfonts"])
  if not raw.get("soundfont_sha256"):
    return {RECORDED: None}
  chosen = (raw.get("config") or {}).get("soundfont")
  return {soundfont_label(chosen or None): raw["soundfont_sha256"]}


def soundfont_name(raw: dict) -> str:
  """The SoundFonts a job rendered with, as one name (`A+B` for several)."""
  return "+".join(soundfonts(raw))

