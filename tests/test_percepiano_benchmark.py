"""experiments.percepiano_benchmark: every stage's command parses into a valid config."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from experiments import percepiano_benchmark as benchmark
from pipelines.shards import records
from pipelines.shards.tiled_windows import TILING
from train import tasks

REPO = pathlib.Path(__file__).resolve().parent.parent


def _config(args, monkeypatch):
  """The config the trainer would build from a stage's --config flags (absl's real parser)."""
  argv = [sys.argv[0], *[a for a in args if a.startswith("--config")]]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  return values.config


@pytest.mark.parametrize("size", sorted(benchmark.SIZES))
def test_every_training_stage_builds_its_model(size, tmp_path, monkeypatch):
  plan = benchmark.plan(tmp_path / "pp", tmp_path / "asap", tmp_path / "w", size, folds="0")
  names = [s.name for s in plan]
  assert names[:5] == ["asap_shards", "asap_mixed_shards", "percepiano_shards", "pretrain",
                       "pretrain_both"]
  assert {f"cv_{v}" for v in benchmark.VARIANTS} <= set(names)
  assert {"performer_ast", "performer_cnn", "report_piece", "report_performer"} <= set(names)
  # What each stage waits for when stages run side by side.
  needs = {s.name: s.needs for s in plan}
  for k, stage in enumerate(plan):  # every need names an earlier stage of the plan
    assert set(stage.needs) <= set(names[:k]), stage.name
  assert needs["pretrain"] == needs["pretrain_both"] == ("asap_mixed_shards",)
  assert needs["cv_ast"] == ("percepiano_shards", "pretrain")
  # The objectives' ablation: SSAST alone against SSAST + transcription, nothing else apart.
  ssast, both = (_config(plan[names.index(n)].args, monkeypatch) for n in ("pretrain",
                                                                          "pretrain_both"))
  assert (ssast.model.ssast_weight, ssast.model.transcription_weight) == (1, 0)
  assert (both.model.ssast_weight, both.model.transcription_weight) == (1, 1)
  for field in ("num_steps", "batch_size", "seed", "data_dir", "optimizer", "model.encoder",
                "model.num_masked"):
    first, second = ssast, both
    for part in field.split("."):
      first, second = first[part], second[part]
    assert first == second, field
  assert ssast.data_dir == str(tmp_path / "w" / "shards" / "asap_mixed")
  assert needs["cv_ast_both"] == ("percepiano_shards", "pretrain_both")
  assert needs["embed_both"] == ("pretrain_both", "percepiano_shards")
  assert needs["cv_probe_both"] == ("embed_both",)
  assert "--pairs=probe-both:probe-ssast,ast-both:ast" in plan[names.index("summary")].args
  assert needs["cv_ast_notes"] == ("percepiano_shards", "pretrain_notes_mixed")
  assert f"--config.init.checkpoint={tmp_path / 'w' / 'pretrain_notes_mixed'}" in plan[
      names.index("cv_ast_notes")].args
  assert needs["cv_scratch"] == needs["cv_cnn"] == needs["performer_ffn"] == ("percepiano_shards",)
  probes = [f"probe_{e}" for e in benchmark.PROBES] + list(benchmark.CLIP_HEADS.values()) + list(
      benchmark.ENSEMBLES) + ["selection"]
  assert set(needs["report_piece"]) == {f"cv_{v}" for v in (*benchmark.VARIANTS,
                                                             *benchmark.STATISTICS_MODELS,
                                                             *probes)}
  assert set(needs["report_performer"]) == {f"performer_{v}" for v in
                                            (*benchmark.PERFORMER_VARIANTS,
                                             *benchmark.STATISTICS_MODELS, *probes)}
  # The clip heads read the notes-aware encoder's window embeddings, which embed_notes keeps.
  assert needs["cv_clip_attention"] == needs["performer_window_mean"] == ("embed_notes",)
  # The ensemble averages two finished members of its own split.
  assert needs["performer_ensemble"] == ("performer_ast_stats", "performer_window_mean")
  # ... and AST+stats with the fine-tuned notes-aware AST: on the folds that AST runs now
  # (--folds=0 here) where it is cross-validated, on the test set alone where it is not.
  assert needs["cv_ensemble_ast_notes"] == ("cv_ast_stats", "cv_ast_notes")
  for kind, split in (("cv", "piece"), ("performer", "performer")):
    args = plan[names.index(f"{kind}_ensemble_ast_notes")].args
    test_only = "ast_notes" not in benchmark.SIZES[size]["cross_validated"].get(split, ())
    assert f"--folds={'none' if test_only else '0'}" in args, (size, split)
    assert ("--folds=0" in plan[names.index(f"{kind}_ast_notes")].args) == (not test_only)
    assert not any(a.startswith("--folds") for a in plan[names.index(f"{kind}_ensemble")].args)
  piece = tmp_path / "w" / "piece"
  members = f"--members={piece / 'ast_stats'},{piece / 'window_mean'}"
  assert members in plan[names.index("cv_ensemble")].args
  # Ensemble selection chooses from the same audio-only library on both splits, led by
  # AST+stats, and waits for every candidate of its own split.
  for kind, split in (("cv", "piece"), ("performer", "performer")):
    args = plan[names.index(f"{kind}_selection")].args
    candidates = next(a for a in args if a.startswith("--candidates=")).split("=", 1)[1]
    chosen = [pathlib.Path(c).name for c in candidates.split(",")]
    assert "oracle_notes" not in chosen and {"ridge", "notes", "ast_stats", "window_mean",
                                              "probe_notes"} <= set(chosen)
    assert f"--lead={tmp_path / 'w' / split / 'ast_stats'}" in args
    assert needs[f"{kind}_selection"] == tuple(f"{kind}_{c}" for c in chosen)
  embed_notes = plan[names.index("embed_notes")].args
  assert f"--windows_output={tmp_path / 'w' / 'window_embeddings_notes.npz'}" in embed_notes
  assert not any("--windows_output" in a for a in plan[names.index("embed_ssast")].args)
  # Probes: each encoder embeds PercePiano once, both splits fit on that table.
  assert needs["embed_ssast"] == ("pretrain", "percepiano_shards")
  assert needs["embed_random"] == needs["embed_notes"] == ("pretrain_notes_mixed",
                                                            "percepiano_shards")
  assert "--random_init" in plan[names.index("embed_random")].args
  assert "--random_init" not in plan[names.index("embed_notes")].args
  assert needs["cv_probe_notes"] == ("embed_notes",)
  assert needs["cv_fusion"] == ("transcribe_percepiano", "embed_notes")
  assert needs["performer_fusion"] == ("cv_fusion",)
  # The notes-aware run continues on two timbres; transcription is scored per timbre on the
  # held-out compositions: TimGM6mb's, the second SoundFont's and one never trained on.
  w = tmp_path / "w"
  mixed = plan[names.index("asap_mixed_shards")].args
  assert f"--soundfonts=default,{benchmark.SECOND_SOUNDFONT}" in mixed
  assert needs["pretrain_notes_mixed"] == ("pretrain_notes", "asap_mixed_shards")
  continued = plan[names.index("pretrain_notes_mixed")].args
  assert f"--config.init.checkpoint={w / 'pretrain_notes'}" in continued
  assert f"--config.data_dir={w / 'shards' / 'asap_mixed'}" in continued
  for stage, font in (("second_timbre_shards", benchmark.SECOND_SOUNDFONT),
                      ("unseen_timbre_shards", benchmark.UNSEEN_SOUNDFONT)):
    held_out = plan[names.index(stage)].args
    assert f"--soundfont={font}" in held_out
    assert "--only_splits=validation" in held_out and "--variants=0" in held_out
  # ... and with csound's GM bank, a second piano never heard, for transcription alone.
  held_out = plan[names.index("held_out_shards_sf_GMbank")].args
  assert f"--soundfont={benchmark.HELD_OUT_SOUNDFONTS[0]}" in held_out
  assert "--only_splits=validation" in held_out and "--variants=0" in held_out
  assert needs["transcription"] == ("pretrain_notes_mixed", "asap_shards", "second_timbre_shards",
                                    "unseen_timbre_shards", "held_out_shards_sf_GMbank")
  report_args = plan[names.index("transcription")].args
  assert f"--checkpoint={w / 'pretrain_notes_mixed'}" in report_args
  assert f"--timbres={w / 'shards' / 'asap'},{w / 'shards' / 'asap_FluidR3_GM'}," \
      f"{w / 'shards' / 'asap_MuseScore_General_Full'},{w / 'shards' / 'asap_sf_GMbank'}" \
      in report_args
  with pytest.raises(ValueError, match="distinct file names"):
    benchmark.plan(tmp_path / "pp", tmp_path / "asap", w, size,
                   held_out_soundfonts=("/a/piano.sf2", "/b/piano.sf2"))
  # Perception across timbres: PercePiano in both other timbres, transcribed by the same run.
  for kind, font in (("second", benchmark.SECOND_SOUNDFONT), ("unseen", benchmark.UNSEEN_SOUNDFONT)):
    shards = plan[names.index(f"percepiano_{kind}_timbre_shards")].args
    assert f"--soundfont={font}" in shards and "--variants=0" in shards
    assert "--nowrite_audio" not in shards  # the audio ridge reads the clean audio
    assert needs[f"transcribe_percepiano_{kind}_timbre"] == (
        "transcription", f"percepiano_{kind}_timbre_shards")
    assert f"--checkpoint={w / 'pretrain_notes_mixed'}" in plan[
        names.index(f"transcribe_percepiano_{kind}_timbre")].args
  # AST+stats across timbres reads each timbre's clip embeddings by the same encoder.
  assert needs["cross_timbre"] == ("transcribe_percepiano", "embed_notes",
                                   "transcribe_percepiano_second_timbre",
                                   "embed_percepiano_second_timbre",
                                   "transcribe_percepiano_unseen_timbre",
                                   "embed_percepiano_unseen_timbre")
  assert needs["embed_percepiano_second_timbre"] == ("pretrain_notes_mixed",
                                                     "percepiano_second_timbre_shards")
  cross = plan[names.index("cross_timbre")].args
  assert f"--train_data={w / 'shards' / 'percepiano'}" in cross
  assert f"--transcribed_notes={w / 'transcribed_notes.npz'}" in cross
  assert "--models=ridge,notes,ast_stats" in cross
  assert f"--embeddings={w / 'embeddings_notes.npz'}" in cross
  without = {s.name: s for s in benchmark.plan(tmp_path / "pp", tmp_path / "asap", tmp_path / "w",
                                               size, folds="0", unseen_soundfont="",
                                               held_out_soundfonts=())}
  assert "percepiano_unseen_timbre_shards" not in without
  assert without["cross_timbre"].needs == ("transcribe_percepiano", "embed_notes",
                                           "transcribe_percepiano_second_timbre",
                                           "embed_percepiano_second_timbre")
  assert "unseen_timbre_shards" not in without
  assert without["transcription"].needs == ("pretrain_notes_mixed", "asap_shards",
                                            "second_timbre_shards")
  assert needs["performer_probe_notes"] == ("cv_probe_notes",)
  # The piece ridge fills the one statistics cache; every other run on it waits for that.
  cache = f"--statistics_cache={tmp_path / 'w' / 'clip_statistics.npz'}"
  for split, kind in (("piece", "cv"), ("performer", "performer")):
    ridge, ffn = plan[names.index(f"{kind}_ridge")], plan[names.index(f"{kind}_ffn_stats")]
    assert ridge.args[0] == "train.ridge" and cache in ridge.args
    assert needs[f"{kind}_ridge"] == (("percepiano_shards",) if split == "piece" else ("cv_ridge",))
    assert {f"--split={split}", "--test"} <= set(ridge.args) & set(ffn.args)
    assert needs[f"{kind}_ffn_stats"] == ("cv_ridge",) and "--folds=none" not in ffn.args
    assert f"--config.clip_statistics_cache={cache.split('=', 1)[1]}" in ffn.args
  # The notes path: pre-training with the transcription head, its report (thresholds), the
  # PercePiano transcription, then the oracle's ridge read from it (after the oracle's runs,
  # which fill the MIDI statistics' cache), and the ridge fitted on the transcription.
  assert needs["pretrain_notes"] == ("asap_shards",)
  assert needs["transcribe_percepiano"] == ("transcription", "percepiano_shards")
  for model, fit in (("notes", "midi"), ("notes_direct", "transcription")):
    assert needs[f"cv_{model}"] == ("transcribe_percepiano", "cv_oracle_notes")
    assert needs[f"performer_{model}"] == (f"cv_{model}",)
    assert f"--notes_fit={fit}" in plan[names.index(f"cv_{model}")].args
  for run in ("pretrain_notes", "pretrain_notes_mixed"):
    notes_config = _config(plan[names.index(run)].args, monkeypatch)
    assert notes_config.task == "pretrain" and notes_config.model.transcription_weight == 1
    assert notes_config.model.encoder.time_stride == notes_config.model.encoder.patch_size
    if size == "cpu":
      assert notes_config.model.ssast_weight == 0 and notes_config.checkpoint.keep >= (
          notes_config.num_steps // notes_config.checkpoint.every_steps)
  archive = plan[names.index("transcribe_percepiano")].args[-1].split("=", 1)[1]
  assert f"--transcribed_notes={archive}" in plan[names.index("cv_notes")].args
  # Each report right after its split's runs.
  assert names.index("report_piece") == max(i for i, n in enumerate(names) if n.startswith("cv_")) + 1
  assert names[-2:] == ["report_performer", "summary"]
  assert set(needs["summary"]) == {n for n in names if n.startswith(("cv_", "performer_"))}
  backbones = {}
  for stage in plan:
    if not callable(stage.args) and stage.args[0] in ("train.main", "train.crossval"):
      config = _config(stage.args, monkeypatch)
      if config.task == "finetune":
        model = tasks.finetuning_model_config(config)
        backbones[stage.name] = (model.backbone, model.head, model.adaptive_weighting,
                                 bool(config.init.checkpoint), config.input.augmented)
        if model.backbone == "cnn":  # scaled down to the tiny AST's cost on 2 cores only
          assert (tuple(config.model.cnn.channels) == (8, 16, 32, 64, 128)) == (size == "cpu")
        assert "--test" in stage.args
        if model.backbone == "clip_stats":  # statistics, not windows: every fold, early stopping
          assert config.early_stopping.patience > 0 and config.eval_every_epochs > 0
          continue
        # SpecAugment masks up to AST's share of a window (192 of 1024 frames).
        assert config.input.time_mask * 1024 == 192 * config.model.encoder.num_frames
        kind, variant = stage.name.split("_", 1)
        split = "piece" if kind == "cv" else "performer"
        cross_validated = benchmark.SIZES[size]["cross_validated"].get(split, ())
        assert ("--folds=0" if variant in cross_validated else "--folds=none") in stage.args
  assert backbones["cv_ast"] == ("ast", "grouped", True, True, True)
  assert backbones["cv_scratch"][3] is False
  assert backbones["cv_flat"][1] == "flat"
  assert backbones["cv_fixed"][2] is False
  assert backbones["cv_noaug"][4] is False
  assert backbones["cv_cnn"][0] == "cnn" and backbones["performer_ffn"][0] == "pooled_stats"
  if size == "cpu":  # the headline models are cross-validated on 2 cores, the ablations not
    assert "--folds=0" in plan[names.index("cv_cnn")].args
    assert "--folds=none" in plan[names.index("cv_flat")].args


def test_dry_run_prints_the_commands(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.percepiano_benchmark", "--dry_run",
                         f"--workdir={tmp_path}", "--only=pretrain,cv_cnn"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "python -m train.main --config=train/configs/pretrain.py:tiny" in proc.stdout
  assert "--config.model.backbone=cnn" in proc.stdout and "cv_ast" not in proc.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.percepiano_benchmark", "--only=nope"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode != 0 and "unknown stages" in bad.stderr


def test_display_names_survive_the_comma_separated_names_flag():
  assert all("," not in name for name in benchmark.NAMES.values())
  assert set(benchmark.NAMES) == set(benchmark.VARIANTS) | set(benchmark.STATISTICS_MODELS) | {
      f"probe_{e}" for e in benchmark.PROBES} | set(benchmark.CLIP_HEADS.values()) | set(
      benchmark.ENSEMBLES) | {"selection"}


def _finish(run: pathlib.Path, seconds: float = 1.0) -> None:
  run.mkdir(parents=True, exist_ok=True)
  (run / "result.json").write_text(
      f'{{"status": "finished", "step": 5, "total_steps": 5, "total_wall_seconds": {seconds}}}')


def test_a_piece_of_folds_is_done_only_with_its_test_run(tmp_path):
  import json

  # crossval.json's own flags claim everything finished: the run directories decide.
  summary = {"split": "piece", "folds": [0, 1, 2, 3], "config": {},
             "runs": {k: {"finished": True} for k in ["0", "1", "2", "3", "test"]}}
  (tmp_path / "crossval.json").write_text(json.dumps(summary))
  _finish(tmp_path / "fold0")
  _finish(tmp_path / "fold1")
  (tmp_path / "test").mkdir()  # killed during the test run: no result.json yet
  assert not benchmark._crossval_finished(tmp_path, "0,1")
  assert not benchmark._crossval_finished(tmp_path, "none")
  _finish(tmp_path / "test")
  assert benchmark._crossval_finished(tmp_path, "0,1")
  assert benchmark._crossval_finished(tmp_path, "none")
  assert not benchmark._crossval_finished(tmp_path, "1,2")
  assert not benchmark._crossval_finished(tmp_path, "")  # folds 2 and 3 still to run
  (tmp_path / "fold2").mkdir()
  (tmp_path / "fold2" / "result.json").write_text(  # stopped by SIGTERM at step 3
      '{"status": "preempted", "step": 3, "total_steps": 5}')
  _finish(tmp_path / "fold3")
  assert not benchmark._crossval_finished(tmp_path, "")
  _finish(tmp_path / "fold2")
  assert benchmark._crossval_finished(tmp_path, "")
  # Finished with other settings than the stage's command: an error, not done.
  summary["config"] = {"input": {"time_mask": 96}}
  (tmp_path / "crossval.json").write_text(json.dumps(summary))
  assert benchmark._crossval_finished(tmp_path, "", ["--config.input.time_mask=96"])
  with pytest.raises(benchmark.stages.StageError, match="input.time_mask=96"):
    benchmark._crossval_finished(tmp_path, "", ["--config.input.time_mask=192"])
  assert not benchmark._crossval_finished(tmp_path / "absent", "none")


def test_the_report_compares_what_finished_and_names_what_is_pending(tmp_path):
  import json
  work = tmp_path / "w"
  report = next(s for s in benchmark.plan(tmp_path / "pp", tmp_path / "asap", work, "cpu")
                if s.name == "report_piece")
  with pytest.raises(benchmark.stages.StageError, match="no finished evaluation"):
    report.command()  # nothing to report before the AST's runs
  for variant, runs in (("ast", ["0", "1", "2", "3", "test"]), ("cnn", ["test"])):
    directory = work / "piece" / variant
    summary = {"split": "piece", "folds": [0, 1, 2, 3], "config": {},
               "runs": {k: {"finished": True, "wall_seconds": 1e6}  # stale: not the source
                        for k in ["0", "1", "2", "3", "test"]}}
    (directory).mkdir(parents=True)
    (directory / "crossval.json").write_text(json.dumps(summary))
    for k in runs:  # the run directories' own results decide what is finished
      _finish(directory / ("test" if k == "test" else f"fold{k}"), seconds=120.0)
  # The attention example: the first test performance of the labelled shards' split table.
  midi = tmp_path / "pp" / "virtuoso" / "data" / "all_2rounds"
  midi.mkdir(parents=True)
  (midi / "Y_piece_8bars_1_2.mid").write_bytes(b"MThd")
  (work / "shards" / "percepiano").mkdir(parents=True)
  (work / "shards" / "percepiano" / "metadata.json").write_text(json.dumps(
      {"splits": {"piece": {"Y_piece_8bars_1_2": "test", "X_piece_8bars_1_1": "fold0"}}}))
  args = report.command()
  assert f"--attention_audio={midi / 'Y_piece_8bars_1_2.mid'}" in args
  assert f"--compare={work / 'piece' / 'cnn'}" in args
  assert f"--names={benchmark.NAMES['ast']},{benchmark.NAMES['cnn']}" in args
  notes = [a for a in args if a.startswith("--note=")]
  # The scale first: the report says what budget produced its numbers.
  assert notes[0] == f"--note={benchmark.SIZES['cpu']['scale']}" and "2-core" in notes[0]
  assert "AST (SSAST pre-trained): 4 folds + test in 10 min" in notes[1]
  assert "CNN baseline: test in 2 min" in notes[1]
  pending = [benchmark.NAMES[v] for v in (*benchmark.VARIANTS, *benchmark.STATISTICS_MODELS,
                                          *(f"probe_{e}" for e in benchmark.PROBES),
                                          *benchmark.CLIP_HEADS.values(),
                                          *benchmark.ENSEMBLES, "selection")
             if v not in ("ast", "cnn")]
  assert notes[2] == f"--note=Not run yet (pending stages of the benchmark): {', '.join(pending)}."


def test_shards_of_one_size_are_refused_by_the_other(tmp_path):
  import json
  work = tmp_path / "w"
  for name in ("asap", "percepiano"):  # shards as the cpu plan made them
    (work / "shards" / name).mkdir(parents=True)
    (work / "shards" / name / "metadata.json").write_text(
        json.dumps({"config": {"window_s": 5.12, "hop_s": 5.12, "write_audio": True,
                               "exclude_overlap_with": [str(tmp_path)]},
                    "schema": {"schema_version": records.VERSION}}))
  by_size = {size: {s.name: s for s in benchmark.plan(tmp_path, tmp_path, work, size)}
             for size in benchmark.SIZES}
  for name in ("asap_shards", "percepiano_shards"):
    assert by_size["cpu"][name].done()
    with pytest.raises(benchmark.stages.StageError, match=r"window_s=5.12 \(this stage: 10.24\)"):
      by_size["base"][name].done()


def test_pre_training_shards_that_may_hold_rated_performances_are_refused(tmp_path):
  """Shards made before the ASAP jobs left out the compositions holding PercePiano's
  performances (or with another release's) are not reused: they would pre-train on what the
  benchmark rates."""
  import json
  work, rated = tmp_path / "w", tmp_path / "percepiano"
  plan = {s.name: s for s in benchmark.plan(rated, tmp_path / "asap", work, "cpu")}
  jobs = [s for s in plan.values()
          if not callable(s.args) and s.args[0] == "pipelines.beam.maestro_job"]
  assert len(jobs) >= 3  # the two pre-training jobs and the held-out renders
  for stage in jobs:
    assert f"--exclude_overlap_with={rated}" in stage.args, stage.name
  for recorded, message in ((None, r"exclude_overlap_with=None"),
                            (["/elsewhere"], r"exclude_overlap_with=\['/elsewhere'\]")):
    (work / "shards" / "asap").mkdir(parents=True, exist_ok=True)
    (work / "shards" / "asap" / "metadata.json").write_text(json.dumps(
        {"config": {"window_s": 5.12, "hop_s": 5.12,
                    **({"exclude_overlap_with": recorded} if recorded else {})},
         "schema": {"schema_version": records.VERSION}}))
    with pytest.raises(benchmark.stages.StageError, match=message):
      plan["asap_shards"].done()


def test_labelled_shards_without_their_audio_are_refused(tmp_path):
  # The ridge's statistics come from the clean audio the PercePiano job stores: shards made
  # with --nowrite_audio (an older plan's) must be rebuilt, not reused.
  import json
  work = tmp_path / "w"
  (work / "shards" / "percepiano").mkdir(parents=True)
  (work / "shards" / "percepiano" / "metadata.json").write_text(
      json.dumps({"config": {"window_s": 5.12, "hop_s": 5.12, "write_audio": False},
                  "schema": {"schema_version": records.VERSION}}))
  stage = {s.name: s for s in benchmark.plan(tmp_path, tmp_path, work, "cpu")}["percepiano_shards"]
  with pytest.raises(benchmark.stages.StageError, match=r"write_audio=False \(this stage: True\)"):
    stage.done()
  # Shards of record schema 1 have no note targets (the oracle-notes ridge reads them).
  (work / "shards" / "percepiano" / "metadata.json").write_text(
      json.dumps({"config": {"window_s": 5.12, "hop_s": 5.12, "write_audio": True},
                  "schema": {"schema_version": 1}}))
  with pytest.raises(benchmark.stages.StageError, match="record schema 1 shards"):
    stage.done()
  # Schema 2 (PPTR records with note targets) still serves: the reader decodes both.
  (work / "shards" / "percepiano" / "metadata.json").write_text(
      json.dumps({"config": {"window_s": 5.12, "hop_s": 5.12, "write_audio": True},
                  "schema": {"schema_version": 2}}))
  assert stage.done()


def test_the_notes_path_stages_are_done_only_for_the_runs_last_step(tmp_path):
  """A transcription report, notes archive or embedding table made from an earlier step
  of the pre-training run is stale: the stage runs again."""
  from pipelines.audio import notes
  from train import statistics_table
  run = tmp_path / "pretrain_notes"
  assert not benchmark._transcribed(tmp_path / "absent.npz", run)
  _finish(run)  # step 5
  report = tmp_path / "transcription.json"
  for step, done in ((3, False), (5, True)):
    # The lineage's count (3000 + step) is not the run's own step.
    final = {"step": 3000 + step, "run_step": step, "timbres": {"A": {}, "B": {}}}
    report.write_text(json.dumps({"checkpoint": str(run), "final": final}))
    assert benchmark._transcription_reported(report, run, 2) is done
    # Fewer timbres than the stage asks for, or another run's report, is not done.
    assert not benchmark._transcription_reported(report, run, 3)
    report.write_text(json.dumps({"checkpoint": str(tmp_path / "other"), "final": final}))
    assert not benchmark._transcription_reported(report, run, 2)
    archive = tmp_path / f"notes{step}.npz"
    notes.save_archive(archive, {}, {}, {"step": step, "tiling": TILING})
    assert not benchmark._transcribed(archive, run)  # no probability statistics: stale
    notes.save_archive(archive, {}, {}, {"step": step, "tiling": TILING}, (("x",), {}))
    assert benchmark._transcribed(archive, run) is done
    # Made before tiling kept every window (no marker): stale, whatever its step.
    notes.save_archive(archive, {}, {}, {"step": step}, (("x",), {}))
    assert not benchmark._transcribed(archive, run)
    table = tmp_path / f"emb{step}.npz"
    statistics_table.save_vectors(table, ["k"], np.zeros((1, 2)),
                                  {"step": step, "random_init": False, "tiling": TILING})
    assert benchmark._embedded(table, run, random_init=False) is done
    statistics_table.save_vectors(table, ["k"], np.zeros((1, 2)),
                                  {"step": step, "random_init": False})
    assert not benchmark._embedded(table, run, random_init=False)
  cross = tmp_path / "cross_timbre.json"
  assert not benchmark._cross_timbre_reported(cross, run)
  every = {m: {} for m in benchmark.CROSS_TIMBRE_MODELS}
  for steps, models, done in (([5, 5, 5], every, True), ([5, 3, 5], every, False),
                              ([], every, False), ([5, 5, 5], {"ridge": {}, "notes": {}}, False)):
    cross.write_text(json.dumps({"transcriptions": [{"step": k} for k in steps],
                                 "models": models}))
    assert benchmark._cross_timbre_reported(cross, run) is done
  random_table = tmp_path / "random.npz"
  statistics_table.save_vectors(random_table, ["k"], np.zeros((1, 2)),
                                {"step": None, "random_init": True, "tiling": TILING})
  assert benchmark._embedded(random_table, run, random_init=True)


def test_a_released_notes_encoder_replaces_the_notes_aware_pre_training(tmp_path):
  """--notes_encoder=release/transcriber: the stages after the notes-aware run read the
  release, wait for nothing but the shards, and count as done for the release's own step."""
  from pipelines.audio import notes
  released = REPO / "release" / "transcriber"
  plan = benchmark.plan(tmp_path / "pp", tmp_path / "asap", tmp_path / "w", "cpu",
                        notes_encoder=released)
  names = [s.name for s in plan]
  assert not {"pretrain_notes", "pretrain_notes_mixed", "transcription"} & set(names)
  # SSAST pre-training (alone and with transcription) is not replaced, nor its shards.
  assert {"pretrain", "pretrain_both", "asap_mixed_shards"} <= set(names)
  by_name = {s.name: s for s in plan}
  for k, stage in enumerate(plan):  # every need still names an earlier stage of the plan
    assert set(stage.needs) <= set(names[:k]), stage.name
  assert by_name["transcribe_percepiano"].needs == ("percepiano_shards",)
  assert by_name["embed_notes"].needs == by_name["embed_random"].needs == ("percepiano_shards",)
  assert by_name["embed_ssast"].needs == ("pretrain", "percepiano_shards")
  for name in ("transcribe_percepiano", "embed_notes", "transcribe_percepiano_second_timbre",
               "embed_percepiano_second_timbre"):
    assert f"--checkpoint={released}" in by_name[name].args, name
  assert by_name["embed_percepiano_second_timbre"].needs == ("percepiano_second_timbre_shards",)
  assert f"--config.init.checkpoint={released}" in by_name["cv_ast_notes"].args
  assert by_name["cv_ast_notes"].needs == ("percepiano_shards",)
  # Done for the release's step, not for another.
  step = json.loads((released / "release.json").read_text())["step"]
  assert benchmark._last_step(released) == step
  archive = tmp_path / "notes.npz"
  for archived, done in ((step - 1, False), (step, True)):
    notes.save_archive(archive, {}, {}, {"step": archived, "tiling": TILING}, (("x",), {}))
    assert benchmark._transcribed(archive, released) is done


def test_the_report_says_what_ensemble_selection_chose(tmp_path):
  """Sides that chose alike share one entry; members by run directory name, weights to 2 dp,
  heaviest first."""
  chosen = {"fold0": {"/w/piece/ast_stats": 0.5, "/w/piece/notes": 0.5},
            "fold1": {"/w/piece/notes": 1 / 3, "/w/piece/ast_stats": 1 / 3,
                      "/w/piece/fusion": 1 / 3},
            "fold2": {"/w/piece/notes": 0.5, "/w/piece/ast_stats": 0.5},  # other order, same
            "fold3": {},  # a side with no weights recorded is left out
            "test": {"/w/piece/ast_stats": 0.5, "/w/piece/notes": 0.5}}
  for side, weights in chosen.items():
    (tmp_path / side).mkdir()
    (tmp_path / side / "result.json").write_text(json.dumps({"weights": weights}))
  note = benchmark._selection_note(tmp_path)
  assert note.endswith(": folds 0, 2 and the test set: ast_stats 0.50, notes 0.50; fold 1: "
                       "ast_stats 0.33, fusion 0.33, notes 0.33.")


def test_a_notes_encoder_pretrained_without_the_overlap_check_is_named(tmp_path):
  import json

  from model import release
  rated = tmp_path / "percepiano"
  run, shipped = tmp_path / "run", tmp_path / "release"
  run.mkdir()
  shipped.mkdir()
  (shipped / release.WEIGHTS).write_bytes(b"")

  def kept(splits: dict) -> None:  # what a run and a release keep of their shards' metadata
    (run / "data_metadata.json").write_text(json.dumps({"splits": splits}))
    (shipped / release.ABOUT).write_text(json.dumps({"data_metadata": {"splits": splits}}))

  kept({"layout": "asap"})
  for encoder in (run, shipped):
    assert "never checked for PercePiano's performances" in benchmark.unheld_out(encoder, rated)
  # The same directory spelled another way is the same directory.
  kept({"layout": "asap", "excluded_overlap": {"rated_dirs": [str(tmp_path / "x" / "..")
                                                              + "/percepiano"]}})
  for encoder in (run, shipped):
    assert benchmark.unheld_out(encoder, rated) is None
    assert "not " + str(tmp_path / "other") in benchmark.unheld_out(encoder, tmp_path / "other")
