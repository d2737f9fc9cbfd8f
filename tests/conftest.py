"""Shared fixtures: where the real datasets are, and small generated MIDI."""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Callable

import filelock
import pretty_midi
import pytest

from pipelines.audio import render

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


XLA_LEVEL_FLAG = "--xla_backend_optimization_level"


def pytest_addoption(parser) -> None:
  parser.addoption(
      "--xla_backend_opt", default="0",
      help="XLA's CPU backend optimisation level for the tests and the subprocesses they start "
      "('default': XLA's own). The tests' models are tiny, so compiling them dominates; level 0 "
      "halves that. make test-slow keeps XLA's default, so the optimised code is tested too.")


def xla_test_flags(config) -> str:
  level = config.getoption("xla_backend_opt")
  return "" if level == "default" else f"{XLA_LEVEL_FLAG}={level}"


def pytest_configure(config) -> None:
  # Before any test initialises a JAX backend (XLA reads its flags then), in every xdist worker.
  flags = xla_test_flags(config)
  if flags:
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(XLA_LEVEL_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join([*kept, flags])
  if not hasattr(config, "workerinput"):
    # In the controller, before any xdist worker starts: workers that compile librosa's
    # cached numba kernels at once can corrupt the cache and segfault
    # (pipelines.audio.clip_statistics.warm_numba_cache).
    from pipelines.audio import clip_statistics
    clip_statistics.warm_numba_cache()


def _real_dataset(env: str, default: pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(os.environ.get(env, default))
  if not path.is_dir():
    # CI always has the real releases beside the clone: a missing copy there is
    # a broken setup, not a reason to skip.
    if os.environ.get("CI"):
      pytest.fail(f"real dataset missing in CI: {path} (set ${env})")
    pytest.skip(f"real dataset not found at {path} (set ${env})")
  return path


def built_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """A directory `build` fills once per test session, whatever the number of xdist workers.

  A session fixture is per worker under pytest-xdist, so each worker would build its own copy
  of the shared runs, both at half speed on 2 cores. The first worker to ask builds under a
  file lock in the run's common temporary directory; the others wait and reuse it. A build
  that fails leaves no completion mark, so the next worker tries again (and fails the same).
  """
  if "PYTEST_XDIST_WORKER" not in os.environ:
    path = tmp_path_factory.mktemp(name)
    build(path)
    return path
  root = tmp_path_factory.getbasetemp().parent
  path, done = root / name, root / f"{name}.built"
  with filelock.FileLock(str(root / f"{name}.lock")):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(path)
      done.touch()
  return path


@pytest.fixture(scope="session")
def percepiano_dir() -> pathlib.Path:
  return _real_dataset("PERCEPIANO_DIR", DATA / "percepiano")


@pytest.fixture(scope="session")
def asap_dir() -> pathlib.Path:
  return _real_dataset("ASAP_DIR", DATA / "asap")


def midi_bytes(notes, *, end_of_track_s: float | None = None) -> bytes:
  """A piano MIDI file from `(pitch, velocity, start_s, end_s)` tuples.

  `end_of_track_s` places the end-of-track marker late, like the real
  PercePiano D960 files whose markers trail the last note by up to 20 s.
  """
  pm = pretty_midi.PrettyMIDI(initial_tempo=120)
  piano = pretty_midi.Instrument(program=0)
  piano.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for p, v, s, e in notes]
  pm.instruments.append(piano)
  if end_of_track_s is not None:
    # A silent controller event late in the file makes the writer put the
    # end-of-track marker there, with no audible note.
    piano.control_changes.append(pretty_midi.ControlChange(number=7, value=100,
                                                           time=end_of_track_s))
  return render.midi_to_bytes(pm)


def chord_passage(velocity: int = 80, seconds: float = 4.0):
  """A few seconds of broken chords: enough for several fbank windows."""
  notes, t, step = [], 0.0, 0.25
  pitches = [60, 64, 67, 72, 65, 69, 72, 77, 67, 71, 74, 79]
  i = 0
  while t + step <= seconds:
    notes.append((pitches[i % len(pitches)], velocity, t, t + 2 * step))
    t += step
    i += 1
  return notes


@pytest.fixture(scope="session")
def make_midi():
  return midi_bytes


@pytest.fixture(scope="session")
def chords():
  return chord_passage


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> dict[str, pathlib.Path]:
  """MAESTRO- and PercePiano-layout shards of a tiny generated corpus, 2.56 s windows.

  Short windows (256 frames) keep trainer tests fast; everything else is the
  real Beam jobs' output.
  """
  import subprocess
  import sys

  from pipelines.corpus import make_corpus

  common = ["--window_s=2.56", "--hop_s=1.28", "--target_shard_mb=1", "--nowrite_audio",
            "--direct_running_mode=in_memory", "--direct_num_workers=1"]

  def build(root: pathlib.Path) -> None:
    corpus = root / "corpus"
    make_corpus.make_corpus(corpus, "tiny", seed=3)
    jobs = {
        "maestro": ["-m", "pipelines.beam.maestro_job",
                    f"--maestro_dir={corpus / 'maestro-v3.0.0'}"],
        "percepiano": ["-m", "pipelines.beam.percepiano_job",
                       f"--percepiano_dir={corpus / 'percepiano'}",
                       "--test_fraction=0.34", "--num_folds=2"],
    }
    for name, args in jobs.items():
      proc = subprocess.run([sys.executable, *args, f"--output_dir={root / name}", *common],
                            cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
      assert proc.returncode == 0, proc.stderr[-2000:]

  root = built_once(tmp_path_factory, "train-shards", build)
  return {"maestro": root / "maestro", "percepiano": root / "percepiano"}


# The encoder of every trainer-driven test: 2 layers of width 64 on 2.56 s windows.
SMALL_FINETUNE = ["--config=train/configs/finetune.py:tiny", "--config.model.encoder.num_frames=256",
                  "--config.model.encoder.width=64", "--config.model.encoder.depth=2",
                  "--config.model.encoder.heads=2", "--config.model.encoder.mlp_dim=128",
                  "--config.batch_size=8", "--config.microbatch_size=8",
                  "--config.eval_batch_size=8", "--config.log_every_steps=1"]


@pytest.fixture(scope="session")
def small_finetune() -> list[str]:
  return list(SMALL_FINETUNE)


@pytest.fixture(scope="session")
def jax_env(tmp_path_factory, pytestconfig) -> dict[str, str]:
  """Subprocess environment sharing one persistent compilation cache (compiles once), with
  the tests' XLA flags only (none of a developer's own, e.g. a forced device count)."""
  cache = tmp_path_factory.mktemp("xla-cache-session")
  out = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  out.pop("XLA_FLAGS", None)
  if flags := xla_test_flags(pytestconfig):
    out["XLA_FLAGS"] = flags
  return out


@pytest.fixture(scope="session")
def finetuned_run(train_shards, jax_env, tmp_path_factory) -> pathlib.Path:
  """A finished 4-step tiny fine-tuning run (validation fold 0, evaluated at its last step)."""
  import subprocess
  import sys

  def build(workdir: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train.main", *SMALL_FINETUNE, f"--workdir={workdir}",
         f"--config.data_dir={train_shards['percepiano']}", "--config.num_steps=4"],
        cwd=REPO, env=jax_env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]

  return built_once(tmp_path_factory, "finetuned", build)


@pytest.fixture(scope="session")
def crossval_dir(train_shards, jax_env, tmp_path_factory) -> pathlib.Path:
  """A finished piece-split cross-validation (2 folds + the test set) of a tiny model."""
  import subprocess
  import sys

  def build(workdir: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train.crossval", *SMALL_FINETUNE, f"--workdir={workdir}",
         f"--config.data_dir={train_shards['percepiano']}", "--config.num_steps=6",
         "--config.eval_every_steps=3", "--split=piece", "--test"],
        cwd=REPO, env=jax_env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The CLI's headline is the mean over folds, with the pooled figure named as such.
    assert "out-of-fold Pearson, mean over folds: timing" in proc.stdout, proc.stdout
    assert "all folds pooled: mean" in proc.stdout, proc.stdout

  return built_once(tmp_path_factory, "crossval", build)


def _percepiano_job(root: pathlib.Path, seed: int, *flags: str) -> pathlib.Path:
  """The real PercePiano Beam job on a generated tiny release (made under `root` with
  `seed`), 2 folds and a third held out; returns its output directory."""
  import subprocess
  import sys

  from pipelines.corpus import make_corpus

  make_corpus.make_corpus(root / "corpus", "tiny", seed=seed, parts=("percepiano",))
  out = root / "shards"
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.beam.percepiano_job",
       f"--percepiano_dir={root / 'corpus' / 'percepiano'}", f"--output_dir={out}",
       "--test_fraction=0.34", "--num_folds=2", "--direct_running_mode=in_memory",
       "--direct_num_workers=1", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return out


@pytest.fixture(scope="session")
def job_with_audio(tmp_path_factory) -> pathlib.Path:
  """A PercePiano job's output of the tiny generated corpus with its clean audio (what the
  clip statistics are computed from), 2.56 s windows."""
  root = built_once(tmp_path_factory, "job-with-audio",
                    lambda root: _percepiano_job(root, 3, "--window_s=2.56", "--hop_s=2.56"))
  return root / "shards"


@pytest.fixture(scope="session")
def percepiano_job():
  """`percepiano_job(root, seed, *job_flags)`: the real job on a generated release."""
  return _percepiano_job
