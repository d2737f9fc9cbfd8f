"""`python -m eval.notes_curve`: the notes model against the transcriber's training steps.

  python -m eval.notes_curve --data_dir=SHARDS --workdir=W --output_dir=REPORTS/notes_curve \
      --archives=5000=A.npz,7000=B.npz [--split=piece]

SHARDS is a PercePiano job's output with its clean audio and note targets; each archive is
`eval.shard_transcription`'s transcription of it by one checkpoint of a transcriber, named
by its pre-training step. For each step this scores

  transcription    the archive against the MIDI the shards store, over every performance
                   (`eval.transcription_scores`: onset F1, onset+offset F1, velocity r,
                   pedal frames F1; the mean over performances, an undefined r skipped)
  notes            the notes model (`train.ridge --features=notes`: the oracle's ridge
                   read from the transcription, `train.notes_from_midi`)
  notes_direct     the ridge fitted on the transcription's own statistics

beside `oracle-notes` (the ridge on the MIDI's statistics: what a perfect transcription
gives), every model's mean over the split's folds and its test set (Pearson: a group is the
mean of its dimensions', `mean` the mean of all 19). It writes `notes_curve.json` and
`notes_curve.png` (the models' fold mean and timing against steps, with the bar of issue 25:
0.9 x oracle's mean and timing 0.40; the transcription scores against steps) to
OUTPUT_DIR. The runs go to W (one `train.ridge` directory per step and model, finished
ones reused), the statistics caches beside them.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
from absl import app, flags, logging

from eval import machine, transcription_scores
from pipelines import entry_point
from pipelines.audio import notes as notes_lib
from pipelines.datasets import taxonomy
from pipelines.shards import layout, metadata, records
from train import crossval, metrics, predictions, ridge, ridge_fit, statistics_table

FLAGS = flags.FLAGS
SCORES = ("onset", "onset_offset", "velocity", "pedal_frames")
# Issue 25's bar for the notes model, against the oracle, over the piece folds.
ORACLE_FRACTION, TIMING_BAR = 0.9, 0.40


class CurveError(ValueError):
  pass


def parse_archives(value: list[str]) -> dict[int, pathlib.Path]:
  """`["STEP=PATH", ...]` -> {step: path}, steps distinct, files present."""
  out = {}
  for item in value:
    step, sep, path = item.partition("=")
    if not sep or not step.strip().isdigit() or not path:
      raise CurveError(f"--archives entry {item!r} is not STEP=PATH")
    if int(step) in out:
      raise CurveError(f"step {step} is given twice")
    if not pathlib.Path(path).is_file():
      raise CurveError(f"{path} does not exist")
    out[int(step)] = pathlib.Path(path)
  if not out:
    raise CurveError("--archives names no transcription")
  return dict(sorted(out.items()))


def _groups(pearson: np.ndarray) -> dict[str, float]:
  out = {g: float(np.mean(pearson[list(idx)])) for g, idx in taxonomy.GROUPS.items()}
  return {**out, "mean": float(np.mean(pearson))}


def scores_of_run(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """{"folds": mean over folds, "test": the test set}, per group, of a ridge run."""
  def pearson(p: predictions.Predictions) -> np.ndarray:
    return np.asarray(metrics.per_dimension_pearson(p.predictions, p.labels, p.mask))
  folds = [pearson(p) for p in crossval.fold_predictions(workdir)]
  return {"folds": _groups(np.mean(folds, axis=0)),
          "test": _groups(pearson(predictions.load_selected(workdir / "test")))}


def reference_notes(data_dir: pathlib.Path) -> dict[str, notes_lib.Notes]:
  """The MIDI notes the shards store with each performance's audio, in the trimmed audio's
  time base. Silence trimming can leave a note (one too soft to render) before the audio's
  start: a note that ends there is dropped, one that starts there starts at 0 (mir_eval
  refuses negative times, and no transcription of the audio can hear them)."""
  out = {}
  for f in metadata.read(data_dir).shard_files("audio"):
    for data in layout.read_array_record(str(data_dir / f.file)):
      header, arrays = records.decode(data)
      if header.get("num_notes", -1) >= 0:
        out[header["key"]] = from_audio_start(arrays["notes"], arrays["pedal"])
  return out


def from_audio_start(notes: np.ndarray, pedal: np.ndarray) -> notes_lib.Notes:
  notes = np.asarray(notes, np.float32).reshape(-1, 4)
  notes = notes[notes[:, 1] > 0]
  notes[:, 0] = np.maximum(notes[:, 0], 0)
  pedal = np.asarray(pedal, np.float32).reshape(-1, 2)
  return notes_lib.Notes(notes, np.maximum(pedal[pedal[:, 1] > 0], 0))


def transcription_quality(reference: dict[str, notes_lib.Notes],
                          archive: pathlib.Path) -> dict[str, float]:
  transcribed, _, _ = notes_lib.load_archive(archive)
  missing = sorted(set(reference) - set(transcribed))
  if missing:
    raise CurveError(f"{archive} has no transcription of {len(missing)} performances, e.g. "
                     f"{missing[:3]}")
  per = [transcription_scores.score(reference[k], transcribed[k], SCORES) for k in reference]
  out = {}
  for name in ("onset/f1", "onset_offset/f1", "velocity/r", "pedal_frames/f1"):
    values = [p[name] for p in per if p[name] is not None]
    out[name] = float(np.mean(values)) if values else None
  return out


def run(data_dir: str | pathlib.Path, workdir: str | pathlib.Path,
        archives: dict[int, pathlib.Path], split: str = "piece") -> dict:
  data_dir, workdir = pathlib.Path(data_dir), pathlib.Path(workdir)
  midi_cache = workdir / statistics_table.CACHE["midi_notes"]  # shared by every step's runs
  ridge.run(data_dir, workdir / "oracle_notes", split, test=True, statistics_cache=midi_cache,
            features="midi_notes")
  reference = reference_notes(data_dir)
  steps = []
  for step, archive in archives.items():
    entry = {"step": step, "archive": str(archive),
             "transcription": transcription_quality(reference, archive)}
    for model, fit in (("notes", "midi"), ("notes_direct", "transcription")):
      directory = workdir / f"{step}_{model}"
      ridge.run(data_dir, directory, split, test=True, features="notes", features_file=archive,
                notes_fit=fit, statistics_cache=workdir / f"transcribed_{step}.npz")
      entry[model] = scores_of_run(directory)
    logging.info("step %d: onset F1 %.3f, notes %.3f (timing %.3f) over the folds", step,
                 entry["transcription"]["onset/f1"], entry["notes"]["folds"]["mean"],
                 entry["notes"]["folds"]["timing"])
    steps.append(entry)
  oracle = scores_of_run(workdir / "oracle_notes")
  return {"split": split, "data_dir": str(data_dir), "machine": machine.describe(),
          "oracle_notes": oracle, "steps": steps,
          "bar": {"notes_folds_mean": ORACLE_FRACTION * oracle["folds"]["mean"],
                  "notes_test_mean": ORACLE_FRACTION * oracle["test"]["mean"],
                  "notes_folds_timing": TIMING_BAR}}


def plot(curve: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  steps = [s["step"] for s in curve["steps"]]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  oracle = curve["oracle_notes"]["folds"]
  for value, colour in ((("mean", "C0"), ("timing", "C1"))):
    for model, style in (("notes", "-o"), ("notes_direct", ":s")):
      left.plot(steps, [s[model]["folds"][value] for s in curve["steps"]], style, color=colour,
                label=f"{model} {value}")
    left.axhline(oracle[value], color=colour, lw=0.8, ls="--", label=f"oracle-notes {value}")
  left.axhline(curve["bar"]["notes_folds_mean"], color="C0", lw=2, alpha=0.3,
               label="bar: 0.9 x oracle mean")
  left.axhline(curve["bar"]["notes_folds_timing"], color="C1", lw=2, alpha=0.3,
               label="bar: timing 0.40")
  left.set(xlabel="transcriber pre-training steps", ylabel="Pearson, mean over the folds",
           title=f"{curve['split']} split")
  left.legend(fontsize=7)
  for name in ("onset/f1", "onset_offset/f1", "velocity/r", "pedal_frames/f1"):
    right.plot(steps, [s["transcription"][name] for s in curve["steps"]], "-o", label=name)
  right.set(xlabel="transcriber pre-training steps", ylim=(0, 1),
            title="the transcription against the MIDI")
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "A PercePiano job's output (with its audio shards).",
                      required=True)
  flags.DEFINE_string("workdir", None, "Where the ridge runs go.", required=True)
  flags.DEFINE_string("output_dir", None, "Where notes_curve.json and .png go.", required=True)
  flags.DEFINE_list("archives", [], "STEP=PATH of each transcription (eval.shard_transcription).")
  flags.DEFINE_enum("split", "piece", ["piece", "performer"], "The split whose folds score.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    curve = run(FLAGS.data_dir, FLAGS.workdir, parse_archives(FLAGS.archives), FLAGS.split)
  except (CurveError, notes_lib.NotesError, statistics_table.StatisticsError,
          ridge_fit.RidgeError) as e:
    raise app.UsageError(str(e)) from None
  out = pathlib.Path(FLAGS.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "notes_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    plot(curve, out / "notes_curve.png")
  print(f"{len(curve['steps'])} steps -> {out / 'notes_curve.json'}")
  return 0


def cli() -> None:
  """Console entry point."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
