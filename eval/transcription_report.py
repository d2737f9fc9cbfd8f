"""Transcription scores of a notes-aware pre-training run on held-out compositions, by step.

  python -m eval.transcription_report --checkpoint=PRETRAIN_WORKDIR \
      --data_dir=out/benchmark/shards/asap --output_dir=reports/benchmark [--steps=all]

The validation split of a MAESTRO/ASAP job holds whole compositions the run never trained
on. They are halved by composition (seeded): the decoding thresholds are chosen on one
half (`tune`: onset threshold by onset F1, then frame threshold by onset+offset F1, pedal
threshold by pedal F1, where velocities are read by onset+velocity F1) and the scores are
measured on the other (`report`), so no reported number comes from what chose it. For
every checkpoint the run kept (or `--steps`), the first `--max_seconds` of each held-out
performance are transcribed from the stored windows (`eval.shard_transcription`) and
scored with mir_eval (`eval.transcription_scores`: mean over performances). Writes

  OUTPUT/transcription.json     per step: thresholds, tune and report scores; `final`: the
                                last step's report scores, with its pre-training step
  OUTPUT/transcription_f1.png   report-half F1 against pre-training steps

and each step's thresholds into the run (`transcription_thresholds.json`), where
`eval.transcribe` and `eval.shard_transcription` find them.

`--timbres=DIR,...`: jobs over the same held-out compositions rendered with other
SoundFonts (`pipelines.beam.maestro_job --soundfont=S --only_splits=validation
--variants=0`). Their report-half performances are scored at every step with the
thresholds chosen on `--data_dir`'s tune half, under `steps[i].timbres` and
`final.timbres`, keyed by the SoundFont's file name and marked `heard_in_training` when
the run (or a run it continues) trained on that SoundFont.

A run that continues another (`--config.init.checkpoint=EARLIER_RUN`, recorded in its
`warm_start.json`) is scored with its lineage: the earlier run's kept checkpoints up to
the step continued from come first, and `step` counts pre-training steps from the
first run's start (`run` and `run_step` name the checkpoint). A run continued from a
release counts from the release's pre-training steps.

`--merge=EARLIER.json,LATER.json` writes one report of a whole lineage from two, where
LATER's run continued from the release EARLIER's run became and the earlier checkpoints
are gone (a fresh machine): the steps of both, each with the set it was scored on, onset F1
per SoundFont across all of them, LATER's `final`.

A release (`--checkpoint=release/transcriber`) is scored as one step, at its pre-training
steps, on any rendered held-out set: the thresholds are chosen on the tune half as for a
run, but the release's own are left as shipped.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from eval import figures, loading, machine, shard_transcription, transcription_scores
from model import release
from pipelines import entry_point
from pipelines.audio import notes
from pipelines.shards import metadata, tiled_windows
from train import checkpointing, rundir

FLAGS = flags.FLAGS
GRID = tuple(round(float(t), 2) for t in np.arange(0.1, 0.91, 0.1))
METRICS = transcription_scores.METRICS
# Shortest pedal press kept (seconds), chosen after the pedal threshold.
MIN_PEDAL_GRID = (0.0, 0.05, 0.1, 0.2)


def halves(groups: Sequence[str], seed: int) -> tuple[set[str], set[str]]:
  """(tune, report): the distinct groups shuffled by `seed`, the first half tunes."""
  distinct = sorted(set(groups))
  if len(distinct) < 2:
    raise ValueError(f"need at least two held-out compositions to tune on one and report on "
                     f"another, got {len(distinct)}")
  order = np.random.default_rng(seed).permutation(len(distinct))
  tune = {distinct[i] for i in order[:len(distinct) // 2]}
  return tune, set(distinct) - tune


def mean_scores(performances, thresholds: shard_transcription.Thresholds,
                metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
  """The scores of `transcription_scores.score` (`metrics`), averaged over the performances
  (`velocity/r` over those where it is defined; None where it is nowhere)."""
  each = [transcription_scores.score(p.reference, p.decode(thresholds), metrics)
          for p in performances]
  defined = {k: [s[k] for s in each if s[k] is not None] for k in each[0]}
  return {k: float(np.mean(v)) if v else None for k, v in defined.items()}


def choose(performances) -> shard_transcription.Thresholds:
  """Thresholds on one grid, one at a time: onset, then frame given it, then pedal, then
  the shortest pedal press kept, then where velocities are read."""
  best = shard_transcription.Thresholds()
  for name, metric, grid, neutral in (("onset", "onset", GRID, 0.5),
                                      ("frame", "onset_offset", GRID, 0.5),
                                      ("pedal", "pedal", GRID, 0.5),
                                      ("min_pedal_s", "pedal", MIN_PEDAL_GRID, 0.0)):
    # Ties (e.g. a model that finds nothing yet) go to the value nearest the neutral one.
    # Only the metric that decides is scored.
    scored = [(mean_scores(performances, dataclasses.replace(best, **{name: t}),
                           (metric,))[f"{metric}/f1"], -abs(t - neutral), t) for t in grid]
    best = dataclasses.replace(best, **{name: float(max(scored)[2])})
  # Where velocities are read, by onset+velocity F1 (a tie keeps the onset frame).
  scored = [(mean_scores(performances, dataclasses.replace(best, velocity_at=at),
                         ("onset_velocity",))["onset_velocity/f1"], -i, at)
            for i, at in enumerate(notes.VELOCITY_AT)]
  return dataclasses.replace(best, velocity_at=max(scored)[2])


def evaluate_step(run: loading.PretrainedRun, windows, tune: set[str],
                  timbres: dict[str, dict] | None = None) -> dict:
  """Thresholds chosen on the tune half; scores of both halves, and of the report half of
  each other timbre's windows (name -> windows) with the same thresholds."""
  t0 = time.perf_counter()
  performances = list(shard_transcription.transcribe(run, windows))
  tuning = [p for p in performances if p.group in tune]
  reporting = [p for p in performances if p.group not in tune]
  thresholds = choose(tuning)
  out = {"thresholds": dataclasses.asdict(thresholds),
         "tune": mean_scores(tuning, thresholds), "report": mean_scores(reporting, thresholds)}
  if timbres:
    out["timbres"] = {
        name: mean_scores(list(shard_transcription.transcribe(
            run, {k: ws for k, ws in other.items() if ws[0].group not in tune})), thresholds)
        for name, other in timbres.items()}
  return dict(out, seconds=round(time.perf_counter() - t0, 1))


@dataclasses.dataclass(frozen=True)
class Segment:
  """One pre-training run of a lineage: the kept steps to score, where its step 0 sits in
  the lineage's count, and the SoundFonts it trained on."""

  workdir: pathlib.Path
  steps: tuple[int, ...]
  offset: int
  soundfonts: dict[str, str | None]


def _continued_from(workdir: pathlib.Path) -> tuple[str, int] | None:
  """(source, step) a pre-training run continued from, or None for a fresh start."""
  config = json.loads((workdir / rundir.CONFIG).read_text())
  if not (config.get("init") or {}).get("checkpoint"):
    return None
  record = workdir / rundir.WARM_START
  if not record.is_file():
    raise ValueError(f"{workdir} continues {config['init']['checkpoint']} but has no "
                     f"{rundir.WARM_START} (the step it continued from is unknown)")
  about = json.loads(record.read_text())
  return about["source"], int(about["step"] or 0)


def _released(path: str | pathlib.Path) -> tuple[int, dict[str, str | None]]:
  """(pre-training steps, SoundFonts heard) of a released transcriber, over its lineage: a
  release of a continued run counts the runs before it, and heard their SoundFonts."""
  about = release.read(path)[1]
  scores = about.get("scores") or {}
  heard = metadata.soundfonts(about["data_metadata"])
  for earlier in scores.get("lineage", ()):
    heard = {**earlier["soundfonts"], **heard}
  return int(scores.get("pretraining_steps", about["step"])), heard


def lineage(checkpoint: str | pathlib.Path) -> list[Segment]:
  """The run and the runs it continues, oldest first. An earlier run is scored up to the
  step continued from; a release at the root contributes its pre-training steps, no
  checkpoints. A release itself is one segment: its one state, at its pre-training steps."""
  if release.is_release(checkpoint):
    steps, heard = _released(checkpoint)
    return [Segment(pathlib.Path(checkpoint).absolute(), (steps,), 0, heard)]
  directory, _ = checkpointing.locate(checkpoint)
  workdir, limit = directory.parent, None
  found = []  # newest first: (workdir, steps, SoundFonts, the source step it started from)
  while True:
    if any(workdir == f[0] for f in found):
      raise ValueError(f"{checkpoint}: its runs continue each other in a cycle ({workdir})")
    steps = tuple(s for s in loading.checkpoint_steps(workdir) if limit is None or s <= limit)
    heard = metadata.soundfonts(json.loads((workdir / rundir.DATA_METADATA).read_text()))
    source = _continued_from(workdir)
    if source is not None and release.is_release(source[0]):
      # This run's step 0 is the release's state: after all of its lineage's steps.
      released_steps, released_heard = _released(source[0])
      found += [(workdir, steps, heard, released_steps),
                (pathlib.Path(source[0]).absolute(), (), released_heard, 0)]
      break
    found.append((workdir, steps, heard, source[1] if source else 0))
    if source is None:
      break
    workdir, limit = checkpointing.locate(source[0])[0].parent, source[1]
  out, offset = [], 0
  for workdir, steps, heard, started_at in reversed(found):
    offset += started_at  # this run's step 0 is its source's step `started_at`
    out.append(Segment(workdir, steps, offset, heard))
  return out


def _held_out_windows(data_dir: str, split: str, max_seconds: float | None) -> dict:
  windows = tiled_windows.read_windows(data_dir, [split], max_seconds=max_seconds)
  if any(w.notes is None for ws in windows.values() for w in ws):
    raise ValueError(f"{data_dir}: the {split} windows have no note targets (schema 2 shards "
                     "from MIDI or WAVs with aligned MIDI are needed)")
  return windows


def other_timbres(jobs: Sequence[metadata.ShardMetadata], scored: metadata.ShardMetadata,
                  split: str, max_seconds: float | None, report_groups: set[str]
                  ) -> dict[str, dict]:
  """SoundFont name -> the held-out windows of each job in `jobs`. Each must hold the
  report half's compositions, and be rendered otherwise than `scored` (the data the
  thresholds are tuned on), whose own report half is already scored."""
  out = {}
  for meta in jobs:
    data_dir = meta.root
    name = metadata.soundfont_name(meta.raw)
    if metadata.soundfonts(meta.raw) == metadata.soundfonts(scored.raw):
      raise ValueError(f"{data_dir} was rendered with the SoundFonts of --data_dir ({name}): "
                       "its report half is already scored")
    if name in out:
      raise ValueError(f"{data_dir}: a second job rendered with {name}")
    windows = _held_out_windows(data_dir, split, max_seconds)
    missing = report_groups - {ws[0].group for ws in windows.values()}
    if missing:
      raise ValueError(f"{data_dir} lacks held-out compositions of the report half: "
                       f"{sorted(missing)[:3]} (render the same tree, split seed and fraction)")
    out[name] = windows
  return out


def heard(name: str, jobs: Sequence[metadata.ShardMetadata],
          trained_on: dict[str, str | None]) -> bool:
  """Whether every SoundFont of the job named `name` was in the lineage's training data."""
  meta = next(m for m in jobs if metadata.soundfont_name(m.raw) == name)
  return set(metadata.soundfonts(meta.raw).items()) <= set(trained_on.items())


def onset_by_soundfont(step: dict, scored_on: str) -> dict[str, tuple[float, bool]]:
  """SoundFont name -> (onset F1, heard in training) of one scored step: its own held-out
  set's (`scored_on`, heard by construction) and each other timbre's."""
  return {scored_on: (step["report"]["onset/f1"], True),
          **{name: (t["onset/f1"], t["heard_in_training"])
             for name, t in step.get("timbres", {}).items()}}


def plot(path: pathlib.Path, steps: list[dict], title: str,
         starts: Sequence[tuple[int, str]] = (), scored_on: str = "") -> pathlib.Path:
  """F1 against pre-training steps: onset F1 per SoundFont (dashed where never heard) and
  the other F1 scores of the set the thresholds were tuned on. A step's own `scored_on`
  (merged reports, see `merge`) overrides the default: each set is its own line."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(9, 4.2))
  ax = fig.add_subplot(1, 1, 1)
  fig.subplots_adjust(left=0.08, right=0.62)
  colours = iter(f"C{i}" for i in range(10))
  tuned_on = [s.get("scored_on", scored_on) for s in steps]
  sets = list(dict.fromkeys(tuned_on))
  # One colour per score, one marker per tuning set.
  for metric in transcription_scores.F1_METRICS[1:]:  # onset: per SoundFont, below
    colour = next(colours)
    for name, marker in zip(sets, "o^v"):
      own = [s for s, on in zip(steps, tuned_on) if on == name]
      if all(f"{metric}/f1" in s["report"] for s in own):  # older reports lack the newest
        ax.plot([s["step"] for s in own], [s["report"][f"{metric}/f1"] for s in own],
                marker=marker, markersize=3, color=colour,
                label=f"{metric}, {name}" if len(sets) > 1 else metric)
  fonts: dict[str, list[tuple[int, float, bool]]] = {}
  for s, on in zip(steps, tuned_on):
    for name, (f1, heard_it) in onset_by_soundfont(s, on).items():
      fonts.setdefault(name, []).append((s["step"], f1, heard_it))
  for name, points in fonts.items():
    heard_it = points[-1][2]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="s", markersize=3,
            linestyle="-" if heard_it else "--", linewidth=2, color=next(colours, None),
            label=f"onset, {name} ({'heard' if heard_it else 'never heard'})")
  for step, what in starts:  # where a continuing run took over, and on what
    ax.axvline(step, color="grey", linewidth=0.8, linestyle=":")
    ax.annotate(what, (step, 0.02), fontsize=7, rotation=90, color="grey")
  ax.set_xlabel("pre-training step")
  ax.set_ylabel("F1 (held-out compositions)")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  ax.set_title(title, fontsize=9)
  return figures.save(fig, path)


def report(checkpoint: str, data_dir: str, output_dir: pathlib.Path, *, steps: Sequence[int] = (),
           split: str = "validation", max_seconds: float | None = 60.0, seed: int = 0,
           timbre_dirs: Sequence[str] = ()) -> dict:
  """`steps` (default: every kept one) are the last run's own; its lineage's earlier runs
  are scored at every kept step up to the one continued from."""
  segments = lineage(checkpoint)
  last = segments[-1]
  is_release = release.is_release(checkpoint)
  if is_release and steps:
    raise ValueError(f"{checkpoint} is a release: it has one state, no steps to choose")
  missing = sorted(set(steps) - set(last.steps))
  if missing:
    raise ValueError(f"{checkpoint} has no checkpoints {missing} (kept: {list(last.steps)})")
  meta = metadata.read(data_dir)
  windows = _held_out_windows(data_dir, split, max_seconds)
  groups = {key: ws[0].group for key, ws in windows.items()}
  tune, report_groups = halves(list(groups.values()), seed)
  jobs = [metadata.read(d) for d in timbre_dirs]
  timbres = other_timbres(jobs, meta, split, max_seconds, report_groups)
  trained_on = {k: v for s in segments for k, v in s.soundfonts.items()}
  results = []
  for segment in segments:
    chosen = sorted(steps) if segment is last and steps else segment.steps
    for run_step in chosen:
      # A release has one state (its step is not a checkpoint's): loaded as it is.
      run = loading.load_transcriber(segment.workdir, "latest" if is_release else run_step)
      scored = evaluate_step(run, windows, tune, timbres)
      for name in scored.get("timbres", {}):
        scored["timbres"][name]["heard_in_training"] = heard(name, jobs, trained_on)
      results.append({"step": segment.offset + run_step, "run": str(segment.workdir),
                      "run_step": run_step, **scored})
      logging.info("step %d: report onset F1 %.3f (%s)", results[-1]["step"],
                   scored["report"]["onset/f1"], scored["thresholds"])
      if not is_release:  # a release keeps the thresholds it shipped with
        loading.save_thresholds(
            run.workdir, run_step, scored["thresholds"],
            f"{split} compositions of {pathlib.Path(data_dir).name} (tune half, seed {seed})")
  config = run.config
  final = results[-1]
  out = {
      "checkpoint": str(last.workdir),
      "objective": {"ssast_weight": float(config.model.get("ssast_weight", 1.0)),
                    "transcription_weight": float(config.model.transcription_weight)},
      "encoder": config.model.encoder.to_dict(),
      "batch_size": int(config.batch_size),
      "lineage": [{"run": str(s.workdir), "first_step": s.offset, "soundfonts": s.soundfonts}
                  for s in segments],
      "data": {"shards": str(pathlib.Path(data_dir)), "dataset": meta.dataset, "split": split,
               "soundfont": metadata.soundfont_name(meta.raw),
               "soundfont_sha256": meta.raw.get("soundfont_sha256"),
               "soundfonts": metadata.soundfonts(meta.raw),
               "training_soundfonts": trained_on,
               "timbres": {metadata.soundfont_name(m.raw): {
                   "shards": str(m.root), "soundfonts": metadata.soundfonts(m.raw)}
                   for m in jobs},
               "max_seconds_per_performance": max_seconds, "seed": seed,
               "performances": {"tune": sum(g in tune for g in groups.values()),
                                "report": sum(g not in tune for g in groups.values())},
               "compositions": {"tune": sorted(tune),
                                "report": sorted(set(groups.values()) - tune)}},
      "scores": "mean over performances; onset within 50 ms, offset within 50 ms or 20 %, "
                "velocity within 10 % (mir_eval)",
      "machine": machine.describe(),
      "steps": results,
      "final": {"step": final["step"], "run_step": final["run_step"], **final["report"],
                **({"timbres": final["timbres"]} if timbres else {})},
  }
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "transcription.json").write_text(json.dumps(out, indent=1) + "\n")
  reported = out["data"]["performances"]["report"]
  starts = [(s.offset, f"then {'+'.join(s.soundfonts)}") for s in segments[1:] if s.steps]
  plot(output_dir / "transcription_f1.png", results,
       f"Transcription on held-out {meta.dataset} compositions ({reported} performances, "
       f"{metadata.soundfont_name(meta.raw)})", starts, metadata.soundfont_name(meta.raw))
  return out


def merge(earlier: dict, later: dict) -> dict:
  """One report over a whole lineage from two: `later` scored a run continued from a
  release whose pre-training `earlier` scored (whose checkpoints a fresh machine no longer
  has). The same held-out compositions must be reported (same halves), and `later`'s run
  must start at `earlier`'s last step. Each step keeps the set it was scored on
  (`scored_on`: the SoundFonts of its tuning set, which may differ between the two), so
  onset F1 per SoundFont runs across both; `final` is `later`'s."""
  root = later["lineage"][0]
  if len(later["lineage"]) < 2 or root["first_step"] != 0:
    raise ValueError("the later report's checkpoint does not continue an earlier state")
  start = later["lineage"][1]["first_step"]
  if start != earlier["final"]["step"]:
    raise ValueError(f"the later run starts at pre-training step {start}, the earlier report "
                     f"ends at step {earlier['final']['step']}: not one lineage")
  for key in ("compositions", "seed", "max_seconds_per_performance", "split"):
    if earlier["data"][key] != later["data"][key]:
      raise ValueError(f"the two reports differ in data.{key}: their scores do not compare")

  def tagged(report: dict) -> list[dict]:
    return [{"scored_on": s.get("scored_on", report["data"]["soundfont"]), **s}
            for s in report["steps"]]

  return {**later, "lineage": [*earlier["lineage"], *later["lineage"][1:]],
          "steps": [*tagged(earlier), *tagged(later)],
          "merged": {"earlier": {k: earlier[k] for k in ("checkpoint", "data", "machine",
                                                           "objective", "batch_size")},
                     "later_from_step": start}}


def write_merged(earlier_path: pathlib.Path, later_path: pathlib.Path,
                 output_dir: pathlib.Path) -> dict:
  """`merge` of two transcription.json files -> OUTPUT/transcription.json and its figure."""
  out = merge(json.loads(earlier_path.read_text()), json.loads(later_path.read_text()))
  out["merged"]["from"] = [str(earlier_path), str(later_path)]
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "transcription.json").write_text(json.dumps(out, indent=1) + "\n")
  starts = [(s["first_step"], f"then {'+'.join(s['soundfonts'])}") for s in out["lineage"][1:]]
  plot(output_dir / "transcription_f1.png", out["steps"],
       f"Transcription on held-out {out['data']['dataset']} compositions "
       f"({out['data']['performances']['report']} performances)", starts)
  return out


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A pre-training run with a transcription head, or "
                      "a released transcriber (release/transcriber: scored as it ships, its "
                      "thresholds left as they are).")
  flags.DEFINE_string("data_dir", None, "The MAESTRO/ASAP job's shards (with note targets): "
                      "thresholds are tuned on half its held-out compositions, scores "
                      "reported on the other half.")
  flags.DEFINE_list("merge", [], "EARLIER.json,LATER.json: instead of scoring, one report of "
                    "a whole lineage from two (LATER's run continued the release EARLIER's "
                    "run became; same held-out compositions).")
  flags.DEFINE_string("output_dir", None, "Where transcription.json and the figure go.",
                      required=True)
  flags.DEFINE_list("steps", [], "The run's checkpoint steps to score (default: every one kept).")
  flags.DEFINE_string("split", "validation", "The held-out split.")
  flags.DEFINE_float("max_seconds", 60.0, "Score the first seconds of each performance (0: all).",
                     lower_bound=0)
  flags.DEFINE_integer("seed", 0, "Seed of the tune/report halves.")
  flags.DEFINE_list("timbres", [], "Jobs over the same held-out compositions rendered with "
                    "other SoundFonts (scored with the tuned thresholds; marked heard or not "
                    "in training).")


def main(argv: list[str]) -> int:
  del argv
  if FLAGS.merge:
    if len(FLAGS.merge) != 2 or FLAGS.checkpoint or FLAGS.data_dir:
      sys.exit("error: --merge takes EARLIER.json,LATER.json, without --checkpoint/--data_dir")
  elif not (FLAGS.checkpoint and FLAGS.data_dir):
    sys.exit("error: --checkpoint and --data_dir are required (or --merge)")
  try:
    if FLAGS.merge:
      out = write_merged(*map(pathlib.Path, FLAGS.merge), pathlib.Path(FLAGS.output_dir))
      print(f"steps {out['steps'][0]['step']}..{out['final']['step']} -> "
            f"{FLAGS.output_dir}/transcription.json")
      return 0
    out = report(FLAGS.checkpoint, FLAGS.data_dir, pathlib.Path(FLAGS.output_dir),
                 steps=[int(s) for s in FLAGS.steps], split=FLAGS.split,
                 max_seconds=FLAGS.max_seconds or None, seed=FLAGS.seed,
                 timbre_dirs=FLAGS.timbres)
  except (loading.RunError, FileNotFoundError, metadata.MetadataError, ValueError,
          release.ReleaseError) as e:
    sys.exit(f"error: {e}")
  final = out["final"]
  print(f"step {final['step']}: " + ", ".join(f"{m} F1 {final[m + '/f1']:.3f}"
                                                  for m in transcription_scores.F1_METRICS)
        + "".join(f", onset F1 {s['onset/f1']:.3f} on {name} "
                  f"({'heard' if s['heard_in_training'] else 'never heard'})"
                  for name, s in final.get("timbres", {}).items())
        + f" -> {FLAGS.output_dir}/transcription.json")
  return 0


def cli() -> None:
  """Console entry point (`ppt-transcription-report`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
