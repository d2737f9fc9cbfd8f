"""A job's window shards read back per performance, in time order and tiled without overlap.

Transcription (`eval.shard_transcription`) and window embeddings (`eval.shard_embeddings`)
both place each performance's windows on one time line: a job run with a hop shorter than
its window keeps every window that starts at or after the previous kept one's end. This
module is kept free of JAX so that the benchmark's done-checks can read `TILING` without
loading the model code.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from pipelines.audio import features, notes
from pipelines.shards import layout, metadata, records

FRAME_S = features.AST.frame_shift_ms / 1000.0
# Recorded in what tiled windows make (notes archives, embedding tables). Those made before
# the tiling compared whole frames (`tiled_order`) lack it: they miss windows, and the
# benchmark remakes them.
TILING = "whole frames"


@dataclasses.dataclass
class Window:
  header: dict
  features: np.ndarray  # [mel, frames] as stored (not normalised)
  notes: notes.Notes | None  # None: the window's source had no MIDI

  @property
  def group(self) -> str:
    """What it shares with the other performances of one composition (ASAP's folder, the
    MAESTRO title; the key when neither is stored)."""
    h = self.header
    return str(h.get("composition") or h.get("title") or h["key"])


def read_windows(data_dir: str | pathlib.Path, splits: Sequence[str] | None = None, *,
                 variant: int = 0, max_seconds: float | None = None,
                 tiled: bool = True) -> dict[str, list[Window]]:
  """Every performance's windows of one variant (0: the clean audio), in time order, tiled
  without overlap (or every one, `tiled=False`); `max_seconds` keeps the windows that
  start before it."""
  data_dir = pathlib.Path(data_dir)
  files = metadata.read(data_dir).shard_files("windows", splits=splits)
  if not files:
    raise FileNotFoundError(f"{data_dir}: no window shards for splits {list(splits or [])}")
  by_key: dict[str, list[Window]] = collections.defaultdict(list)
  for f in files:
    for data in layout.read_array_record(str(data_dir / f.file)):
      header, arrays = records.decode(data)
      if header["kind"] != "window" or header["variant"] != variant:
        continue
      if max_seconds is not None and header["start_s"] >= max_seconds:
        continue
      has_notes = header.get("num_notes", -1) >= 0
      by_key[header["key"]].append(Window(
          header, arrays["features"],
          notes.Notes(arrays["notes"], arrays["pedal"]) if has_notes else None))
  order = tiled_order if tiled else (lambda ws: sorted(ws, key=lambda w: w.header["start_s"]))
  return {key: order(windows) for key, windows in sorted(by_key.items())}


def tiled_order(windows: list[Window]) -> list[Window]:
  """Each window that starts where or after the previous kept one ends. Compared in whole
  frames: start times are float32 in the records (30.72 s reads as 30.7199993), and in
  seconds a window starting exactly at the previous one's end looked a hair early and was
  dropped, leaving a hole of a whole window in the transcription."""
  kept, end = [], -1
  for w in sorted(windows, key=lambda w: w.header["start_s"]):
    first = frame(w.header["start_s"])
    if first >= end:
      kept.append(w)
      end = first + w.header["num_frames"]
  return kept


def frame(seconds: float) -> int:
  """The frame a time in seconds falls on (rounded: record times are float32)."""
  return int(round(seconds / FRAME_S))
