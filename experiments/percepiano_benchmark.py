"""`make benchmark-percepiano`: the real benchmark, in resumable pieces sized for 2 CPU cores.

  python -m experiments.percepiano_benchmark --percepiano_dir=../shared/data/percepiano \
      --asap_dir=../shared/data/asap --workdir=out/benchmark [--only=STAGE,...] [--folds=0,1]

Stages (each a project CLI, logged, skipped when complete; a killed stage
resumes from its checkpoints on the next call, so the benchmark runs across
sessions; shards and checkpoints are rebuilt on a fresh machine, reports are
committed):

  asap_shards          ASAP performances (MAESTRO recordings as MIDI) -> MAESTRO job shards
  percepiano_shards    PercePiano rendered from its performance MIDI -> labelled shards
  pretrain_notes       notes-aware pre-training on the ASAP shards: the transcription head alone
  asap_mixed_shards    the ASAP performances again, each rendered with one of two SoundFonts
                       (TimGM6mb and --second_soundfont, drawn per performance)
  pretrain             SSAST pre-training on the two-timbre shards
  pretrain_both        the same run with the transcription head beside SSAST's losses
                       (nothing else differs: the objectives' ablation)
  pretrain_notes_mixed the notes-aware run continued on those two timbres (the encoder every
                       later stage uses)
  second_timbre_shards, unseen_timbre_shards, held_out_shards_<stem>
                       the held-out compositions rendered with the second SoundFont alone,
                       with --unseen_soundfont and with each of --held_out_soundfonts,
                       SoundFonts the encoder never hears
  transcription        eval.transcription_report: onset/offset/velocity/pedal F1 of every kept
                       checkpoint of both notes-aware runs on held-out ASAP compositions
                       (thresholds chosen on half of them), per timbre ->
                       REPORTS/transcription.json and the F1-vs-steps figure
  transcribe_percepiano  PercePiano's windows transcribed by that encoder (notes archive)
  percepiano_<kind>_timbre_shards, transcribe_percepiano_<kind>_timbre, cross_timbre
                       PercePiano rendered with the second and the unseen SoundFont and
                       transcribed; eval.cross_timbre: the audio ridge and the notes ridge
                       fitted on TimGM6mb renders, scored on each timbre's test set ->
                       REPORTS/cross_timbre.json
  embed_<encoder>      PercePiano embedded by a frozen encoder (random, ssast, both, notes)
  cv_<variant>         piece split, per variant:
                         ast          pre-trained AST, grouped heads, adaptive weights, augmentation
                         scratch      the same from random initialisation
                         flat         one flat head instead of the grouped heads
                         fixed        fixed (equal) loss weights instead of adaptive ones
                         noaug        trained on the clean variant only
                         cnn, ffn     the CNN and feed-forward (pooled statistics) baselines
                         ridge        the closed-form bar on clip statistics (train.ridge)
                         ffn_stats    the trainer's feed-forward model on the same statistics
                         oracle_notes the ridge on note statistics of the performance MIDI
                                      (what a perfect transcription gives: an upper bound)
                         notes        the oracle's ridge read from the encoder's own
                                      transcription (train.notes_from_midi)
                         notes_direct the ridge fitted on that transcription's statistics
                         fusion       notes beside the encoder's frozen embeddings
                         ast_stats    fusion plus the statistics of the transcription's
                                      probabilities and the ridge's audio statistics
                                      (backbone ast+stats: the AST-based model)
                         clip_attention, window_mean
                                      train.clip_head on the notes-aware encoder's frozen
                                      window embeddings (embed_notes keeps them): learned
                                      attention pooling over a performance's windows,
                                      against the same windows' scores averaged
                         ensemble     train.ensemble: the mean of ast_stats' and
                                      window_mean's predictions (the best of each family
                                      over the piece folds)
                         ensemble_ast_notes
                                      the mean of ast_stats' and ast_notes' (better still
                                      over the piece folds)
                         ensemble_notes
                                      the mean of ast_stats', notes' and fusion's (the
                                      best over the piece folds since notes is fitted on
                                      the MIDI)
                         selection    train.ensemble_selection: ast_stats and the members
                                      greedy selection adds from every audio-only model
                                      with folds, chosen on the split's own folds (each
                                      fold's on the others; the test set's on all)
                         probe_<enc>  the ridge on frozen embeddings of an encoder: random,
                                      ssast (pretrain), both (pretrain_both), notes
                                      (pretrain_notes_mixed)
                         ast_notes, ast_both
                                      the AST fine-tuned from the notes-aware encoder and
                                      from the SSAST+transcription one (beside `ast`)
  performer_<variant>  the performer split, for ast / cnn / ffn / ast_notes and the statistics
                       models
  report_<split>       eval.report of the AST against every variant finished so far
                       (the ones still pending are named in the report)
  summary              eval.report.summary: every finished model of both splits against the
                       ridge (Pearson per group, CI, R², paired difference), and the
                       objectives' ablation pairs head to head -> summary.json

`--size=cpu` (default) is the 2-core configuration: the tiny encoder (192 wide,
4 layers) on non-overlapping 5.12 s windows at stride 16 (8 x 32 patches), 500
SSAST steps (~25 min) and one fine-tuning epoch over the clean and noisy windows
(~270 steps, ~13 min for the test run); the AST, the notes-aware AST and both baselines are 4-fold
cross-validated on the piece split and then trained on all folds for the held-out
test set, while the ablations and the performer split run the test set alone
(`train.crossval --folds=none --test`). `FOLDS=none` runs the cross-validated
variants' test sets first, so the key comparisons land in one session.
`--size=base` prints the paper-scale run a TPU user would launch instead (10.24 s
windows, stride 10, AST base, 50 fine-tuning epochs, every variant cross-validated).
"""

from __future__ import annotations

import functools
import json
import pathlib
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags

from experiments import cpu_scale, stages
from model import release
from pipelines import entry_point
from pipelines.shards import records, tiled_windows
from train import rundir

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent

# name -> config overrides of the fine-tuning variant (on top of SIZES[size]["finetune"])
VARIANTS = {
    "ast": [],
    "scratch": ["--config.init.checkpoint="],
    "flat": ["--config.model.head=flat"],
    "fixed": ["--config.model.adaptive_weighting=False",
              "--config.model.loss_weights=timing=1,dynamics=1,expression=1"],
    "noaug": ["--config.input.augmented=False"],
    "cnn": ["--config.model.backbone=cnn", "--config.init.checkpoint="],
    "ffn": ["--config.model.backbone=pooled_stats", "--config.init.checkpoint="],
    # Fine-tuned from the notes-aware encoder instead of SSAST's (the side by side).
    "ast_notes": [],
    # ... and from the SSAST+transcription encoder (issue 25's fine-tuning side by side).
    "ast_both": [],
}
# The pre-training stage each variant fine-tunes from (default `pretrain`; none for the
# variants that clear `init.checkpoint`).
INIT_STAGES = {"ast_notes": "pretrain_notes_mixed", "ast_both": "pretrain_both"}
PERFORMER_VARIANTS = ("ast", "cnn", "ffn", "ast_notes")
# Display names in the reports (no commas: eval.report's --names is comma-separated).
NAMES = {"ast": "AST (SSAST pre-trained)", "scratch": "AST from scratch", "flat": "AST flat head",
         "fixed": "AST fixed loss weights", "noaug": "AST without augmentation",
         "ast_notes": "AST (notes-aware pre-trained)",
         "ast_both": "AST (SSAST+transcription pre-trained)",
         "cnn": "CNN baseline", "ffn": "feed-forward baseline", "ridge": "ridge on clip statistics",
         "ffn_stats": "feed-forward on clip statistics",
         "oracle_notes": "oracle-notes (performance MIDI statistics: an upper bound)",
         "notes": "notes (MIDI-fitted ridge read from the encoder's transcription)",
         "notes_direct": "notes fitted on the transcription's own statistics",
         "probe_random": "probe of a random encoder", "probe_ssast": "probe of the SSAST encoder",
         "probe_notes": "probe of the notes-aware encoder",
         "probe_both": "probe of the SSAST+transcription encoder",
         "fusion": "fusion (transcription statistics + notes-aware embeddings)",
         "ast_stats": "AST+stats (notes-aware encoder: transcription and embeddings; "
                      "audio statistics)",
         "clip_attention": "clip head: attention over the notes-aware window embeddings",
         "window_mean": "clip head: the same windows averaged",
         "ensemble": "ensemble: AST+stats and the window-averaging clip head",
         "ensemble_ast_notes": "ensemble: AST+stats and the notes-aware AST fine-tuned",
         "ensemble_notes": "ensemble: AST+stats with the notes model and fusion",
         "selection": "ensemble selection: AST+stats and members chosen on the folds"}
# Models on clip statistics (train.statistics_table), every fold and the test set on both
# splits at every size: minutes on 2 cores. oracle_notes is the notes path's ceiling; notes
# its model (the oracle's ridge, fitted on the MIDI's statistics, read through their estimate
# from the notes-aware encoder's transcription: train.notes_from_midi); notes_direct the
# ablation (the ridge fitted on the transcription's own statistics, the notes model until
# 2026-12-05); fusion puts that encoder's frozen embeddings beside the notes statistics;
# ast_stats adds the statistics of the transcription's probabilities and the ridge's audio
# statistics: the AST-based model the closed-form bar is measured against.
STATISTICS_MODELS = ("ridge", "ffn_stats", "oracle_notes", "notes", "notes_direct", "fusion",
                     "ast_stats")
# Probes: the ridge on frozen, clip-pooled embeddings of each encoder (eval.shard_embeddings),
# and the pre-training run each is embedded with (random: the notes-aware run's shape,
# randomly initialised).
PROBES = {"random": "pretrain_notes_mixed", "ssast": "pretrain", "both": "pretrain_both",
          "notes": "pretrain_notes_mixed"}
# The objectives' ablation (issue 25 item 5): `pretrain` (SSAST alone) and `pretrain_both`
# (SSAST + the transcription head) differ in nothing else: same shards, steps, batch, seed
# and schedule. The pairs compared head to head in summary.json (eval.report.summary --pairs).
PAIRS = (("probe_both", "probe_ssast"), ("ast_both", "ast"))
# Clip-level heads (train.clip_head) on the window embeddings of one probe's encoder: the
# run directory of each pooling (issue 19's clip-level model and its window-averaging twin).
CLIP_HEAD_ENCODER = "notes"
CLIP_HEADS = {"attention": "clip_attention", "mean": "window_mean"}
# Perception across timbres (eval.cross_timbre): the audio bar, the notes model, AST+stats.
CROSS_TIMBRE_MODELS = ("ridge", "notes", "ast_stats")
# The ensembles (train.ensemble): the mean of their members' predictions, each chosen on the
# piece folds alone (the test sets played no part). `ensemble`: AST+stats, the best
# statistics model there, and window averaging, the better clip head (0.324 against
# attention's 0.289). `ensemble_ast_notes`: AST+stats and the AST fine-tuned end to end
# from the notes-aware encoder (0.504 over the piece folds against `ensemble`'s 0.467).
# `ensemble_notes`: AST+stats, the notes model and fusion, the best of every pair and triple
# of AST+stats, notes, fusion, window averaging and the fine-tuned AST over the piece folds
# once the notes model was fitted on the MIDI (0.532; AST+stats and notes alone 0.531).
ENSEMBLES = {"ensemble": ("ast_stats", "window_mean"),
             "ensemble_ast_notes": ("ast_stats", "ast_notes"),
             "ensemble_notes": ("ast_stats", "notes", "fusion")}
# Ensemble selection (train.ensemble_selection): AST+stats and the members greedy forward
# selection adds, chosen on each split's own folds (fold k's on the others, the test set's on
# all). The candidates are every audio-only model that runs every fold of both splits at every
# size (oracle_notes reads the MIDI; the fine-tuned ASTs have folds on the piece split alone at
# --size=cpu), so both splits choose from the same library.
SELECTION_LEAD = "ast_stats"
SELECTION_CANDIDATES = (*(m for m in STATISTICS_MODELS if m != "oracle_notes"),
                        *(f"probe_{e}" for e in PROBES), *CLIP_HEADS.values())

SIZES = {
    "cpu": {
        # Windows do not overlap: on 2 cores the budget is steps, and overlapping
        # windows would make each epoch longer with little new audio per step.
        "window": ["--window_s=5.12", "--hop_s=5.12"],
        "encoder": cpu_scale.encoder(512),
        # 200 of 256 patches masked, SSAST's ratio (400 of 512).
        "pretrain": ["--config=train/configs/pretrain.py:tiny", "--config.model.num_masked=200",
                     "--config.num_steps=500", "--config.eval_every_steps=0",
                     *cpu_scale.PRETRAIN],
        "pretrain_notes": [*cpu_scale.NOTES_PRETRAIN, "--config.num_steps=3000"],
        # Continued on two timbres: a fresh warm-up and cosine schedule.
        "pretrain_notes_mixed": [*cpu_scale.NOTES_PRETRAIN, "--config.num_steps=2000"],
        "finetune": ["--config=train/configs/finetune.py:tiny", "--config.num_epochs=1",
                     *cpu_scale.finetune(512)],
        # ast_notes too: `ensemble_ast_notes` averages its fold predictions.
        "cross_validated": {"piece": ("ast", "cnn", "ffn", "ast_notes")},
        "variants": {"cnn": cpu_scale.SMALL_CNN},  # on top of VARIANTS
        # In the report, so a missed target reads as this budget, not as a ceiling.
        "scale": "Scale: the 2-core configuration, not the paper's: the tiny AST (4 layers, "
                 "width 192) on 5.12 s windows, 500 SSAST pre-training steps on the ASAP "
                 "renders, one fine-tuning epoch per run; the ablations and the performer split "
                 "run the held-out test set alone. The Pearson >= 0.7 targets are the full "
                 "system's; `--size=base` prints the paper-scale run for a TPU.",
    },
    "base": {
        # AST's window, spelled out (the jobs' default) so finished shards made with
        # the cpu windows in the same work directory are refused, not reused.
        "window": ["--window_s=10.24", "--hop_s=10.24"],
        "encoder": [],
        "pretrain": ["--config=train/configs/pretrain.py:base"],
        "pretrain_notes": ["--config=train/configs/pretrain.py:base",
                           "--config.model.transcription_weight=1"],
        "pretrain_notes_mixed": ["--config=train/configs/pretrain.py:base",
                                 "--config.model.transcription_weight=1"],
        "finetune": ["--config=train/configs/finetune.py:base",
                     "--config.optimizer.layer_decay=0.75"],
        "cross_validated": {"piece": tuple(VARIANTS), "performer": PERFORMER_VARIANTS},
        "scale": "Scale: the paper's (AST base on 10.24 s windows, SSAST pre-training, 50 "
                 "fine-tuning epochs, every variant cross-validated).",
    },
}


def define_flags() -> None:
  flags.DEFINE_string("percepiano_dir", "../shared/data/percepiano", "The PercePiano release.")
  flags.DEFINE_string("asap_dir", "../shared/data/asap", "The ASAP tree (MAESTRO as MIDI).")
  flags.DEFINE_string("workdir", "out/benchmark", "Shards, runs and logs.")
  flags.DEFINE_string("report_dir", None, "Where the reports go, one directory per split "
                      "(default WORKDIR/reports; `make benchmark-percepiano`: reports/benchmark, "
                      "committed).")
  flags.DEFINE_enum("size", "cpu", sorted(SIZES), "cpu: sized for 2 cores; base: the paper.")
  flags.DEFINE_list("only", [], "Run only these stages (default: all).")
  flags.DEFINE_string("folds", "", "Cross-validation folds to run now (default: all). At "
                      "--size=cpu only the cross-validated variants (piece split: ast, cnn, "
                      "ffn) have folds; the others run the test set alone.")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
  flags.DEFINE_string("second_soundfont", SECOND_SOUNDFONT, "The second SoundFont of the "
                      "notes-aware run's continuation (Debian: fluid-soundfont-gm).")
  flags.DEFINE_string("unseen_soundfont", UNSEEN_SOUNDFONT, "A SoundFont the encoders never "
                      "hear in training (Debian: musescore-general-soundfont-lossless): the "
                      "held-out ASAP compositions rendered with it test transcription across "
                      "timbres. Empty: skip that test.")
  flags.DEFINE_list("held_out_soundfonts", list(HELD_OUT_SOUNDFONTS), "More SoundFonts the "
                    "encoders never hear, for the transcription report alone: the held-out "
                    "ASAP compositions rendered with each (Debian: csound-soundfont). Empty: "
                    "none.")
  flags.DEFINE_string("notes_encoder", None, "A transcriber release (release/transcriber) or "
                      "finished notes-aware run to use instead of pre-training one: drops the "
                      "notes-aware pre-training stages and the transcription report.")
  flags.DEFINE_integer("jobs", 1, "Stages to run at once when their inputs are ready (2 on "
                       "2 cores: 1.3x the training throughput of one at a time).", lower_bound=1)


# Debian's fluid-soundfont-gm: FluidR3, the second timbre the notes-aware encoder trains on.
SECOND_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
# Debian's musescore-general-soundfont-lossless (the lossy .sf3 packages are Ogg-compressed,
# which the renderer does not read): MuseScore General, a piano no encoder hears in training.
UNSEEN_SOUNDFONT = "/usr/share/sounds/sf2/MuseScore_General_Full.sf2"
# Debian's csound-soundfont (4 MB): csound's GM bank, a second piano never heard, scored by
# the transcription report only (MuseScore's is the one the perception models are tested on).
HELD_OUT_SOUNDFONTS = ("/usr/share/sounds/sf2/sf_GMbank.sf2",)


def plan(percepiano_dir: pathlib.Path, asap_dir: pathlib.Path, work: pathlib.Path, size: str,
         folds: str = "", reports: pathlib.Path | None = None,
         unseen_soundfont: str = UNSEEN_SOUNDFONT,
         second_soundfont: str = SECOND_SOUNDFONT,
         notes_encoder: pathlib.Path | None = None,
         held_out_soundfonts: Sequence[str] = HELD_OUT_SOUNDFONTS) -> list[stages.Stage]:
  """The stages; reports go to `reports/<split>` (default WORK/reports). The notes-aware
  run is continued on TimGM6mb + `second_soundfont`; with `unseen_soundfont` (empty: none)
  the held-out ASAP compositions are also rendered with it and the transcription report
  scores them with every other timbre, and those of each of `held_out_soundfonts`.

  `notes_encoder` (a transcriber release, e.g. release/transcriber, or a finished run) stands
  in for `pretrain_notes_mixed`: on a fresh machine the stages after it (transcription of
  PercePiano, embeddings, probes, AST+stats, clip heads, the ensemble, `ast_notes`) then run
  in minutes instead of after hours of pre-training. The notes-aware pre-training stages and
  the transcription report (which scores a run's kept checkpoints) leave the plan."""
  s = SIZES[size]
  # No pre-training job renders a composition that holds a rated performance
  # (pipelines.datasets.overlap: 52 PercePiano excerpts are cut from ASAP performances).
  unrated = (f"--exclude_overlap_with={percepiano_dir}",)

  def pretraining_job_finished(directory: pathlib.Path) -> bool:
    return stages.job_finished(directory, {**stages.window_flags(s["window"]),
                                           "exclude_overlap_with": [str(percepiano_dir)]})

  asap, labelled, pretrain = work / "shards" / "asap", work / "shards" / "percepiano", work / "pretrain"
  mixed = work / "shards" / "asap_mixed"
  # SSAST alone and SSAST + transcription on the two-timbre shards the notes-aware encoder
  # also hears, so the probes compare objectives, not data.
  def ssast_args(workdir: pathlib.Path, *extra: str) -> tuple[str, ...]:
    return ("train.main", *s["pretrain"], *extra, f"--workdir={workdir}",
            f"--config.data_dir={mixed}", *s["encoder"])

  pretrain_args = ssast_args(pretrain)
  both_args = ssast_args(work / "pretrain_both", "--config.model.transcription_weight=1")
  notes_pretrain = work / "pretrain_notes"
  notes_run = notes_encoder or work / "pretrain_notes_mixed"
  # The stage the notes-aware encoder comes from (none when it is given).
  notes_needs = () if notes_encoder else ("transcription",)
  notes_args = ("train.main", *s["pretrain_notes"], f"--workdir={notes_pretrain}",
                f"--config.data_dir={asap}", *s["encoder"])
  mixed_args = ("train.main", *s["pretrain_notes_mixed"], f"--workdir={notes_run}",
                f"--config.data_dir={mixed}", f"--config.init.checkpoint={notes_pretrain}",
                *s["encoder"])
  transcribed = work / "transcribed_notes.npz"
  report_root = reports or work / "reports"

  def held_out(font: str) -> pathlib.Path:
    return work / "shards" / f"asap_{pathlib.Path(font).stem}"

  # Other renders of the held-out compositions the report scores: TimGM6mb's own, the
  # second SoundFont's, and the unseen one's.
  extra = [(f"held_out_shards_{pathlib.Path(font).stem}", font, "another unseen")
           for font in held_out_soundfonts]
  if len({name for name, _, _ in extra}) < len(extra):
    raise ValueError(f"held-out SoundFonts need distinct file names: {list(held_out_soundfonts)}")
  timbres = [asap, held_out(second_soundfont), *([held_out(unseen_soundfont)]
                                                 if unseen_soundfont else []),
             *(held_out(font) for _, font, _ in extra)]
  timbre_stages = ("second_timbre_shards", *(("unseen_timbre_shards",) if unseen_soundfont
                                             else ()), *(name for name, _, _ in extra))
  out = [
      stages.Stage("asap_shards", ("pipelines.beam.maestro_job", f"--maestro_dir={asap_dir}",
                                   f"--output_dir={asap}", *s["window"], "--nowrite_audio",
                                   *unrated),
                   lambda: pretraining_job_finished(asap),
                   "ASAP MIDI rendered -> pre-training shards"),
      stages.Stage("asap_mixed_shards",
                   ("pipelines.beam.maestro_job", f"--maestro_dir={asap_dir}",
                    f"--output_dir={mixed}", *s["window"], "--nowrite_audio",
                    f"--soundfonts=default,{second_soundfont}", *unrated),
                   lambda: pretraining_job_finished(mixed),
                   f"ASAP MIDI rendered with TimGM6mb or {pathlib.Path(second_soundfont).name} "
                   "-> two-timbre pre-training shards"),
      stages.Stage("percepiano_shards", ("pipelines.beam.percepiano_job", f"--percepiano_dir={percepiano_dir}",
                                         f"--output_dir={labelled}", *s["window"],
                                         "--variants=1", "--augment=noise"),
                   # With its clean audio and note targets (schema 2): the ridges' statistics
                   # are computed from them.
                   lambda: stages.job_finished(
                       labelled, {**stages.window_flags(s["window"]), "write_audio": True},
                       records.NOTES_SINCE),
                   "PercePiano rendered -> labelled shards"),
      # A finished pre-training of another length (an older plan's) is refused, not reused.
      stages.training("pretrain", pretrain, pretrain_args, "SSAST pre-training",
                      needs=("asap_mixed_shards",)),
      stages.training("pretrain_both", work / "pretrain_both", both_args,
                      "SSAST + transcription pre-training (the objectives' ablation)",
                      needs=("asap_mixed_shards",)),
      stages.training("pretrain_notes", notes_pretrain, notes_args,
                      "notes-aware pre-training (transcription head)", needs=("asap_shards",)),
      stages.training("pretrain_notes_mixed", notes_run, mixed_args,
                      "notes-aware pre-training continued on two timbres",
                      needs=("pretrain_notes", "asap_mixed_shards")),
  ]
  # The held-out compositions only, clean (no augmented copies): test sets, not training.
  for name, font, what in (("second_timbre_shards", second_soundfont, "the second"),
                           ("unseen_timbre_shards", unseen_soundfont, "an unseen"), *extra):
    if font:
      directory = held_out(font)
      out.append(stages.Stage(
          name, ("pipelines.beam.maestro_job", f"--maestro_dir={asap_dir}",
                 f"--output_dir={directory}", *s["window"], "--nowrite_audio",
                 f"--soundfont={font}", "--only_splits=validation", "--variants=0", *unrated),
          lambda d=directory: pretraining_job_finished(d),
          f"held-out ASAP compositions rendered with {pathlib.Path(font).name} ({what} timbre)"))
  out += [
      # Every kept checkpoint of both notes-aware runs scored on held-out ASAP compositions;
      # the thresholds chosen there are saved in the runs for the next stages.
      stages.Stage("transcription", ("eval.transcription_report", f"--checkpoint={notes_run}",
                                     f"--data_dir={mixed}", f"--output_dir={report_root}",
                                     f"--timbres={','.join(map(str, timbres))}"),
                   lambda: _transcription_reported(report_root / "transcription.json",
                                                   notes_run, len(timbres)),
                   "transcription F1 against pre-training steps, per timbre",
                   needs=("pretrain_notes_mixed", "asap_shards", *timbre_stages)),
      stages.Stage("transcribe_percepiano",
                   ("eval.shard_transcription", f"--checkpoint={notes_run}",
                    f"--data_dir={labelled}", f"--output={transcribed}"),
                   lambda: _transcribed(transcribed, notes_run),
                   "PercePiano transcribed by the notes-aware encoder",
                   needs=(*notes_needs, "percepiano_shards")),
  ]
  if notes_encoder:
    # The two-timbre shards stay: the SSAST runs read them.
    replaced = {"pretrain_notes", "pretrain_notes_mixed", "transcription"}
    out = [st for st in out if st.name not in replaced]
  # Perception across timbres: PercePiano rendered (clean) with the second SoundFont and the
  # unseen one, transcribed by the same encoder; eval.cross_timbre fits the audio ridge and
  # the notes ridge on the TimGM6mb renders and scores every timbre's test set.
  other_jobs, other_archives, other_vectors, other_stages = [], [], [], []
  for kind, font in (("second", second_soundfont), ("unseen", unseen_soundfont)):
    if not font:
      continue
    stem = pathlib.Path(font).stem
    directory, archive = work / "shards" / f"percepiano_{stem}", work / f"transcribed_notes_{stem}.npz"
    out += [
        stages.Stage(f"percepiano_{kind}_timbre_shards",
                     ("pipelines.beam.percepiano_job", f"--percepiano_dir={percepiano_dir}",
                      f"--output_dir={directory}", *s["window"], "--variants=0",
                      f"--soundfont={font}"),
                     lambda d=directory: stages.job_finished(
                         d, {**stages.window_flags(s["window"]), "write_audio": True},
                         records.NOTES_SINCE),
                     f"PercePiano rendered with {pathlib.Path(font).name} ({kind} timbre)"),
        stages.Stage(f"transcribe_percepiano_{kind}_timbre",
                     ("eval.shard_transcription", f"--checkpoint={notes_run}",
                      f"--data_dir={directory}", f"--output={archive}"),
                     lambda a=archive: _transcribed(a, notes_run),
                     f"PercePiano ({kind} timbre) transcribed by the notes-aware encoder",
                     needs=(*notes_needs, f"percepiano_{kind}_timbre_shards"))]
    # AST+stats reads the same encoder's clip embeddings of that timbre's audio too.
    vectors = work / f"embeddings_notes_{stem}.npz"
    out.append(stages.Stage(
        f"embed_percepiano_{kind}_timbre",
        ("eval.shard_embeddings", f"--checkpoint={notes_run}", f"--data_dir={directory}",
         f"--output={vectors}"),
        lambda v=vectors: _embedded(v, notes_run, False),
        f"PercePiano ({kind} timbre) embedded by the notes-aware encoder (frozen)",
        needs=(*(() if notes_encoder else ("pretrain_notes_mixed",)),
               f"percepiano_{kind}_timbre_shards")))
    other_jobs.append(directory)
    other_archives.append(archive)
    other_vectors.append(vectors)
    other_stages += [f"transcribe_percepiano_{kind}_timbre", f"embed_percepiano_{kind}_timbre"]
  embeddings = {encoder: work / f"embeddings_{encoder}.npz" for encoder in PROBES}
  window_embeddings = work / f"window_embeddings_{CLIP_HEAD_ENCODER}.npz"
  for encoder, run in PROBES.items():
    given = notes_encoder and run == "pretrain_notes_mixed"
    run_dir = notes_run if given else work / run
    random_init = ("--random_init",) if encoder == "random" else ()
    # The notes-aware encoder's windows are kept one by one too: the clip heads pool them.
    per_window = ((f"--windows_output={window_embeddings}",) if encoder == CLIP_HEAD_ENCODER
                  else ())
    out.append(stages.Stage(
        f"embed_{encoder}", ("eval.shard_embeddings", f"--checkpoint={run_dir}",
                             f"--data_dir={labelled}", f"--output={embeddings[encoder]}",
                             *random_init, *per_window),
        lambda e=encoder, r=run_dir, w=per_window: (
            _embedded(embeddings[e], r, e == "random")
            and (not w or _embedded(window_embeddings, r, False, windows=True))),
        f"PercePiano embedded by the {encoder} encoder (frozen)",
        needs=(*(() if given else (run,)), "percepiano_shards")))

  if other_jobs:
    cross = report_root / "cross_timbre.json"
    out.append(stages.Stage(
        "cross_timbre", ("eval.cross_timbre", f"--train_data={labelled}",
                         f"--test_data={','.join(map(str, other_jobs))}",
                         f"--models={','.join(CROSS_TIMBRE_MODELS)}",
                         f"--transcribed_notes={transcribed}",
                         f"--test_transcribed_notes={','.join(map(str, other_archives))}",
                         f"--embeddings={work / f'embeddings_{CLIP_HEAD_ENCODER}.npz'}",
                         f"--test_embeddings={','.join(map(str, other_vectors))}",
                         f"--cache_dir={work / 'cross_timbre'}", f"--output={cross}"),
        lambda: _cross_timbre_reported(cross, notes_run),
        "perception models fitted on TimGM6mb renders, tested on other timbres",
        needs=("transcribe_percepiano", f"embed_{CLIP_HEAD_ENCODER}", *other_stages)))

  def variant_folds(split: str, variant: str) -> str:
    # The 2-core size cross-validates the headline models only; the ablations (and the
    # performer split) train on every fold and are compared on the held-out test set.
    return folds if variant in s["cross_validated"].get(split, ()) else "none"

  def cross_validation(split: str, variant: str) -> stages.Stage:
    directory = work / split / variant
    run_folds = variant_folds(split, variant)
    init = INIT_STAGES.get(variant, "pretrain")
    given = notes_encoder and init == "pretrain_notes_mixed"
    args = ["train.crossval", *s["finetune"], f"--workdir={directory}", f"--split={split}",
            f"--config.data_dir={labelled}",
            f"--config.init.checkpoint={notes_run if given else work / init}",
            *s["encoder"], *VARIANTS[variant], *s.get("variants", {}).get(variant, []), "--test"]
    if run_folds:
      args.append(f"--folds={run_folds}")
    # The variants trained from scratch (an empty init.checkpoint) do not wait for one.
    pretrained = "--config.init.checkpoint=" not in VARIANTS[variant]
    return stages.Stage(f"{'cv' if split == 'piece' else 'performer'}_{variant}", tuple(args),
                        lambda: _crossval_finished(directory, run_folds, args),
                        f"{split} split, {variant}",
                        needs=("percepiano_shards",
                               *((init,) if pretrained and not given else ())))

  # One statistics cache for every run on them; the piece ridge fills it, the others wait.
  statistics = work / "clip_statistics.npz"

  def closed_form(split: str, model: str, features: tuple[str, ...], cache: pathlib.Path,
                  inputs: str | tuple[str, ...], what: str) -> stages.Stage:
    """A `train.ridge` stage: every fold and the test set, in minutes (statistics cached in
    `cache`). The piece split's run fills the cache after the `inputs` stages; the
    performer split's waits for it."""
    directory = work / split / model
    kind = "cv" if split == "piece" else "performer"
    return stages.Stage(f"{kind}_{model}",
                        ("train.ridge", f"--data_dir={labelled}", f"--workdir={directory}",
                         f"--split={split}", *features, f"--statistics_cache={cache}", "--test"),
                        lambda: _crossval_finished(directory), f"{split} split, {what}",
                        needs=((inputs,) if isinstance(inputs, str) else inputs)
                        if split == "piece" else (f"cv_{model}",))

  def ridge(split: str) -> stages.Stage:
    # The closed-form bar on the clip statistics of the audio.
    return closed_form(split, "ridge", (), statistics, "percepiano_shards", "ridge")

  def oracle_notes(split: str) -> stages.Stage:
    # The same ridge on the note statistics of the performance MIDI the shards store.
    return closed_form(split, "oracle_notes", ("--features=midi_notes",),
                       work / "note_statistics.npz", "percepiano_shards", "oracle-notes")

  def notes_model(split: str, fit: str = "midi") -> stages.Stage:
    # The oracle's ridge read from the encoder's own transcription (fit "midi"), or the
    # ridge fitted on the transcription's statistics themselves (fit "transcription").
    # Both read the MIDI statistics' cache the oracle's runs fill (needed by "midi").
    return closed_form(split, "notes" if fit == "midi" else "notes_direct",
                       ("--features=notes", f"--transcribed_notes={transcribed}",
                        f"--notes_fit={fit}"),
                       work / "transcribed_note_statistics.npz",
                       ("transcribe_percepiano", "cv_oracle_notes"),
                       "notes" if fit == "midi" else "notes fitted on the transcription")

  def fusion(split: str) -> stages.Stage:
    # The transcription's statistics and the same encoder's frozen embeddings side by side.
    return closed_form(split, "fusion", ("--features=fusion", f"--transcribed_notes={transcribed}",
                                         f"--embeddings={embeddings['notes']}"),
                       work / "fusion_table.npz", ("transcribe_percepiano", "embed_notes"),
                       "fusion")

  def ast_stats(split: str) -> stages.Stage:
    # Everything the notes-aware AST gives (its transcription's statistics, those of its
    # probabilities, its frozen embeddings) beside the audio statistics of the ridge.
    return closed_form(split, "ast_stats", ("--features=ast_stats",
                                            f"--transcribed_notes={transcribed}",
                                            f"--embeddings={embeddings['notes']}"),
                       work / "ast_stats_table.npz", ("transcribe_percepiano", "embed_notes"),
                       "AST+stats")

  def clip_head(split: str, pooling: str) -> stages.Stage:
    # A head on the notes-aware encoder's frozen window embeddings: learned pooling over a
    # performance's windows against window averaging.
    name = CLIP_HEADS[pooling]
    directory = work / split / name
    return stages.Stage(
        f"{'cv' if split == 'piece' else 'performer'}_{name}",
        ("train.clip_head", f"--data_dir={labelled}", f"--windows={window_embeddings}",
         f"--workdir={directory}", f"--split={split}", f"--pooling={pooling}", "--test"),
        lambda: _crossval_finished(directory), f"{split} split, {NAMES[name]}",
        needs=(f"embed_{CLIP_HEAD_ENCODER}",))

  def ensemble(split: str, name: str) -> stages.Stage:
    # Two models together: the mean of their predictions, on the folds its fine-tuned member
    # runs now (the statistics models run every fold): the test set alone where that member
    # does, `--folds` where it is cross-validated.
    directory = work / split / name
    kind = "cv" if split == "piece" else "performer"
    members = ENSEMBLES[name]
    member_folds = [variant_folds(split, m) for m in members if m in VARIANTS]
    run_folds = "none" if "none" in member_folds else next(iter(member_folds), "")
    return stages.Stage(
        f"{kind}_{name}",
        ("train.ensemble", f"--data_dir={labelled}",
         f"--members={','.join(str(work / split / m) for m in members)}",
         f"--workdir={directory}", f"--split={split}", "--test",
         *((f"--folds={run_folds}",) if run_folds else ())),
        lambda: _combination_finished(directory, run_folds),
        f"{split} split, {NAMES[name]}", needs=tuple(f"{kind}_{m}" for m in members))

  def selection(split: str) -> stages.Stage:
    directory = work / split / "selection"
    kind = "cv" if split == "piece" else "performer"
    return stages.Stage(
        f"{kind}_selection",
        ("train.ensemble_selection", f"--data_dir={labelled}",
         f"--candidates={','.join(str(work / split / m) for m in SELECTION_CANDIDATES)}",
         f"--lead={work / split / SELECTION_LEAD}", f"--workdir={directory}",
         f"--split={split}", "--test"),
        lambda: _combination_finished(directory), f"{split} split, {NAMES['selection']}",
        needs=tuple(f"{kind}_{m}" for m in SELECTION_CANDIDATES))

  def probe(split: str, encoder: str) -> stages.Stage:
    # The same ridge on an encoder's frozen embeddings.
    return closed_form(split, f"probe_{encoder}",
                       ("--features=embeddings", f"--embeddings={embeddings[encoder]}"),
                       work / f"embedding_table_{encoder}.npz", f"embed_{encoder}",
                       f"{encoder} probe")

  def statistics_ffn(split: str) -> stages.Stage:
    # The trainer on the ridge's own inputs: the check that the recipe and loop can reach
    # the closed-form fit. Early stopping: every fold, then the test set.
    directory = work / split / "ffn_stats"
    args = ("train.crossval", *cpu_scale.STATS_FFN, f"--workdir={directory}", f"--split={split}",
            f"--config.data_dir={labelled}", f"--config.clip_statistics_cache={statistics}",
            "--test")
    return stages.Stage(f"{'cv' if split == 'piece' else 'performer'}_ffn_stats", args,
                        lambda: _crossval_finished(directory, "", list(args)),
                        f"{split} split, feed-forward on clip statistics", needs=("cv_ridge",))

  # Each split's report follows (and needs) its own runs only, so a failing performer
  # run cannot hold back the piece split's report.
  all_runs = []
  for split, variants in (("piece", list(VARIANTS)), ("performer", list(PERFORMER_VARIANTS))):
    runs = [cross_validation(split, v) for v in variants] + [
        ridge(split), statistics_ffn(split), oracle_notes(split), notes_model(split),
        notes_model(split, "transcription"), fusion(split), ast_stats(split),
        *(probe(split, encoder) for encoder in PROBES),
        *(clip_head(split, pooling) for pooling in CLIP_HEADS),
        *(ensemble(split, name) for name in ENSEMBLES), selection(split)]
    variants = [*variants, *STATISTICS_MODELS, *(f"probe_{e}" for e in PROBES),
                *CLIP_HEADS.values(), *ENSEMBLES, "selection"]
    out += runs
    report_dir = report_root / split
    out.append(stages.Stage(
        f"report_{split}", functools.partial(_report_command, work, split, variants,
                                             percepiano_dir, labelled, report_dir, s["scale"]),
        lambda d=report_dir: (d / "report.json").is_file(), f"report, {split} split", always=True,
        needs=tuple(r.name for r in runs)))
    all_runs += runs
  # Every model of both splits against the ridge, in one file (what the issues' goals read).
  summary = report_root / "summary.json"
  out.append(stages.Stage(
      "summary", ("eval.report.summary", f"--runs_dir={work}", f"--output={summary}",
                  f"--pairs={','.join(f'{a}:{b}'.replace('_', '-') for a, b in PAIRS)}"),
      summary.is_file, "summary: every model against the ridge", always=True,
      needs=tuple(r.name for r in all_runs)))
  return out


def _report_command(work: pathlib.Path, split: str, variants: list[str],
                    percepiano_dir: pathlib.Path, labelled: pathlib.Path,
                    report_dir: pathlib.Path, scale: str) -> tuple[str, ...]:
  """eval.report of the AST against every variant with a finished evaluation so far.

  The benchmark runs over several sessions, so a report may be built before every
  variant ran: those are named in a note (never silently absent), with each
  variant's runs and training wall time.
  """
  if not _has_results(work / split / "ast"):
    raise stages.StageError(f"report_{split}: the AST ({work / split / 'ast'}) has no finished "
                            "evaluation yet")
  ready = [v for v in variants if v == "ast" or _has_results(work / split / v)]
  pending = [NAMES[v] for v in variants if v not in ready]
  notes = [f"--note={scale}", "--note=Finished runs and their training wall time: "
           + "; ".join(_wall_time(work / split / v, NAMES[v]) for v in ready) + "."]
  if pending:
    notes.append(f"--note=Not run yet (pending stages of the benchmark): {', '.join(pending)}.")
  if "selection" in ready:
    notes.append(f"--note={_selection_note(work / split / 'selection')}")
  return ("eval.report", f"--workdir={work / split / 'ast'}",
          f"--compare={','.join(str(work / split / v) for v in ready if v != 'ast')}",
          f"--names={','.join(NAMES[v] for v in ready)}", f"--percepiano_dir={percepiano_dir}",
          f"--output_dir={report_dir}", "--target_pearson=0.7", "--target_gain=0.2",
          f"--attention_audio={stages.first_test_midi(percepiano_dir, labelled, split)}", *notes)


def _selection_note(directory: pathlib.Path) -> str:
  """What ensemble selection chose, side by side: the members (run directory names) and their
  weights, the sides that chose alike together."""
  chosen: dict[str, list[str]] = {}
  for result in sorted(directory.glob("*/result.json")):
    weights = json.loads(result.read_text()).get("weights")
    if not weights:
      continue
    side = result.parent.name
    # Heaviest first, then by name: the same choice reads the same whatever order it was made in.
    members = ", ".join(f"{name} {w:.2f}" for name, w in sorted(
        ((pathlib.Path(m).name, w) for m, w in weights.items()), key=lambda nw: (-nw[1], nw[0])))
    chosen.setdefault(members, []).append(side)

  def named(sides: list[str]) -> str:
    folds = [side.removeprefix("fold") for side in sides if side != "test"]
    parts = [f"fold{'s' if len(folds) > 1 else ''} {', '.join(folds)}"] if folds else []
    return " and ".join(parts + (["the test set"] if "test" in sides else []))

  return ("Ensemble selection's members and weights (each fold's chosen on the other folds, "
          "the test set's on all): " + "; ".join(f"{named(sides)}: {members}"
                                                 for members, sides in chosen.items()) + ".")


def _last_step(workdir: pathlib.Path) -> int | None:
  """A finished run's last step, or a release's own step."""
  about = workdir / "release.json"  # model.release.ABOUT (not imported: it loads JAX)
  if about.is_file():
    return int(json.loads(about.read_text())["step"])
  result = rundir.read_result(workdir)
  return result["step"] if result and rundir.finished(result) else None


def _transcription_reported(path: pathlib.Path, pretrain: pathlib.Path, timbres: int) -> bool:
  """Done when the report scored the pre-training run's last step, and `timbres` others."""
  if not path.is_file():
    return False
  scored = json.loads(path.read_text())
  final = scored["final"]
  return (scored["checkpoint"] == str(pretrain) and final.get("run_step") == _last_step(pretrain)
          and len(final.get("timbres", {})) == timbres)


def _cross_timbre_reported(path: pathlib.Path, pretrain: pathlib.Path) -> bool:
  """Done when the report has every model and every transcription it read came from the
  run's last step."""
  if not path.is_file():
    return False
  report = json.loads(path.read_text())
  steps = {t.get("step") for t in report.get("transcriptions", [])}
  return (steps == {_last_step(pretrain)}
          and set(report.get("models", {})) == set(CROSS_TIMBRE_MODELS))


def _tiled_whole(about: dict) -> bool:
  """Made by the tiling that keeps every window (archives and tables from before it miss
  some: `pipelines.shards.tiled_windows.TILING`)."""
  return about.get("tiling") == tiled_windows.TILING


def _transcribed(path: pathlib.Path, pretrain: pathlib.Path) -> bool:
  """Done when the archive was transcribed with the run's last step, by the whole-frame
  tiling, and carries the statistics of its probabilities (`ast_stats` reads them)."""
  if not path.is_file():
    return False
  from pipelines.audio import notes
  try:
    notes.load_posteriors(path)
  except notes.NotesError:
    return False
  about = notes.load_archive(path)[2]
  return about["step"] == _last_step(pretrain) and _tiled_whole(about)


def _embedded(path: pathlib.Path, pretrain: pathlib.Path, random_init: bool,
              windows: bool = False) -> bool:
  """Done when the table (`windows`: of window vectors) was embedded with the run's last
  step (or its random twin)."""
  if not path.is_file():
    return False
  from train import statistics_table
  about = (statistics_table.load_windows if windows else statistics_table.load_vectors)(path)[1]
  return _tiled_whole(about) and (about["random_init"] if random_init
                                  else about["step"] == _last_step(pretrain))


def _has_results(directory: pathlib.Path) -> bool:
  from train import crossval
  try:
    return any(crossval.available_sets(directory).values())
  except FileNotFoundError:
    return False


def _wall_time(directory: pathlib.Path, name: str) -> str:
  """The finished runs of a cross-validation and their training time, from the run
  directories' results (as `_crossval_finished` decides)."""
  from train import crossval
  runs = [*crossval.read_summary(directory)["folds"], crossval.TEST]
  results = {k: rundir.read_result(crossval.fold_dir(directory, k)) for k in runs}
  done = [k for k in runs if rundir.finished(results[k])]
  seconds = sum(rundir.total_wall_seconds(results[k]) or 0 for k in done)
  folds = [k for k in done if k != crossval.TEST]
  parts = ([f"{len(folds)} folds"] if folds else []) + (["test"] if crossval.TEST in done else [])
  return f"{name}: {' + '.join(parts)} in {seconds / 60:.0f} min"


def _crossval_finished(directory: pathlib.Path, folds: str = "",
                       args: list[str] | None = None) -> bool:
  """The stage's work is done: every fold and the test set; with `folds` (a piece of
  the work) those folds and the test set; with "none" the test set alone. Decided
  from the run directories' own results, exactly as train.crossval and the report
  decide which sets they can show, so a stage never counts as done while the report
  would still call a set pending. With `args` (the stage's command), finished work
  made with other settings is an error, not done."""
  from train import crossval
  try:
    available = crossval.available_sets(directory)
  except FileNotFoundError:
    return False
  chosen = crossval.parse_folds(folds)
  if chosen is None:
    done = available["test"] and available["out_of_fold"]
  else:
    done = available["test"] and all(crossval.finished(crossval.fold_dir(directory, f))
                                     for f in chosen)
  if done and args is not None:
    stages.check_config(directory, crossval.read_summary(directory)["config"], args)
  return done


def _combination_finished(directory: pathlib.Path, folds: str = "") -> bool:
  """An ensemble's or a selection's `_crossval_finished`, and made from its members' current
  results: one made before a member was re-run is an error (it would report stale
  predictions), not done."""
  if not _crossval_finished(directory, folds):
    return False
  from train import ensemble
  stale = ensemble.stale(directory)
  if stale:
    raise stages.StageError(f"{directory} was made before {', '.join(stale)} changed (re-run "
                            "or extended; or before members' results were fingerprinted): "
                            "delete it to make it again")
  return True


def unheld_out(encoder: pathlib.Path, percepiano_dir: pathlib.Path) -> str | None:
  """Why a given notes encoder's pre-training may have heard rated performances, or None
  when its shards left out what the release at `percepiano_dir` holds
  (`maestro_job --exclude_overlap_with`). Reads the shards' metadata the run or release
  keeps: its last pre-training's (a release keeps no earlier run's)."""
  if release.is_release(encoder):
    meta = json.loads((encoder / release.ABOUT).read_text())["data_metadata"]
  else:
    meta = json.loads((encoder / rundir.DATA_METADATA).read_text())
  excluded = (meta.get("splits") or {}).get("excluded_overlap")
  if not excluded:
    return (f"{encoder} was pre-trained on shards never checked for PercePiano's "
            "performances (made without --exclude_overlap_with): its figures are not held out")
  checked = {pathlib.Path(d).resolve() for d in excluded["rated_dirs"]}
  if percepiano_dir.resolve() not in checked:
    return (f"{encoder}'s pre-training shards were checked against {excluded['rated_dirs']}, "
            f"not {percepiano_dir}")
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  work = pathlib.Path(FLAGS.workdir).absolute()
  chosen = plan(pathlib.Path(FLAGS.percepiano_dir).absolute(),
                pathlib.Path(FLAGS.asap_dir).absolute(), work, FLAGS.size, FLAGS.folds,
                pathlib.Path(FLAGS.report_dir).absolute() if FLAGS.report_dir else None,
                FLAGS.unseen_soundfont, FLAGS.second_soundfont,
                pathlib.Path(FLAGS.notes_encoder).absolute() if FLAGS.notes_encoder else None,
                FLAGS.held_out_soundfonts)
  others = []
  if FLAGS.only:
    unknown = sorted(set(FLAGS.only) - {st.name for st in chosen})
    if unknown:
      raise app.UsageError(f"unknown stages {unknown}; stages: {[st.name for st in chosen]}")
    others = [st for st in chosen if st.name not in FLAGS.only]
    chosen = [st for st in chosen if st.name in FLAGS.only]
  if FLAGS.notes_encoder:
    # Said up front, not refused: the committed figures were made with such an encoder, and
    # rerunning their reports must stay possible.
    warning = unheld_out(pathlib.Path(FLAGS.notes_encoder).absolute(),
                         pathlib.Path(FLAGS.percepiano_dir).absolute())
    if warning:
      print(f"warning: {warning}", file=sys.stderr)
  if FLAGS.dry_run or FLAGS.size == "base":
    for st in chosen:
      try:
        print(f"# {st.name}: {st.what}\npython -m {shlex.join(st.command())}")
      except stages.StageError as e:  # a report before its runs exist
        print(f"# {st.name}: {st.what}\n# (its command is built when it runs: {e})")
    return
  try:
    stages.run(chosen, work / "logs", cwd=REPO, jobs=FLAGS.jobs, others=others)
  except (stages.StageError, ValueError) as e:  # ValueError: e.g. an unreadable crossval.json
    sys.exit(f"error: {e}")


def cli() -> None:
  """Console entry point (`ppt-benchmark`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
