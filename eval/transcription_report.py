"""Transcription scores of a notes-aware pre-training run on held-out compositions, by step.

  python -m eval.transcription_report --checkpoint=PRETRAIN_WORKDIR \
      --data_dir=out/benchmark/shards/asap --output_dir=reports/benchmark [--steps=all]

The validation split of a MAESTRO/ASAP job holds whole compositions the run never trained
on. They are halved by composition (seeded): the decoding thresholds are chosen on one
half (`tune`: onset threshold by onset F1, then frame threshold by onset+offset F1, pedal
threshold by pedal F1) and the scores are measured on the other (`report`), so no
reported number comes from what chose it. For every checkpoint the run kept (or
`--steps`), the first `--max_seconds` of each held-out performance are transcribed from
the stored windows (`eval.shard_transcription`) and scored with mir_eval
(`eval.transcription_scores`: mean over performances). Writes

  OUTPUT/transcription.json     per step: thresholds, tune and report scores; `final`: the
                                last step's report scores, with its pre-training step
  OUTPUT/transcription_f1.png   report-half F1 against pre-training steps

and each step's thresholds into the run (`transcription_thresholds.json`), where
`eval.transcribe` and `eval.shard_transcription` find them.

`--unseen_timbres=DIR,...`: jobs over the same held-out compositions rendered with
SoundFonts the run never heard (`pipelines.beam.maestro_job --soundfont=S
--only_splits=validation --variants=0`). Their report-half performances are scored at
every step with the thresholds chosen on the training timbre's tune half, under
`steps[i].unseen` and `final.unseen`, keyed by the SoundFont's file name.
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
from pipelines import entry_point
from pipelines.shards import metadata

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
  """The scores of `transcription_scores.score` (`metrics`), averaged over the performances."""
  each = [transcription_scores.score(p.reference, p.decode(thresholds), metrics)
          for p in performances]
  return {k: float(np.mean([s[k] for s in each])) for k in each[0]}


def choose(performances) -> shard_transcription.Thresholds:
  """Thresholds on one grid, one at a time: onset, then frame given it, then pedal, then
  the shortest pedal press kept."""
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
  return best


def evaluate_step(run: loading.PretrainedRun, windows, tune: set[str],
                  unseen: dict[str, dict] | None = None) -> dict:
  """Thresholds chosen on the tune half; scores of both halves, and of the report half of
  each `unseen` timbre's windows (name -> windows) with the same thresholds."""
  t0 = time.perf_counter()
  performances = list(shard_transcription.transcribe(run, windows))
  tuning = [p for p in performances if p.group in tune]
  reporting = [p for p in performances if p.group not in tune]
  thresholds = choose(tuning)
  out = {"step": run.step, "thresholds": dataclasses.asdict(thresholds),
         "tune": mean_scores(tuning, thresholds), "report": mean_scores(reporting, thresholds)}
  if unseen:
    out["unseen"] = {
        name: mean_scores(list(shard_transcription.transcribe(
            run, {k: ws for k, ws in other.items() if ws[0].group not in tune})), thresholds)
        for name, other in unseen.items()}
  return dict(out, seconds=round(time.perf_counter() - t0, 1))


def soundfonts(meta: metadata.ShardMetadata) -> dict[str, str | None]:
  """Name -> SHA-256 of the SoundFonts a job rendered with (jobs before the list: the one
  `--soundfont`, by default TimGM6mb)."""
  if meta.raw.get("soundfonts"):
    return dict(meta.raw["soundfonts"])
  chosen = (meta.raw.get("config") or {}).get("soundfont")
  return {pathlib.Path(chosen).stem if chosen else "TimGM6mb": meta.raw.get("soundfont_sha256")}


def soundfont_name(meta: metadata.ShardMetadata) -> str:
  """The SoundFonts a job rendered with, as one name (`A+B` for several)."""
  return "+".join(soundfonts(meta))


def _held_out_windows(data_dir: str, split: str, max_seconds: float | None) -> dict:
  windows = shard_transcription.read_windows(data_dir, [split], max_seconds=max_seconds)
  if any(w.notes is None for ws in windows.values() for w in ws):
    raise ValueError(f"{data_dir}: the {split} windows have no note targets (schema 2 shards "
                     "from MIDI or WAVs with aligned MIDI are needed)")
  return windows


def unseen_timbres(jobs: Sequence[metadata.ShardMetadata], seen: metadata.ShardMetadata,
                   split: str, max_seconds: float | None, report_groups: set[str]
                   ) -> dict[str, dict]:
  """SoundFont name -> the held-out windows of each job in `jobs`. Each must be another
  SoundFont than `seen`'s over the same held-out compositions, or the scores would not say
  what they claim."""
  out, heard = {}, set(soundfonts(seen).values())
  for meta in jobs:
    data_dir = meta.root
    if set(soundfonts(meta).values()) & heard:
      raise ValueError(f"{data_dir} was rendered with the training SoundFont "
                       f"({soundfont_name(meta)}); an unseen timbre needs another")
    windows = _held_out_windows(data_dir, split, max_seconds)
    missing = report_groups - {ws[0].group for ws in windows.values()}
    if missing:
      raise ValueError(f"{data_dir} lacks held-out compositions of the report half: "
                       f"{sorted(missing)[:3]} (render the same tree, split seed and fraction)")
    out[soundfont_name(meta)] = windows
  return out


def plot(path: pathlib.Path, steps: list[dict], title: str) -> pathlib.Path:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.5, 4))
  ax = fig.add_subplot(1, 1, 1)
  x = [s["step"] for s in steps]
  for metric in METRICS:
    ax.plot(x, [s["report"][f"{metric}/f1"] for s in steps], marker="o", label=metric)
  for name in steps[-1].get("unseen", {}):
    ax.plot(x, [s["unseen"][name]["onset/f1"] for s in steps], marker="s", linestyle="--",
            label=f"onset, unseen {name}")
  ax.set_xlabel("pre-training step")
  ax.set_ylabel("F1 (held-out compositions)")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  return figures.save(fig, path)


def report(checkpoint: str, data_dir: str, output_dir: pathlib.Path, *, steps: Sequence[int] = (),
           split: str = "validation", max_seconds: float | None = 60.0, seed: int = 0,
           unseen_dirs: Sequence[str] = ()) -> dict:
  available = loading.checkpoint_steps(checkpoint)
  missing = sorted(set(steps) - set(available))
  if missing:
    raise ValueError(f"{checkpoint} has no checkpoints {missing} (kept: {available})")
  meta = metadata.read(data_dir)
  windows = _held_out_windows(data_dir, split, max_seconds)
  groups = {key: ws[0].group for key, ws in windows.items()}
  tune, report_groups = halves(list(groups.values()), seed)
  unseen_jobs = [metadata.read(d) for d in unseen_dirs]
  unseen = unseen_timbres(unseen_jobs, meta, split, max_seconds, report_groups)
  results = []
  for step in sorted(steps) or available:
    run = loading.load_transcriber(checkpoint, step)
    results.append(evaluate_step(run, windows, tune, unseen))
    logging.info("step %d: report onset F1 %.3f (%s)", step, results[-1]["report"]["onset/f1"],
                 results[-1]["thresholds"])
    loading.save_thresholds(
        run.workdir, step, results[-1]["thresholds"],
        f"{split} compositions of {pathlib.Path(data_dir).name} (tune half, seed {seed})")
  config = run.config
  out = {
      "checkpoint": str(pathlib.Path(checkpoint)),
      "objective": {"ssast_weight": float(config.model.get("ssast_weight", 1.0)),
                    "transcription_weight": float(config.model.transcription_weight)},
      "encoder": config.model.encoder.to_dict(),
      "batch_size": int(config.batch_size),
      "data": {"shards": str(pathlib.Path(data_dir)), "dataset": meta.dataset, "split": split,
               "soundfont": soundfont_name(meta),
               "soundfont_sha256": meta.raw.get("soundfont_sha256"),
               "soundfonts": soundfonts(meta),
               "unseen_soundfonts": {name: sha for m in unseen_jobs
                                     for name, sha in soundfonts(m).items()},
               "max_seconds_per_performance": max_seconds, "seed": seed,
               "performances": {"tune": sum(g in tune for g in groups.values()),
                                "report": sum(g not in tune for g in groups.values())},
               "compositions": {"tune": sorted(tune),
                                "report": sorted(set(groups.values()) - tune)}},
      "scores": "mean over performances; onset within 50 ms, offset within 50 ms or 20 %, "
                "velocity within 10 % (mir_eval)",
      "machine": machine.describe(),
      "steps": results,
      "final": {"step": results[-1]["step"], **results[-1]["report"],
                **({"unseen": results[-1]["unseen"]} if unseen else {})},
  }
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "transcription.json").write_text(json.dumps(out, indent=1) + "\n")
  reported = out["data"]["performances"]["report"]
  plot(output_dir / "transcription_f1.png", results,
       f"Transcription on held-out {meta.dataset} compositions ({reported} performances)")
  return out


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", None, "A pre-training run with a transcription head.",
                      required=True)
  flags.DEFINE_string("data_dir", None, "The MAESTRO/ASAP job's shards (with note targets).",
                      required=True)
  flags.DEFINE_string("output_dir", None, "Where transcription.json and the figure go.",
                      required=True)
  flags.DEFINE_list("steps", [], "Checkpoint steps to score (default: every one kept).")
  flags.DEFINE_string("split", "validation", "The held-out split.")
  flags.DEFINE_float("max_seconds", 60.0, "Score the first seconds of each performance (0: all).",
                     lower_bound=0)
  flags.DEFINE_integer("seed", 0, "Seed of the tune/report halves.")
  flags.DEFINE_list("unseen_timbres", [], "Jobs over the same held-out compositions rendered "
                    "with SoundFonts the run never heard (scored with the tuned thresholds).")


def main(argv: list[str]) -> int:
  del argv
  try:
    out = report(FLAGS.checkpoint, FLAGS.data_dir, pathlib.Path(FLAGS.output_dir),
                 steps=[int(s) for s in FLAGS.steps], split=FLAGS.split,
                 max_seconds=FLAGS.max_seconds or None, seed=FLAGS.seed,
                 unseen_dirs=FLAGS.unseen_timbres)
  except (loading.RunError, FileNotFoundError, metadata.MetadataError, ValueError) as e:
    sys.exit(f"error: {e}")
  final = out["final"]
  print(f"step {final['step']}: " + ", ".join(f"{m} F1 {final[m + '/f1']:.3f}" for m in METRICS)
        + "".join(f", onset F1 {s['onset/f1']:.3f} on unseen {name}"
                  for name, s in final.get("unseen", {}).items())
        + f" -> {FLAGS.output_dir}/transcription.json")
  return 0


def cli() -> None:
  """Console entry point (`ppt-transcription-report`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
