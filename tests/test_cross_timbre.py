"""eval.cross_timbre: perception models fitted on one SoundFont's renders, scored on another's,
on real PercePiano jobs of a generated release."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from eval import cross_timbre
from pipelines.audio import notes, posterior_statistics, render
from pipelines.shards import layout, metadata, records

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(*args):
  return subprocess.run([sys.executable, "-m", "eval.cross_timbre", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def _job(release: pathlib.Path, out: pathlib.Path, *flags: str) -> pathlib.Path:
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.beam.percepiano_job", f"--percepiano_dir={release}",
       f"--output_dir={out}", "--test_fraction=0.34", "--num_folds=2", "--window_s=2.56",
       "--hop_s=2.56", "--direct_running_mode=in_memory", "--direct_num_workers=1", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return out


def _stored_notes(job: pathlib.Path, path: pathlib.Path, velocity_scale: float = 1.0,
                  empty: str | None = None) -> None:
  """A notes archive of the note targets stored with the job's audio (a perfect
  transcription, with the probability statistics of its rolls), velocities scaled by
  `velocity_scale`; performance `empty` found no note."""
  performances, durations, vectors = {}, {}, {}
  for f in metadata.read(job).shard_files("audio"):
    for data in layout.read_array_record(str(job / f.file)):
      header, arrays = records.decode(data)
      played = np.array(arrays["notes"], np.float32)
      played[:, 3] = np.clip(played[:, 3] * velocity_scale, 1, 127)
      if header["key"] == empty:
        played = played[:0]
      key = header["key"]
      performances[key] = notes.Notes(played, arrays["pedal"])
      durations[key] = header["num_samples"] / header["sample_rate"]
      rolls = notes.rolls(performances[key], int(durations[key] * 100) + 1)
      vectors[key] = posterior_statistics.compute(
          {k: np.asarray(v, np.float64) for k, v in rolls.items()}, 0.01)
  notes.save_archive(path, performances, durations, {"step": 0},
                     (posterior_statistics.names(), vectors))


@pytest.fixture(scope="module")
def other_timbre(job_with_audio, tmp_path_factory):
  """The same release rendered with another SoundFont file: TimGM6mb plus a trailing byte
  (another checksum and name, the same sound)."""
  root = tmp_path_factory.mktemp("cross-timbre")
  font = root / "OtherFont.sf2"
  font.write_bytes(render.default_soundfont().read_bytes() + b"\0")
  return _job(job_with_audio.parent / "corpus" / "percepiano", root / "other",
              f"--soundfont={font}", "--variants=0")


@pytest.mark.slow  # ~25 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_a_timbre_that_sounds_the_same_predicts_the_same(job_with_audio, other_timbre, tmp_path):
  """Known answer: identical audio under another SoundFont name gives identical predictions
  (agreement 1, equal scores); a transcription that changes (velocities scaled) moves the
  notes model's predictions and not the audio ridge's."""
  _stored_notes(job_with_audio, tmp_path / "a.npz")
  empty = metadata.read(job_with_audio).test_keys("piece")[0]
  _stored_notes(other_timbre, tmp_path / "b.npz", velocity_scale=0.5, empty=empty)
  out = tmp_path / "cross_timbre.json"
  proc = _run(f"--train_data={job_with_audio}", f"--test_data={other_timbre}",
              f"--transcribed_notes={tmp_path / 'a.npz'}",
              f"--test_transcribed_notes={tmp_path / 'b.npz'}", f"--cache_dir={tmp_path / 'c'}",
              f"--output={out}", "--resamples=200", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert list(result["timbres"]) == ["TimGM6mb", "OtherFont"]
  assert [t["step"] for t in result["transcriptions"]] == [0, 0]
  assert result["trained_on"]["timbre"] == "TimGM6mb"
  test_keys = metadata.read(job_with_audio).test_keys("piece")
  assert result["performances"] == len(test_keys)
  audio = result["models"]["ridge"]
  assert audio["OtherFont"]["agreement"] == pytest.approx(1.0, abs=1e-9)
  for k in ("timing", "dynamics", "expression", "mean", "r2"):
    assert audio["OtherFont"][k] == pytest.approx(audio["TimGM6mb"][k], abs=1e-9)
  low, high = audio["TimGM6mb"]["mean_ci"]
  assert low <= audio["TimGM6mb"]["mean"] <= high
  transcribed = result["models"]["notes"]
  assert "agreement" not in transcribed["TimGM6mb"]
  assert transcribed["OtherFont"]["agreement"] < 0.999
  # A transcription that found no note is scored with the training mean, and counted.
  assert transcribed["OtherFont"]["untranscribed"] == 1
  assert transcribed["TimGM6mb"]["untranscribed"] == 0
  assert "| notes | OtherFont |" in proc.stdout and "(trained on)" in proc.stdout


def test_mismatched_inputs_are_refused(job_with_audio, other_timbre, tmp_path):
  common = [f"--cache_dir={tmp_path / 'c'}", f"--output={tmp_path / 'o.json'}",
            "--resamples=200", "--workers=1"]
  same = _run(f"--train_data={job_with_audio}", f"--test_data={job_with_audio}",
              "--models=ridge", *common)
  assert same.returncode != 0 and "rendered with the same SoundFonts" in same.stderr
  no_notes = _run(f"--train_data={job_with_audio}", f"--test_data={other_timbre}", *common)
  assert no_notes.returncode != 0 and "one transcription per job" in no_notes.stderr
  assert "Traceback" not in same.stderr + no_notes.stderr
  assert not (tmp_path / "o.json").exists()
  # A job whose split puts a performance on another side is not the same test set (its
  # metadata edited: one test performance moved into a training fold).
  import shutil
  resplit = tmp_path / "resplit"
  shutil.copytree(other_timbre, resplit)
  raw = json.loads((resplit / layout.METADATA).read_text())
  moved = metadata.read(other_timbre).test_keys("piece")[0]
  raw["splits"]["piece"][moved] = "fold0"
  (resplit / layout.METADATA).write_text(json.dumps(raw))
  with pytest.raises(cross_timbre.CrossTimbreError, match="split differs"):
    cross_timbre.evaluate(job_with_audio, [resplit], tmp_path / "c", models=("ridge",),
                          resamples=200)


def test_ast_stats_across_timbres_and_a_timbre_it_cannot_score(job_with_audio, other_timbre,
                                                               tmp_path):
  """AST+stats (notes, probability statistics, clip embedding, audio statistics): the same
  transcription and embeddings under another SoundFont name predict exactly the same; a
  timbre where a test performance was transcribed to no note is reported as not scored."""
  from train import statistics_table
  keys = sorted(metadata.read(job_with_audio).split_table("piece"))
  rng = np.random.default_rng(0)
  vectors = tmp_path / "embeddings.npz"
  statistics_table.save_vectors(vectors, keys, rng.normal(size=(len(keys), 8)),
                                {"step": 0, "random_init": False})
  _stored_notes(job_with_audio, tmp_path / "a.npz")
  _stored_notes(other_timbre, tmp_path / "same.npz")
  empty = metadata.read(job_with_audio).test_keys("piece")[0]
  _stored_notes(other_timbre, tmp_path / "b.npz", empty=empty)
  # Posterior statistics are what eval.shard_transcription adds; stand-ins per performance.
  for archive in ("a.npz", "same.npz", "b.npz"):
    _with_posteriors(tmp_path / archive, keys)
  result = cross_timbre.evaluate(
      job_with_audio, [other_timbre], tmp_path / "c", models=("ast_stats",),
      transcribed=[tmp_path / "a.npz", tmp_path / "same.npz"], embeddings=[vectors, vectors],
      resamples=200)
  entry = result["models"]["ast_stats"]
  assert entry["OtherFont"]["agreement"] == pytest.approx(1.0, abs=1e-9)
  assert entry["OtherFont"]["mean"] == pytest.approx(entry["TimGM6mb"]["mean"], abs=1e-9)
  skipped = cross_timbre.evaluate(
      job_with_audio, [other_timbre], tmp_path / "c", models=("ast_stats",),
      transcribed=[tmp_path / "a.npz", tmp_path / "b.npz"], embeddings=[vectors, vectors],
      resamples=200)
  assert "no transcribed note" in skipped["models"]["ast_stats"]["OtherFont"]["skipped"]
  assert "not scored" in cross_timbre.table(skipped)
  with pytest.raises(cross_timbre.CrossTimbreError, match="one embedding table per job"):
    cross_timbre.evaluate(job_with_audio, [other_timbre], tmp_path / "c", models=("ast_stats",),
                          transcribed=[tmp_path / "a.npz", tmp_path / "b.npz"], resamples=200)


def _with_posteriors(archive, keys) -> None:
  """Rewrites a notes archive with probability statistics (fixed per key, so two archives
  of the same keys agree)."""
  from pipelines.audio import posterior_statistics
  performances, durations, about = notes.load_archive(archive)
  stat_names = posterior_statistics.names()
  values = {k: np.arange(len(stat_names), dtype=np.float64) * (1 + i % 5)
            for i, k in enumerate(sorted(performances))}
  notes.save_archive(archive, performances, durations, about, (stat_names, values))
