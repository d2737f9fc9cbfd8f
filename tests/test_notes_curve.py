"""eval.notes_curve on a real PercePiano job's output: a perfect transcription scores F1 1
and gives the oracle's own figures when fitted on itself; a degraded one scores below."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from eval import notes_curve
from pipelines.audio import notes as notes_lib
from pipelines.audio import posterior_statistics
from pipelines.shards import layout, metadata, records

REPO = pathlib.Path(__file__).resolve().parent.parent


def archive_of(data_dir: pathlib.Path, path: pathlib.Path, keep_every: int = 1) -> pathlib.Path:
  """The shards' own MIDI notes as a notes archive (every `keep_every`-th note kept), with
  the probability statistics of their rolls, as eval.shard_transcription writes one."""
  performances, durations, vectors = {}, {}, {}
  for f in metadata.read(data_dir).shard_files("audio"):
    for data in layout.read_array_record(str(data_dir / f.file)):
      header, arrays = records.decode(data)
      key = header["key"]
      notes = notes_lib.Notes(arrays["notes"][::keep_every], arrays["pedal"])
      performances[key] = notes
      durations[key] = header["num_samples"] / header["sample_rate"]
      rolls = notes_lib.rolls(notes, int(durations[key] * 100) + 1)
      vectors[key] = posterior_statistics.compute(
          {k: np.asarray(v, np.float64) for k, v in rolls.items()}, 0.01)
  notes_lib.save_archive(path, performances, durations, {"made_by": "test"},
                         (posterior_statistics.names(), vectors))
  return path


def test_a_perfect_and_a_degraded_transcription_along_the_curve(job_with_audio, tmp_path):
  perfect = archive_of(job_with_audio, tmp_path / "perfect.npz")
  degraded = archive_of(job_with_audio, tmp_path / "degraded.npz", keep_every=2)
  curve = notes_curve.run(job_with_audio, tmp_path / "w", {100: degraded, 200: perfect})
  by_step = {s["step"]: s for s in curve["steps"]}
  assert by_step[200]["transcription"]["onset/f1"] == pytest.approx(1.0)
  assert by_step[200]["transcription"]["velocity/r"] == pytest.approx(1.0)
  assert by_step[100]["transcription"]["onset/f1"] < 0.8  # half the notes: recall 0.5
  # Fitted on a perfect transcription's statistics, the ridge is the oracle's.
  assert by_step[200]["notes_direct"] == curve["oracle_notes"]
  assert by_step[100]["notes_direct"] != curve["oracle_notes"]
  assert curve["bar"]["notes_folds_mean"] == pytest.approx(
      0.9 * curve["oracle_notes"]["folds"]["mean"])
  for entry in curve["steps"]:
    for model in ("notes", "notes_direct"):
      assert set(entry[model]) == {"folds", "test"}
      assert all(np.isfinite(v) for v in entry[model]["folds"].values())


def test_the_command_writes_the_curve_and_refuses_bad_archives(job_with_audio, tmp_path):
  perfect = archive_of(job_with_audio, tmp_path / "perfect.npz")
  out = tmp_path / "report"

  def run(*archives):
    return subprocess.run(
        [sys.executable, "-m", "eval.notes_curve", f"--data_dir={job_with_audio}",
         f"--workdir={tmp_path / 'w'}", f"--output_dir={out}",
         f"--archives={','.join(archives)}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)

  proc = run(f"7={perfect}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((out / "notes_curve.json").read_text())["steps"][0]["step"] == 7
  assert (out / "notes_curve.png").stat().st_size > 0
  for bad, message in (((f"x={perfect}",), "is not STEP=PATH"),
                       ((f"7={perfect}", f"7={perfect}"), "step 7 is given twice"),
                       ((f"7={tmp_path / 'none.npz'}",), "does not exist")):
    proc = run(*bad)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
  # An archive of other performances names what it lacks.
  notes_lib.save_archive(tmp_path / "other.npz", {"x": notes_lib.Notes(np.zeros((0, 4)),
                                                                       np.zeros((0, 2)))},
                         {"x": 1.0}, {})
  proc = run(f"7={tmp_path / 'other.npz'}")
  assert proc.returncode != 0 and "has no transcription of" in proc.stderr


def test_notes_before_the_trimmed_start_are_dropped_or_start_at_zero():
  notes = notes_curve.from_audio_start(
      np.array([[-2.0, -1.0, 60, 5], [-0.5, 0.5, 62, 40], [1.0, 2.0, 64, 50]]),
      np.array([[-3.0, -2.0], [-1.0, 1.5]]))
  np.testing.assert_array_equal(notes.notes, [[0.0, 0.5, 62, 40], [1.0, 2.0, 64, 50]])
  np.testing.assert_array_equal(notes.pedal, [[0.0, 1.5]])
