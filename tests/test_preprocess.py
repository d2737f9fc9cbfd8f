"""The Beam jobs as users run them: real subprocesses, Beam's local runner, real shards."""

import csv
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pretty_midi
import pytest
import soundfile

from pipelines.audio import render
from pipelines.beam import preprocess
from pipelines.corpus import make_corpus
from pipelines.datasets import percepiano
from pipelines.shards import layout, records

REPO = pathlib.Path(__file__).resolve().parent.parent
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
TINY_SPLIT = ["--test_fraction=0.34", "--num_folds=2", "--target_shard_mb=1"]


def run_job(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"pipelines.beam.{module}_job", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("corpus") / "tiny"
  make_corpus.make_corpus(out, "tiny", seed=3)
  return out


@pytest.fixture(scope="module")
def percepiano_shards(corpus, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("shards") / "percepiano"
  ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
             "--format=array_record", "--format=tfrecord", "--direct_num_workers=2",
             *TINY_SPLIT))
  return out


def windows_in(root: pathlib.Path, fmt: str = "array_record", kind: str = "windows"):
  metadata = json.loads((root / layout.METADATA).read_text())
  out = []
  for row in metadata["shards"]:
    if row["kind"] == kind and row["format"] == fmt:
      out += [records.decode(r) for r in layout.read_array_record(str(root / row["file"]))]
  return out


def test_percepiano_job_writes_every_performance(corpus, percepiano_shards):
  metadata = json.loads((percepiano_shards / layout.METADATA).read_text())
  release = percepiano.read_release(corpus / "percepiano")
  counts = metadata["counts"]
  assert counts["listed"] == counts["written"] == len(release.performances) == 28
  assert counts["dead_lettered"] == counts["filtered"] == 0
  assert (percepiano_shards / preprocess.DEAD_LETTERS).read_text() == ""
  windows = windows_in(percepiano_shards)
  assert len(windows) == counts["windows_written"]
  by_key = {}
  for header, arrays in windows:
    by_key.setdefault(header["key"], []).append((header, arrays))
  assert set(by_key) == {p.key.text for p in release.performances}
  piece = metadata["splits"]["piece"]
  for p in release.performances:
    ws = sorted(by_key[p.key.text], key=lambda w: w[0]["window_index"])
    assert [w[0]["window_index"] for w in ws] == list(range(ws[0][0]["window_count"]))
    header, arrays = ws[-1]
    assert arrays["features"].shape == (128, 1024)
    assert 0 < header["valid_frames"] <= 1024
    np.testing.assert_array_equal(arrays["features"][:, header["valid_frames"]:], 0)
    np.testing.assert_allclose(arrays["labels"], p.labels, atol=1e-6)
    assert arrays["label_mask"].all()
    assert header["passage"] == p.key.passage and header["performer_id"] == p.performer_id
    assert header["split"] == ("test" if piece[p.key.text] == "test" else "train")
  # Shard names are TFDS-style and the files are all listed with checksums.
  for row in metadata["shards"]:
    assert row["file"].startswith(f"{row['name']}-{row['split']}.{row['format']}-")
    assert (percepiano_shards / row["file"]).stat().st_size == row["bytes"]
  assert metadata["schema"]["schema_version"] == records.VERSION
  assert metadata["soundfont_sha256"] == render.soundfont_sha256()
  assert metadata["source_checksums"] == {
      p.key.text: hashlib.sha256(p.midi_path.read_bytes()).hexdigest()
      for p in release.performances}


def test_normalisation_statistics_come_from_training_windows(percepiano_shards):
  metadata = json.loads((percepiano_shards / layout.METADATA).read_text())
  values = [a["features"][:, :h["valid_frames"]].astype(np.float64).ravel()
            for h, a in windows_in(percepiano_shards) if h["split"] == "train"]
  values = np.concatenate(values)
  stats = metadata["normalization"]
  assert stats["count"] == values.size and stats["split"] == "train"
  assert stats["mean"] == pytest.approx(values.mean(), abs=2e-3)  # shards hold float16
  assert stats["std"] == pytest.approx(values.std(), abs=2e-3)


def test_tfrecord_export_holds_the_same_records(percepiano_shards):
  from apache_beam.testing.util import assert_that, equal_to
  metadata = json.loads((percepiano_shards / layout.METADATA).read_text())
  tfrecords = [str(percepiano_shards / r["file"]) for r in metadata["shards"]
               if r["format"] == "tfrecord"]
  expected = [r for row in metadata["shards"]
              if row["format"] == "array_record" and row["kind"] == "windows"
              for r in layout.read_array_record(str(percepiano_shards / row["file"]))]
  assert len(tfrecords) > 1 and expected
  # Beam's own TFRecord reader checks the framing and both CRCs of every record.
  with beam.Pipeline(runner="FnApiRunner") as p:
    read = p | beam.Create(tfrecords) | beam.io.ReadAllFromTFRecord()
    assert_that(read, equal_to(expected))


def test_same_flags_give_byte_identical_shards_whatever_the_parallelism(corpus,
                                                                        percepiano_shards,
                                                                        tmp_path):
  out = tmp_path / "again"
  ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
             "--format=array_record", "--format=tfrecord", *IN_MEMORY, *TINY_SPLIT))
  first = json.loads((percepiano_shards / layout.METADATA).read_text())
  second = json.loads((out / layout.METADATA).read_text())
  assert first["shards"] == second["shards"]  # names, record counts and sha256 of every file
  assert first["normalization"] == second["normalization"]
  for row in first["shards"]:
    assert (out / row["file"]).read_bytes() == (percepiano_shards / row["file"]).read_bytes()


def _damaged_release(corpus: pathlib.Path, root: pathlib.Path) -> list[str]:
  shutil.copytree(corpus / "percepiano", root)
  midi_dir = root / percepiano.MIDI_DIR
  keys = sorted(p.stem for p in midi_dir.glob("*.mid"))
  (midi_dir / f"{keys[0]}.mid").write_bytes(b"MThd" + bytes(64))  # corrupt header
  (midi_dir / f"{keys[1]}.mid").write_bytes((midi_dir / f"{keys[1]}.mid").read_bytes()[:40])
  (midi_dir / f"{keys[2]}.mid").write_bytes(render.midi_to_bytes(__import__(
      "pretty_midi").PrettyMIDI()))  # no notes: a silent render
  (midi_dir / f"{keys[3]}.mid").unlink()  # listed in the labels, no MIDI
  return keys[:4]


def test_bad_recordings_are_dead_lettered_and_accounted(corpus, tmp_path):
  root = tmp_path / "damaged"
  bad = _damaged_release(corpus, root)
  out = tmp_path / "out"
  proc = ok(run_job("percepiano", f"--percepiano_dir={root}", f"--output_dir={out}",
                    "--max_failure_fraction=0.2", *IN_MEMORY, *TINY_SPLIT))
  assert "listed 28 = written 24 + filtered 0 + dead-lettered 4" in proc.stdout
  dead = [json.loads(line) for line in (out / preprocess.DEAD_LETTERS).read_text().splitlines()]
  assert sorted(d["key"] for d in dead) == sorted(bad)
  reasons = {d["key"]: d for d in dead}
  assert reasons[bad[3]]["reason"].startswith("FileNotFoundError")
  assert "RenderError" in reasons[bad[0]]["reason"] and reasons[bad[0]]["stage"] == "load"
  assert "silent" in reasons[bad[2]]["reason"]
  metadata = json.loads((out / layout.METADATA).read_text())
  assert {k: metadata["counts"][k] for k in ("listed", "written", "dead_lettered")} == {
      "listed": 28, "written": 24, "dead_lettered": 4}
  assert bad[3] in metadata["splits"]["keys_without_midi"]
  assert not {h["key"] for h, _ in windows_in(out)} & set(bad)


def test_too_many_failures_fail_the_job_and_leave_only_partial_output(corpus, tmp_path):
  root = tmp_path / "damaged"
  _damaged_release(corpus, root)
  out = tmp_path / "out"
  proc = run_job("percepiano", f"--percepiano_dir={root}", f"--output_dir={out}", *IN_MEMORY,
                 *TINY_SPLIT)
  assert proc.returncode != 0
  assert "dead-lettered" in proc.stderr and "max_failure_fraction" in proc.stderr
  assert not out.exists()  # nothing that looks complete
  partial = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
  assert len(partial) == 1 and (partial[0] / preprocess.DEAD_LETTERS).is_file()


def test_audio_dir_with_bad_files(corpus, tmp_path):
  release = percepiano.read_release(corpus / "percepiano")
  audio_dir = tmp_path / "audio"
  audio_dir.mkdir()
  keys = [p.key.text for p in release.performances]
  for p in release.performances[4:]:
    rendered = render.render_midi(p.midi_path)
    soundfile.write(audio_dir / f"{p.key.text}.wav", rendered.samples, 16_000)
  (audio_dir / f"{keys[0]}.wav").write_bytes(b"RIFF" + bytes(100))  # corrupt
  soundfile.write(audio_dir / f"{keys[1]}.wav", np.full(16_000, np.nan, np.float32), 16_000,
                  subtype="FLOAT")
  soundfile.write(audio_dir / f"{keys[2]}.wav", np.zeros(8_000, np.float32), 8_000)
  # keys[3] has no file at all.
  out = tmp_path / "out"
  proc = ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                    f"--audio_dir={audio_dir}", f"--output_dir={out}",
                    "--max_failure_fraction=0.2", *IN_MEMORY, *TINY_SPLIT))
  assert "written 24 + filtered 0 + dead-lettered 4" in proc.stdout
  dead = {json.loads(line)["key"]: json.loads(line)
          for line in (out / preprocess.DEAD_LETTERS).read_text().splitlines()}
  assert "CorruptAudioError" in dead[keys[0]]["reason"]
  assert "NonFiniteAudioError" in dead[keys[1]]["reason"]
  assert "SampleRateError" in dead[keys[2]]["reason"]
  assert "FileNotFoundError" in dead[keys[3]]["reason"] or "No such file" in dead[keys[3]][
      "reason"]
  assert json.loads((out / layout.METADATA).read_text())["soundfont_sha256"] is None


def test_refuses_existing_output_unless_overwrite(corpus, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "mine.txt").write_text("keep")
  proc = run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                 f"--output_dir={out}", *IN_MEMORY, *TINY_SPLIT)
  assert proc.returncode != 0 and "--overwrite" in proc.stderr
  assert (out / "mine.txt").is_file()
  ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
             "--overwrite", *IN_MEMORY, *TINY_SPLIT))
  assert not (out / "mine.txt").exists() and (out / layout.METADATA).is_file()


@pytest.mark.slow  # ~35 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_augment_job_regenerates_from_stored_audio(percepiano_shards, tmp_path):
  out = tmp_path / "augmented"
  args = [f"--input_dir={percepiano_shards}", "--variants=2", "--seed=5", *IN_MEMORY,
          "--target_shard_mb=1"]
  ok(run_job("augment", *args, f"--output_dir={out}"))
  clean = windows_in(percepiano_shards)
  augmented = windows_in(out)
  assert {h["variant"] for h, _ in augmented} == {1, 2}
  assert len(augmented) == 2 * len(clean)  # noise keeps the length
  for header, arrays in augmented:
    assert set(header["augmentation"]) == {"noise_snr_db", "noise_seed"}
    assert arrays["label_mask"].all()  # the PercePiano preset keeps every label valid
  clean_by_id = {(h["key"], h["window_index"]): a["features"] for h, a in clean}
  for header, arrays in augmented[:5]:
    assert not np.array_equal(arrays["features"], clean_by_id[header["key"],
                                                              header["window_index"]])
  metadata = json.loads((out / layout.METADATA).read_text())
  assert metadata["counts"]["written"] == 28
  assert not any(r["kind"] == "audio" for r in metadata["shards"])
  again = tmp_path / "again"
  ok(run_job("augment", *args, f"--output_dir={again}"))
  assert json.loads((again / layout.METADATA).read_text())["shards"] == metadata["shards"]


def test_midi_domain_augmentation_marks_invalid_labels(corpus, tmp_path):
  out = tmp_path / "out"
  ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
             "--augment_config.domain=midi", "--augment=time_stretch", "--variants=1",
             "--nowrite_audio", *IN_MEMORY, *TINY_SPLIT))
  windows = windows_in(out)
  stretched = [(h, a) for h, a in windows if h["variant"] == 1]
  assert stretched and all(set(h["augmentation"]) == {"time_stretch"} for h, _ in stretched)
  pace = percepiano_dimension("pace")
  assert all(not a["label_mask"][pace] and a["label_mask"].sum() == 18 for _, a in stretched)
  assert all(a["label_mask"].all() for h, a in windows if h["variant"] == 0)


def percepiano_dimension(name: str) -> int:
  from pipelines.datasets import taxonomy
  return taxonomy.DIMENSION_NAMES.index(name)


def test_maestro_job_filters_silence_and_dead_letters_missing_audio(corpus, tmp_path):
  root = tmp_path / "maestro"
  shutil.copytree(corpus / "maestro-v3.0.0", root)
  with (root / "maestro-v3.0.0.csv").open() as f:
    rows = list(csv.DictReader(f))
  silent = dict(rows[0], midi_filename="2010/silent.midi", audio_filename="2010/silent.wav",
                duration="30.0", split="train")
  (root / "2010").mkdir(exist_ok=True)
  soundfile.write(root / "2010" / "silent.wav", np.zeros((48_000 * 30, 2), np.int16), 48_000,
                  subtype="PCM_16")
  empty = pretty_midi.PrettyMIDI()  # the WAV's aligned MIDI: valid, no notes
  empty.instruments.append(pretty_midi.Instrument(0))
  empty.write(str(root / "2010" / "silent.midi"))
  missing = dict(rows[0], midi_filename="2010/gone.midi", audio_filename="2010/gone.wav")
  with (root / "maestro-v3.0.0.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows + [silent, missing])
  (root / "maestro-v3.0.0.json").unlink()
  out = tmp_path / "out"
  proc = ok(run_job("maestro", f"--maestro_dir={root}", f"--output_dir={out}",
                    "--max_failure_fraction=0.2", "--target_shard_mb=4", *IN_MEMORY,
                    f"--exclude_overlap_with={corpus / 'percepiano'}"))
  n = len(rows)
  assert f"listed {n + 2} = written {n} + filtered 1 + dead-lettered 1" in proc.stdout
  # The generated PercePiano clips are not cut from these performances: nothing is left
  # out, and the row without its MIDI is named as unchecked.
  assert "left out 0 compositions (0 performances)" in proc.stdout
  assert "1 sources unchecked" in proc.stdout
  # A MAESTRO performance among the rated MIDI leaves out its composition (composer and
  # canonical title), every rendition of it; one of a split with other compositions.
  from pipelines.beam import maestro_job
  composition = lambda r: f"{r['canonical_composer']}: {r['canonical_title']}"
  in_split = lambda r: {composition(o) for o in rows if o["split"] == r["split"]}
  row = next(r for r in rows if len(in_split(r)) > 1)
  rated = tmp_path / "rated"
  rated.mkdir()
  shutil.copy(root / row["midi_filename"], rated / "copy.mid")
  sources, _ = maestro_job.maestro_sources(str(root), False, split_seed=0)
  kept, info = maestro_job.exclude_overlap(sources, [str(rated)])
  title = composition(row)
  assert info["compositions"] == [title]
  assert info["sources_unchecked"] == ["2010/gone"]
  assert len(sources) - len(kept) == sum(
      composition(r) == title for r in rows + [silent, missing]) >= 1
  metadata = json.loads((out / layout.METADATA).read_text())
  assert metadata["counts"]["windows_filtered"] >= 2
  windows = windows_in(out)
  assert {h["split"] for h, _ in windows} == {"train", "validation", "test"}
  assert all(a["labels"].shape == (0,) for _, a in windows)
  assert metadata["normalization"]["split"] == "train" and metadata["normalization"]["count"] > 0
  # Regenerating augmentations from MAESTRO shards picks the MAESTRO preset (all three ops),
  # and the unlabelled windows need no label mask.
  augmented = tmp_path / "augmented"
  ok(run_job("augment", f"--input_dir={out}", f"--output_dir={augmented}", "--variants=1",
             "--max_failure_fraction=0.2", "--target_shard_mb=4", *IN_MEMORY))
  params = [h["augmentation"] for h, _ in windows_in(augmented)]
  assert params and all(set(p) == {"time_stretch", "pitch_shift", "noise_snr_db", "noise_seed"}
                        for p in params)


def test_asap_layout_is_rendered_on_the_fly(corpus, tmp_path):
  root = tmp_path / "asap"
  index_rows = []
  with (corpus / "maestro-v3.0.0" / "maestro-v3.0.0.csv").open() as f:
    for i, row in enumerate(csv.DictReader(f)):
      folder = f"Composer/Piece_{row['canonical_title'][:6].replace(' ', '_')}"
      (root / folder).mkdir(parents=True, exist_ok=True)
      shutil.copy(corpus / "maestro-v3.0.0" / row["midi_filename"], root / folder / f"p{i}.mid")
      index_rows.append({"composer": "Composer", "title": row["canonical_title"],
                         "folder": folder, "midi_performance": f"{folder}/p{i}.mid",
                         "maestro_midi_performance": "{maestro}/" + row["midi_filename"],
                         "maestro_audio_performance": "{maestro}/" + row["audio_filename"]})
  with (root / "metadata.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(index_rows[0]))
    writer.writeheader()
    writer.writerows(index_rows)
  out = tmp_path / "out"
  proc = ok(run_job("maestro", f"--maestro_dir={root}", f"--output_dir={out}", *IN_MEMORY,
                    "--target_shard_mb=4", "--validation_fraction=0.3", "--hop_s=5.12"))
  assert f"listed {len(index_rows)} = written {len(index_rows)}" in proc.stdout
  metadata = json.loads((out / layout.METADATA).read_text())
  assert metadata["splits"]["layout"] == "asap"
  windows = windows_in(out)
  splits = {}
  for h, _ in windows:
    splits.setdefault(h["composition"], set()).add(h["split"])
  assert all(len(s) == 1 for s in splits.values())  # compositions never straddle splits
  assert set().union(*splits.values()) == {"train", "validation"}
  # --hop_s 5.12: windows overlap by half, each a full 1024 frames except the last.
  for h, _ in windows:
    assert h["start_s"] == pytest.approx(5.12 * h["window_index"])
    assert h["valid_frames"] == 1024 or h["window_index"] == h["window_count"] - 1
  assert metadata["soundfont_sha256"] == render.soundfont_sha256()


@pytest.mark.parametrize("args,view,expected", [
    (["--runner=DataflowRunner", "--project=my-project-123", "--region=europe-west4",
      "--temp_location=gs://bucket/tmp", "--setup_file=./pyproject.toml"],
     "GoogleCloudOptions", {"project": "my-project-123", "region": "europe-west4"}),
    (["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"],
     "FlinkRunnerOptions", {"flink_master": "localhost:8081"}),
    (["--runner=SparkRunner", "--spark_master_url=spark://host:7077"],
     "SparkRunnerOptions", {"spark_master_url": "spark://host:7077"}),
])
def test_distributed_runner_options_reach_the_pipeline(args, view, expected, tmp_path):
  from apache_beam.options import pipeline_options
  options = preprocess.default_pipeline_options(args)
  config = preprocess.JobConfig(dataset="x", output_dir=str(tmp_path),
                                augment=__import__("pipelines.beam.augment_presets",
                                                   fromlist=["x"]).get_config())
  pipeline = beam.Pipeline(options=options)
  preprocess.build(pipeline, [preprocess.Source(key="k", split="train", audio_path="a.wav")],
                   config)
  built = pipeline.options
  runner = built.view_as(pipeline_options.StandardOptions).runner
  assert runner == args[0].split("=", 1)[1]
  values = built.view_as(getattr(pipeline_options, view)).get_all_options()
  assert {k: values[k] for k in expected} == expected
  # Local defaults (FnApiRunner, one worker per core) are not forced onto remote runners.
  assert built.view_as(pipeline_options.DirectOptions).direct_running_mode != \
      "multi_processing" or runner == "FnApiRunner"


def test_local_default_is_the_offline_classic_runner():
  from apache_beam.options import pipeline_options
  options = preprocess.default_pipeline_options([])
  assert options.view_as(pipeline_options.StandardOptions).runner == "FnApiRunner"
  direct = options.view_as(pipeline_options.DirectOptions)
  assert direct.direct_running_mode == "multi_processing" and direct.direct_num_workers >= 1


def test_augment_job_argument_errors(percepiano_shards, tmp_path):
  proc = run_job("augment", f"--input_dir={percepiano_shards}", f"--output_dir={tmp_path / 'a'}",
                 "--variants=0")
  assert proc.returncode != 0 and "--variants must be >= 1" in proc.stderr
  proc = run_job("augment", f"--input_dir={tmp_path}", f"--output_dir={tmp_path / 'b'}")
  assert proc.returncode != 0 and "metadata.json" in proc.stderr
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_midi_domain_needs_midi_sources(corpus, tmp_path):
  proc = run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                 f"--audio_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}",
                 "--augment_config.domain=midi", *TINY_SPLIT)
  assert proc.returncode != 0 and "domain=midi needs MIDI sources" in proc.stderr


def test_a_hop_longer_than_the_window_is_refused_before_the_job_runs(corpus, tmp_path):
  out = tmp_path / "out"
  proc = run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                 f"--output_dir={out}", "--window_s=2.56", "--hop_s=5.12", *TINY_SPLIT)
  assert proc.returncode != 0 and "positive and at most the window" in proc.stderr
  assert "Traceback" not in proc.stderr and not out.exists()


def _shard_digests(root: pathlib.Path) -> dict[str, str]:
  return {r["file"]: r["sha256"] for r in json.loads((root / layout.METADATA).read_text())["shards"]}


def test_a_killed_job_rerun_gives_the_same_shards_and_no_scratch(corpus, percepiano_shards,
                                                                 tmp_path):
  import os
  import signal
  import time

  out = tmp_path / "percepiano"
  args = [sys.executable, "-m", "pipelines.beam.percepiano_job",
          f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
          "--format=array_record", "--format=tfrecord", "--direct_num_workers=2", *TINY_SPLIT]
  # Its own process group, so the kill reaches Beam's worker processes too.
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and not any(p.is_file() for partial in
                                           tmp_path.glob(".percepiano.partial-*")
                                           for p in partial.rglob("*.bin")):
    assert proc.poll() is None, "the job finished before it could be killed"
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)
  assert list(tmp_path.glob(".percepiano.partial-*")) and not out.exists()
  rerun = ok(subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False))
  assert "left by a job that did not finish" in rerun.stderr
  assert _shard_digests(out) == _shard_digests(percepiano_shards)
  assert not list(tmp_path.glob(".percepiano.partial-*"))


def test_a_second_job_on_the_same_output_is_refused(corpus, tmp_path):
  import fcntl
  import os

  out = tmp_path / "percepiano"
  # A live job holds the lock (this test process stands in for it).
  with open(tmp_path / ".percepiano.lock", "w") as lock:
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (tmp_path / ".percepiano.partial-0000beef").mkdir()  # the live job's scratch
    proc = run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                   f"--output_dir={out}", *IN_MEMORY, *TINY_SPLIT)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert f"being written by another process (pid {os.getpid()})" in proc.stderr.strip().splitlines()[-1]
  assert (tmp_path / ".percepiano.partial-0000beef").is_dir()  # never touched
  assert not out.exists()


def test_choose_soundfont_is_seeded_per_recording_and_variant():
  fonts = ("a.sf2", "b.sf2", None)
  assert preprocess.choose_soundfont(("only.sf2",), 0, "k", 3) == "only.sf2"
  picks = [preprocess.choose_soundfont(fonts, 0, f"key{i}") for i in range(300)]
  assert picks == [preprocess.choose_soundfont(fonts, 0, f"key{i}") for i in range(300)]
  assert all(80 <= picks.count(f) <= 120 for f in fonts)  # about a third each
  assert picks != [preprocess.choose_soundfont(fonts, 1, f"key{i}") for i in range(300)]
  assert [preprocess.choose_soundfont(fonts, 0, "key0", v) for v in range(30)].count(
      picks[0]) < 30  # variants draw their own


def test_several_soundfonts_each_recording_renders_with_one_and_records_it(corpus, tmp_path):
  """--soundfonts: each performance's clean render and its audio-domain variants use one
  SoundFont chosen by the seed, every window and audio record names its checksum, and the
  metadata lists them; misuse is refused before any work."""
  other = tmp_path / "Other.sf2"  # TimGM6mb plus one byte: another checksum
  other.write_bytes(render.default_soundfont().read_bytes() + b"\0")
  out = tmp_path / "out"
  ok(run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}", f"--output_dir={out}",
             f"--soundfonts=default,{other}", "--augment=noise", "--variants=1", *IN_MEMORY,
             *TINY_SPLIT))
  shas = {"TimGM6mb": render.soundfont_sha256(), "Other": render.soundfont_sha256(other)}
  metadata = json.loads((out / layout.METADATA).read_text())
  assert metadata["soundfonts"] == shas and metadata["soundfont_sha256"] is None
  by_key: dict[str, set] = {}
  for header, _ in windows_in(out):
    by_key.setdefault(header["key"], set()).add(header["soundfont_sha256"])
  assert all(len(v) == 1 for v in by_key.values())  # clean and noisy variants share it
  chosen = {k: preprocess.choose_soundfont((None, str(other)), 0, k) for k in by_key}
  assert {k: v.pop() for k, v in by_key.items()} == {
      k: shas["Other" if c else "TimGM6mb"] for k, c in chosen.items()}
  assert len(set(chosen.values())) == 2, "the tiny release should use both"
  audio = windows_in(out, kind="audio")
  assert {h["key"]: h["soundfont_sha256"] for h, _ in audio} == {
      k: shas["Other" if c else "TimGM6mb"] for k, c in chosen.items()}

  # One timbre of the job, the other held out: the input pipeline keeps that SoundFont's
  # windows; a run reading it (--config.input.soundfonts) lists it alone as heard.
  from pipelines import input_pipeline
  from train import rundir, tasks
  from train.configs import finetune
  headers = [h for h, _ in windows_in(out)]
  splits = tuple(sorted({h["split"] for h in headers}))
  for name, sha in shas.items():
    kept = input_pipeline.count(out, input_pipeline.InputConfig(splits=splits,
                                                                soundfonts=frozenset({sha})))
    assert kept == sum(h["soundfont_sha256"] == sha for h in headers) > 0
    config = finetune.get_config("tiny")
    config.data_dir, config.input.soundfonts = str(out), name
    task = tasks.make(config)
    assert task.train_input_config().soundfonts == frozenset({sha})
    assert task.eval_input_config().soundfonts == frozenset({sha})
    workdir = tmp_path / f"run_{name}"
    workdir.mkdir()
    task.write_artifacts(workdir)
    seen = json.loads((workdir / rundir.DATA_METADATA).read_text())
    assert seen["soundfonts"] == {name: sha} and seen["soundfont_sha256"] == sha
    assert seen["job_soundfonts"] == shas
    assert seen["config"]["soundfonts"] == (["default"] if name == "TimGM6mb" else [str(other)])
  config = finetune.get_config("tiny")
  config.data_dir, config.input.soundfonts = str(out), "TimGM6mb,Other"
  assert tasks.make(config).train_input_config().soundfonts is None  # both: no filter
  config.input.soundfonts = "FluidR3_GM"
  with pytest.raises(tasks.DataMismatchError, match=r"names \['FluidR3_GM'\].*'Other', 'TimGM6mb'"):
    tasks.make(config).train_input_config()

  for bad, message in (([f"--soundfonts=default,{other}", f"--soundfont={other}"], "not both"),
                       (["--soundfonts=default,default"], "twice"),
                       ([f"--soundfonts=default,{tmp_path / 'missing.sf2'}"], "missing.sf2")):
    proc = run_job("percepiano", f"--percepiano_dir={corpus / 'percepiano'}",
                   f"--output_dir={tmp_path / 'bad'}", *bad, *IN_MEMORY, *TINY_SPLIT)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()
