"""The fault suite (issue 20, item 4): bad inputs fed to the project's real command lines.

Each case's expected outcome is written below, next to the file that provokes it
(BUILD_NOTES.md "Reliability" lists them as a table):

- an error: a non-zero exit, an `error: ` line naming the file and a text saying what is
  wrong with it, no Python traceback, and no output that looks complete;
- a dead letter: the Beam job routes the recording, whole, to dead_letters.jsonl with the
  reason, and the counts in its metadata.json add up: listed = written + filtered +
  dead-lettered;
- written / filtered / scored: the input is usable (clipped audio, a clip shorter than one
  window) and goes through like any other.

Many bad recordings share one Beam job: what is checked is each recording's outcome, and a
job per case would cost ~15 s each. The label and manifest cases, the trainer's and the
truncated shard fail before any work, so each is its own short command.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipelines.audio import render
from pipelines.datasets import percepiano
from pipelines.shards import layout, records

REPO = pathlib.Path(__file__).resolve().parent.parent
# Root reads any file whatever its permission bits: a chmod 000 file is unreadable only to
# other users, so its outcome is asserted only for them.
ROOT = os.geteuid() == 0
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
# 2.56 s windows keep the jobs quick; the checkpoint of `finetuned_run` reads the same.
SHORT_WINDOWS = ["--window_s=2.56", "--hop_s=2.56", "--nowrite_audio", "--target_shard_mb=1"]
SCORED = "scored"  # eval.predict scores the file (a Case's `predict`)


@dataclasses.dataclass(frozen=True)
class Case:
  """What the tools do with one bad input; None: not asserted (see `unreadable`)."""

  job: str | None  # the Beam job's outcome: "written", "filtered" or "dead_lettered"
  reason: str = ""  # text in the dead letter's reason
  predict: str | None = None  # eval.predict: SCORED, or text in the file's error line


# Audio files, read by the MAESTRO job (WAV mode) and by eval.predict.
AUDIO = {
    "good": Case("written", predict=SCORED),
    "empty": Case("dead_lettered", "EmptyAudioError", "file is empty (0 bytes)"),
    # A valid WAV header with no samples.
    "zero_length": Case("dead_lettered", "EmptyAudioError", "decodes to zero samples"),
    "text": Case("dead_lettered", "CorruptAudioError", "cannot decode"),
    # The decoder checks the container against the extension and refuses a FLAC named .wav
    # rather than guess: a misnamed file says the manifest is wrong about it.
    "flac": Case("dead_lettered", "CorruptAudioError", "extension says WAV but the content "
                 "is FLAC"),
    "8khz": Case("dead_lettered", "SampleRateError", "8000 Hz is below the minimum"),
    "nan": Case("dead_lettered", "NonFiniteAudioError", "samples are NaN or infinite"),
    # Clipping is not a fault of the file: loudness is a label and gain is never normalised.
    "clipped": Case("written", predict=SCORED),
    # 0.3 s, shorter than a window: one zero-padded window whose valid frames say how much
    # of it is audio.
    "short": Case("written", predict=SCORED),
    # Not in the list: the MAESTRO job's near-silent filter, the third term.
    "silence": Case("filtered", predict="silent: every window"),
    "directory": Case("dead_lettered", "IsADirectoryError", "is a directory"),
    # Unreadable as any user: a symlink to nothing.
    "broken_link": Case("dead_lettered", "FileNotFoundError", "file not found"),
    "unreadable": (Case(None) if ROOT else
                   Case("dead_lettered", "Permission denied", "Permission denied")),
}

# PercePiano performance MIDI, read by the PercePiano job (rendered) and eval.predict.
MIDI = {
    "no_notes": Case("dead_lettered", "render is silent", "render is silent"),
    # TimGM6mb renders notes this quiet as digital silence.
    "velocity_1": Case("dead_lettered", "render is silent", "render is silent"),
    "text": Case("dead_lettered", "no MThd header", "no MThd header"),
    "empty": Case("dead_lettered", "no MThd header", "no MThd header"),
    # The release's MIDI index lists files only: the key has no MIDI, and says so.
    "directory": Case("dead_lettered", "no audio or MIDI file", "Is a directory"),
    "broken_link": Case("dead_lettered", "no audio or MIDI file", "MIDI file not found"),
    "unreadable": (Case(None) if ROOT else
                   Case("dead_lettered", "Permission denied", "Permission denied")),
}


def _run(module: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


def _clean_error(proc: subprocess.CompletedProcess, where: str, *details: str) -> None:
  """A non-zero exit, no traceback, an error line naming `where`, and each of `details` in
  the message (one line, or that line and the indented list of bad entries under it)."""
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  start = next((i for i, line in enumerate(lines) if "error: " in line and where in line), None)
  assert start is not None, proc.stderr[-3000:]
  message = "\n".join([lines[start]] + [line for line in lines[start + 1:]
                                        if line.startswith("  ")])
  for detail in details:
    assert detail in message, message


def _partials(parent: pathlib.Path, name: str) -> list[pathlib.Path]:
  return [p for p in parent.iterdir() if p.name.startswith(f".{name}.partial-")]


def _dead_letters(root: pathlib.Path) -> dict[str, dict]:
  lines = (root / "dead_letters.jsonl").read_text().splitlines()
  out = {json.loads(line)["key"]: json.loads(line) for line in lines}
  assert len(out) == len(lines)  # one letter per recording
  return out


def _assert_accounted(metadata: dict, listed: int) -> None:
  c = metadata["counts"]
  assert c["listed"] == listed == c["written"] + c["filtered"] + c["dead_lettered"], c


def _windows_by_key(root: pathlib.Path) -> dict[str, list[dict]]:
  metadata = json.loads((root / layout.METADATA).read_text())
  out: dict[str, list[dict]] = {}
  for row in metadata["shards"]:
    if row["kind"] == "windows" and row["format"] == "array_record":
      for data in layout.read_array_record(str(root / row["file"])):
        header, arrays = records.decode(data)
        assert np.isfinite(arrays["features"]).all()
        out.setdefault(header["key"], []).append(header)
  return out


# ----------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def audio_tree(tmp_path_factory, make_midi, chords) -> tuple[pathlib.Path, dict]:
  """A MAESTRO-layout tree whose manifest lists one file per AUDIO case (under 2020/)."""
  root = tmp_path_factory.mktemp("audio-faults")
  (root / "2020").mkdir()
  files = {name: root / "2020" / f"{name}.wav" for name in AUDIO}
  music = render.render_midi(make_midi(chords()), name="chords").samples  # 4.25 s, 16 kHz
  soundfile.write(files["good"], music, 16_000)
  files["empty"].write_bytes(b"")
  soundfile.write(files["zero_length"], np.zeros((0, 2), np.float32), 44_100)
  assert files["zero_length"].stat().st_size > 0
  files["text"].write_text("this is a text file, not audio\n")
  soundfile.write(files["flac"], music, 16_000, format="FLAC")
  soundfile.write(files["8khz"], music[::2], 8_000)
  nan = music.copy()
  nan[1000:1010] = np.nan
  soundfile.write(files["nan"], nan, 16_000, subtype="FLOAT")
  soundfile.write(files["clipped"], np.clip(music * 100, -1, 1), 16_000)
  assert np.mean(np.abs(soundfile.read(files["clipped"])[0]) > 0.999) > 0.05
  soundfile.write(files["short"], music[:4_800], 16_000)  # 0.3 s
  soundfile.write(files["silence"], np.zeros(3 * 16_000, np.float32), 16_000)
  files["directory"].mkdir()
  files["broken_link"].symlink_to(root / "2020" / "gone.wav")
  shutil.copyfile(files["good"], files["unreadable"])
  files["unreadable"].chmod(0)
  # No MIDI beside them: recordings without note targets.
  _manifest(root, {f"2020/{name}.wav": f"2020/{name}.midi" for name in AUDIO})
  return root, files


def _manifest(root: pathlib.Path, rows: dict[str, str]) -> None:
  """A MAESTRO v3 CSV listing `rows` (audio file -> MIDI file), all in the train split."""
  with (root / "maestro-v3.0.0.csv").open("w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["canonical_composer", "canonical_title", "split", "year", "midi_filename",
                  "audio_filename", "duration"])
    for audio, midi in rows.items():
      out.writerow(["Fault", audio, "train", 2020, midi, audio, 4.0])


@pytest.fixture(scope="module")
def audio_job(audio_tree, tmp_path_factory) -> pathlib.Path:
  """The MAESTRO job over every audio case at once, allowed to dead-letter them all."""
  root, _ = audio_tree
  out = tmp_path_factory.mktemp("audio-job") / "shards"
  proc = _run("pipelines.beam.maestro_job", f"--maestro_dir={root}", f"--output_dir={out}",
              "--max_failure_fraction=1", *SHORT_WINDOWS, *IN_MEMORY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  return out


@pytest.mark.parametrize("name", list(AUDIO))
def test_maestro_job_audio_case(audio_job, name):
  case = AUDIO[name]
  metadata = json.loads((audio_job / layout.METADATA).read_text())
  _assert_accounted(metadata, len(AUDIO))
  key = f"2020/{name}"
  dead = _dead_letters(audio_job)
  windows = _windows_by_key(audio_job)
  assert len(dead) == metadata["counts"]["dead_lettered"]
  outcome = ("dead_lettered" if key in dead else "written" if key in windows
             else "filtered" if key in metadata["source_checksums"] else "missing")
  assert outcome != "missing"  # every listed recording has an outcome
  if case.job is None:
    return
  assert outcome == case.job, dead.get(key)
  if case.job == "dead_lettered":
    assert case.reason in dead[key]["reason"], dead[key]
    assert dead[key]["stage"] == "load"
  if name == "short":
    # 0.3 s holds 28 frames (25 ms long, one every 10 ms): one 256-frame window.
    assert [(w["window_count"], w["valid_frames"]) for w in windows[key]] == [(1, 28)]


def test_maestro_job_refuses_too_many_dead_letters_with_one_line(audio_tree, audio_job,
                                                                 tmp_path):
  """The same job at the default --max_failure_fraction (1%): a clear failure, no output."""
  root, _ = audio_tree
  out = tmp_path / "shards"
  proc = _run("pipelines.beam.maestro_job", f"--maestro_dir={root}", f"--output_dir={out}",
              *SHORT_WINDOWS, *IN_MEMORY)
  _clean_error(proc, "kept as partial output", "dead-lettered", "--max_failure_fraction")
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert not out.exists()  # nothing that looks complete
  partial, = _partials(tmp_path, "shards")
  # Kept for inspection under its hidden name, with the letters and counts that failed it:
  # the same as the run that was allowed to finish.
  assert _dead_letters(partial) == _dead_letters(audio_job)
  _assert_accounted(json.loads((partial / layout.METADATA).read_text()), len(AUDIO))


@pytest.mark.parametrize("row", ["../outside.wav", "/etc/outside.wav"])
def test_manifest_row_outside_its_root(audio_tree, tmp_path, row):
  good = audio_tree[1]["good"]
  tree = tmp_path / "maestro"
  (tree / "2020").mkdir(parents=True)
  shutil.copyfile(good, tree / "2020" / "good.wav")
  shutil.copyfile(good, tmp_path / "outside.wav")  # it exists: only the check refuses it
  _manifest(tree, {"2020/good.wav": "2020/good.midi", row: "2020/outside.midi"})
  out = tmp_path / "shards"
  proc = _run("pipelines.beam.maestro_job", f"--maestro_dir={tree}", f"--output_dir={out}",
              *SHORT_WINDOWS, *IN_MEMORY)
  _clean_error(proc, "maestro-v3.0.0.csv row 3 audio_filename", repr(row))
  assert not out.exists() and not _partials(tmp_path, "shards")


# ----------------------------------------------------------------------------- MIDI, labels


@pytest.fixture(scope="module")
def release(train_shards) -> pathlib.Path:
  """The session's generated PercePiano release (28 rated performances)."""
  return train_shards["percepiano"].parent / "corpus" / "percepiano"


@pytest.fixture(scope="module")
def midi_faults(release, tmp_path_factory, make_midi, chords) -> tuple[pathlib.Path, dict]:
  """A copy of the release whose first keys' MIDI files are the MIDI cases."""
  root = tmp_path_factory.mktemp("midi-faults") / "percepiano"
  shutil.copytree(release, root)
  midi_dir = root / percepiano.MIDI_DIR
  keys = sorted(p.stem for p in midi_dir.glob("*.mid"))
  files = {name: midi_dir / f"{key}.mid" for name, key in zip(MIDI, keys)}
  for name, path in files.items():
    if name == "unreadable":
      path.chmod(0)  # a valid MIDI file
      continue
    path.unlink()
    if name == "no_notes":
      path.write_bytes(make_midi([]))
    elif name == "velocity_1":
      path.write_bytes(make_midi(chords(velocity=1)))
    elif name == "text":
      path.write_text("this is a text file, not MIDI\n")
    elif name == "empty":
      path.write_bytes(b"")
    elif name == "directory":
      path.mkdir()
    elif name == "broken_link":
      path.symlink_to(midi_dir / "gone.mid")
  return root, files


@pytest.fixture(scope="module")
def midi_job(midi_faults, tmp_path_factory) -> dict:
  """The PercePiano job over the damaged release at the default --max_failure_fraction."""
  root, files = midi_faults
  parent = tmp_path_factory.mktemp("midi-job")
  out = parent / "shards"
  proc = _run("pipelines.beam.percepiano_job", f"--percepiano_dir={root}",
              f"--output_dir={out}", "--test_fraction=0.34", "--num_folds=2", *SHORT_WINDOWS,
              *IN_MEMORY)
  return dict(proc=proc, out=out, partials=_partials(parent, "shards"))


def test_percepiano_job_too_many_dead_letters_fail_with_one_line(midi_job):
  _clean_error(midi_job["proc"], "kept as partial output", "recordings dead-lettered",
               "> --max_failure_fraction 1.0%")
  assert not midi_job["out"].exists()  # nothing that looks complete
  assert len(midi_job["partials"]) == 1


@pytest.mark.parametrize("name", list(MIDI))
def test_percepiano_job_midi_case(midi_faults, midi_job, name):
  case, key = MIDI[name], midi_faults[1][name].stem
  partial, = midi_job["partials"]
  metadata = json.loads((partial / layout.METADATA).read_text())
  _assert_accounted(metadata, 28)
  dead = _dead_letters(partial)
  assert len(dead) == metadata["counts"]["dead_lettered"]
  assert key in dead or key in metadata["source_checksums"]  # an outcome either way
  if case.job is None:
    return
  assert case.job == "dead_lettered" and key in dead, key
  assert case.reason in dead[key]["reason"], dead[key]
  if name in ("directory", "broken_link"):
    assert key in metadata["splits"]["keys_without_midi"]


def _missing_dimension(labels: dict, key: str) -> None:
  del labels[key][3]


def _nan_label(labels: dict, key: str) -> None:
  labels[key][3] = math.nan  # json.dumps writes NaN, which json.loads reads back


LABELS = {
    # case: (edit of the mean-label JSON text, text of the error)
    "missing_dimension": (_missing_dimension, "expected a list of 19 ratings + performer id"),
    "nan_label": (_nan_label, "dimension 3 is nan, not finite"),
    "duplicated_key": ("duplicate", "listed twice"),
    "empty_file": ("empty", "not valid JSON"),
    "directory": ("directory", "is a directory, not a file"),
}


def test_percepiano_job_refuses_a_split_the_release_cannot_give(release, tmp_path):
  """The default 15 % test set of a 28-performance release: no piece is small enough."""
  out = tmp_path / "shards"
  proc = _run("pipelines.beam.percepiano_job", f"--percepiano_dir={release}",
              f"--output_dir={out}", *SHORT_WINDOWS, *IN_MEMORY)
  _clean_error(proc, f"cannot split {release}", "no group fits in a test set", "--test_fraction")
  assert not out.exists() and not _partials(tmp_path, "shards")


@pytest.mark.parametrize("name", list(LABELS))
def test_percepiano_job_label_file_case(release, tmp_path, name):
  edit, message = LABELS[name]
  root = tmp_path / "percepiano"
  shutil.copytree(release, root)
  path = root / percepiano.LABELS_FILE
  labels = json.loads(path.read_text())
  key = sorted(labels)[0]
  if edit == "duplicate":
    text = path.read_text().rstrip()
    path.write_text(f"{text[:-1]}, {json.dumps(key)}: {json.dumps(labels[key])}}}\n")
  elif edit == "empty":
    path.write_text("")
  elif edit == "directory":
    path.unlink()
    path.mkdir()
  else:
    edit(labels, key)
    path.write_text(json.dumps(labels))
  out = tmp_path / "shards"
  proc = _run("pipelines.beam.percepiano_job", f"--percepiano_dir={root}",
              f"--output_dir={out}", "--test_fraction=0.34", "--num_folds=2", *SHORT_WINDOWS,
              *IN_MEMORY)
  details = [message] + ([repr(key)] if edit not in ("empty", "directory") else [])
  _clean_error(proc, str(path), *details)
  assert not out.exists() and not _partials(tmp_path, "shards")


# ----------------------------------------------------------------------------- eval.predict


@pytest.fixture(scope="module")
def predict_run(finetuned_run, audio_tree, midi_faults, release, jax_env,
                tmp_path_factory) -> dict:
  """One eval.predict run over every audio and MIDI case and a good MIDI file."""
  files = {("audio", n): p for n, p in audio_tree[1].items()}
  files.update({("midi", n): p for n, p in midi_faults[1].items()})
  good_midi = sorted((release / percepiano.MIDI_DIR).glob("*.mid"))[-1]
  files[("midi", "good")] = good_midi
  out = tmp_path_factory.mktemp("predict") / "p.json"
  proc = _run("eval.predict", f"--checkpoint={finetuned_run}", "--step=latest",
              f"--output_json={out}", *files.values(), env=jax_env)
  return dict(proc=proc, files=files, json=out)


def _predict_cases():
  return ([("audio", n) for n in AUDIO] + [("midi", n) for n in MIDI] + [("midi", "good")])


@pytest.mark.parametrize("case_id", _predict_cases(), ids="-".join)
def test_predict_case(predict_run, case_id):
  proc = predict_run["proc"]
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  kind, name = case_id
  expected = SCORED if case_id == ("midi", "good") else (AUDIO if kind == "audio"
                                                         else MIDI)[name].predict
  path = str(predict_run["files"][case_id])
  doc = json.loads(predict_run["json"].read_text())
  scored = {f["path"]: f for f in doc["files"]}
  errors = [line for line in proc.stderr.splitlines()
            if line.startswith("error: ") and path in line]
  assert (path in scored) != bool(errors)  # scored, or one error line: never both or neither
  if expected is None:
    return
  if expected == SCORED:
    result = scored[path]
    assert all(math.isfinite(v) for v in result["ratings"].values())
    if name == "short":
      assert result["windows"] == 1
    return
  assert len(errors) == 1 and expected in errors[0], errors
  assert {e["path"] for e in doc["errors"]} >= {path}


# ----------------------------------------------------------------------------- shards, trainer


@pytest.fixture(scope="module")
def truncated_shards(train_shards, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """A copy of the session's PercePiano shards with its biggest training shard cut in half
  (mid-record), as a full disk or an interrupted copy leaves it; (shards, the cut file)."""
  root = tmp_path_factory.mktemp("truncated") / "percepiano"
  shutil.copytree(train_shards["percepiano"], root)
  metadata = json.loads((root / layout.METADATA).read_text())
  row = max((r for r in metadata["shards"] if r["kind"] == "windows" and r["split"] == "train"
             and r["format"] == "array_record"), key=lambda r: r["bytes"])
  path = root / row["file"]
  path.write_bytes(path.read_bytes()[:row["bytes"] // 2])
  return root, path


def test_truncated_shard_through_an_eval_tool(truncated_shards, tmp_path):
  root, cut = truncated_shards
  output = tmp_path / "notes.npz"
  proc = _run("eval.shard_transcription", f"--checkpoint={REPO / 'release' / 'transcriber'}",
              f"--data_dir={root}", f"--output={output}")
  _clean_error(proc, str(cut), "cannot read the ArrayRecord shard")
  assert not output.exists()


@pytest.fixture(scope="module")
def empty_metadata(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("empty-metadata")
  (root / layout.METADATA).write_text("")
  return root


TRAINER = {
    # case: (extra flags, where the error points, text of the error)
    "wrong_type_override": (["--config.num_steps=abc"], "--config.num_steps=abc",
                            "invalid literal for int()"),
    "truncated_shard": ([], "{cut}", "truncated or replaced after the job wrote it"),
    "empty_metadata": ([], "{empty}/metadata.json", "is not valid JSON"),
}


@pytest.mark.parametrize("name", list(TRAINER))
def test_trainer_case(name, truncated_shards, empty_metadata, small_finetune, jax_env,
                      tmp_path):
  flags, where, message = TRAINER[name]
  data = empty_metadata if name == "empty_metadata" else truncated_shards[0]
  workdir = tmp_path / "run"
  proc = _run("train.main", *small_finetune, f"--workdir={workdir}",
              f"--config.data_dir={data}", "--config.num_steps=2", *flags, env=jax_env)
  _clean_error(proc, where.format(cut=truncated_shards[1], empty=empty_metadata), message)
  # No checkpoint: nothing a resume or eval.predict could mistake for a trained run.
  assert not list(workdir.glob("checkpoints/[0-9]*"))
  if name == "wrong_type_override":
    assert not workdir.exists()  # refused while parsing flags, before any work


# ----------------------------------------------------------------------------- a long recording

# Peak resident memory of a command (and every process it waited for), from a wrapper: the
# test process's own children would mix in the session's earlier subprocesses.
_PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)  # KiB -> MiB
sys.exit(code)
"""
LONG_MINUTES = 90
# Bounds with room over what was measured (BUILD_NOTES, Reliability): a copy too many of the
# recording's samples or windows would break them, a leak per window too.
PEAK_MIB = {"eval.predict": 2_000, "pipelines.beam.maestro_job": 1_500}


def _peak_mib(module: str, *args, env=None) -> tuple[subprocess.CompletedProcess, int]:
  proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", module,
                         *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1800, check=False)
  return proc, int(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else -1


@pytest.mark.slow
def test_a_90_minute_recording_in_bounded_memory(finetuned_run, make_midi, chords, jax_env,
                                                 tmp_path):
  """A 90-minute WAV (16 kHz, 165 MiB) is scored by eval.predict and written by the MAESTRO
  job, each within its peak-memory bound."""
  music = render.render_midi(make_midi(chords()), name="chords").samples
  repeats = int(math.ceil(LONG_MINUTES * 60 * 16_000 / music.size))
  long = np.tile(music, repeats)[:LONG_MINUTES * 60 * 16_000]
  root = tmp_path / "long"
  (root / "2020").mkdir(parents=True)
  soundfile.write(root / "2020" / "long.wav", long, 16_000, subtype="PCM_16")
  del long
  _manifest(root, {"2020/long.wav": "2020/long.midi"})
  out = tmp_path / "p.json"
  proc, peak = _peak_mib("eval.predict", f"--checkpoint={finetuned_run}", "--step=latest",
                         f"--output_json={out}", root / "2020" / "long.wav", env=jax_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  scored = json.loads(out.read_text())["files"][0]
  assert scored["duration_s"] == pytest.approx(LONG_MINUTES * 60, abs=1)
  assert scored["windows"] >= LONG_MINUTES * 60 / 2.56 - 1
  print(f"eval.predict: peak {peak} MiB")
  assert 0 < peak < PEAK_MIB["eval.predict"], peak
  shards = tmp_path / "shards"
  proc, peak = _peak_mib("pipelines.beam.maestro_job", f"--maestro_dir={root}",
                         f"--output_dir={shards}", *SHORT_WINDOWS, *IN_MEMORY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metadata = json.loads((shards / layout.METADATA).read_text())
  _assert_accounted(metadata, 1)
  assert metadata["counts"]["written"] == 1
  assert metadata["counts"]["windows_written"] >= LONG_MINUTES * 60 / 2.56 - 1
  print(f"maestro_job: peak {peak} MiB")
  assert 0 < peak < PEAK_MIB["pipelines.beam.maestro_job"], peak
