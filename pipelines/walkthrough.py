"""End-to-end demo of what exists so far: corpus -> MIDI -> audio -> log-mel -> summary.

  python -m pipelines.walkthrough [--corpus_dir out/demo-corpus]          # generated corpus
  python -m pipelines.walkthrough --percepiano_dir ../shared/data/percepiano \
      [--key Schubert_D960_mv2_8bars_3_07] [--soundfont PATH] [--output_dir DIR]

Without `--percepiano_dir` it uses the embedded demo corpus in `--corpus_dir`,
generating it first (`make_corpus --size demo --seed 0`) when the folder does
not exist. It then reads and validates the PercePiano-layout release, renders
one rated performance through the SoundFont, trims its silence, computes AST's
log-mel features, cuts them into 10.24 s windows and prints the labels by task
group with timings.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import soundfile
from absl import app, flags, logging

from pipelines import entry_point
from pipelines.audio import features, render
from pipelines.corpus import make_corpus
from pipelines.datasets import maestro, percepiano, taxonomy

WINDOW_FRAMES = 1024  # 10.24 s at a 10 ms hop, AST's input length


def prepare_corpus(corpus_dir: str, soundfont: str | None) -> dict:
  """Generates the demo corpus unless `corpus_dir` already holds it; describes it."""
  root = pathlib.Path(corpus_dir)
  expected = make_corpus.corpus_manifest("demo", 0, soundfont)
  if not root.exists() or (root.is_dir() and not any(root.iterdir())):
    t0 = time.perf_counter()
    make_corpus.make_corpus(root, "demo", seed=0, soundfont=soundfont, workers=2)
    print(f"Generated the demo corpus in {root} in {time.perf_counter() - t0:.0f} s")
  manifest = root / make_corpus.MANIFEST
  if not manifest.is_file() or json.loads(manifest.read_text()) != expected:
    raise FileExistsError(
        f"{root} holds something other than the demo corpus (size demo, seed 0, this "
        f"SoundFont); delete it or pass another --corpus_dir")
  index = maestro.read_maestro(root / "maestro-v3.0.0")
  if index.missing_files:
    raise FileNotFoundError(f"{root}: {len(index.missing_files)} listed files are missing")
  splits = {s: sum(p.split == s for p in index.performances) for s in maestro.SPLITS}
  ceiling = json.loads((root / "percepiano" / make_corpus.CEILING_FILE).read_text())
  return {
      "maestro_performances": len(index.performances),
      "maestro_hours": round(sum(p.duration for p in index.performances) / 3600, 2),
      "maestro_splits": splits,
      "ceiling": {group: round(float(np.mean([ceiling["overall"][taxonomy.DIMENSION_NAMES[i]]
                                              for i in dims])), 3)
                  for group, dims in taxonomy.GROUPS.items()},
  }


def run(percepiano_dir: str, key: str | None, soundfont: str | None,
        output_dir: str | None) -> dict:
  """Runs the demo on one release and returns the summary it prints."""
  t0 = time.perf_counter()
  release = percepiano.read_release(percepiano_dir)
  read_s = time.perf_counter() - t0
  key = key or release.performances[0].key.text
  performance = release.by_key().get(key)
  if performance is None:
    raise KeyError(f"{key!r} is not a key of {percepiano_dir}")
  if performance.midi_path is None:
    raise FileNotFoundError(f"{key!r} has no MIDI file in {percepiano_dir}")

  t0 = time.perf_counter()
  rendered = render.render_midi(performance.midi_path, soundfont=soundfont)
  render_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  logmel = features.log_mel(rendered.samples)
  fbank_s = time.perf_counter() - t0
  num_windows = max(1, -(-logmel.shape[0] // WINDOW_FRAMES))

  summary = {
      "key": key,
      "movement": performance.key.movement,
      "passage": performance.key.passage,
      "performer": performance.key.performer,
      "performer_id": performance.performer_id,
      "release_performances": len(release.performances),
      "keys_without_midi": len(release.keys_without_midi),
      "soundfont_sha256": rendered.soundfont_sha256,
      "untrimmed_seconds": round(rendered.untrimmed_seconds, 3),
      "trimmed_start_seconds": round(rendered.trimmed_start_seconds, 3),
      "trimmed_end_seconds": round(rendered.trimmed_end_seconds, 3),
      "seconds": round(rendered.seconds, 3),
      "features_shape": list(logmel.shape),
      "windows_10_24s": num_windows,
      "read_release_s": round(read_s, 3),
      "render_s": round(render_s, 3),
      "render_x_realtime": round(rendered.untrimmed_seconds / render_s, 1),
      "fbank_s": round(fbank_s, 4),
      "fbank_x_realtime": round(rendered.seconds / max(fbank_s, 1e-9), 1),
      "labels": {taxonomy.DIMENSIONS[i].name: round(float(performance.labels[i]), 4)
                 for i in range(taxonomy.NUM_DIMENSIONS)},
  }
  if output_dir:
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    soundfile.write(out / f"{key}.wav", rendered.samples, rendered.sample_rate, subtype="FLOAT")
    np.save(out / f"{key}.logmel.npy", logmel)
    (out / f"{key}.summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def format_summary(s: dict) -> str:
  lines = []
  if "maestro_hours" in s:
    lines += [
        f"Generated MAESTRO-layout corpus: {s['maestro_performances']} performances, "
        f"{s['maestro_hours']:.2f} h, splits {s['maestro_splits']}",
        f"Human ceiling on Pearson (mean per group): {s['ceiling']}",
    ]
  lines += [
      f"PercePiano release: {s['release_performances']} rated performances "
      f"({s['keys_without_midi']} without MIDI), read in {s['read_release_s']:.2f} s",
      f"Performance {s['key']}: movement {s['movement']}, passage {s['passage']}, "
      f"performer {s['performer']} (id {s['performer_id']})",
      f"Render: {s['untrimmed_seconds']:.2f} s of audio in {s['render_s']:.2f} s "
      f"({s['render_x_realtime']:.0f}x real time); trimmed {s['trimmed_start_seconds']:.2f} s "
      f"at the start and {s['trimmed_end_seconds']:.2f} s at the end -> {s['seconds']:.2f} s",
      f"SoundFont sha256: {s['soundfont_sha256']}",
      f"Log-mel features: {s['features_shape']} (frames x mel bins) in {s['fbank_s'] * 1e3:.1f} ms "
      f"({s['fbank_x_realtime']:.0f}x real time); {s['windows_10_24s']} window(s) of 10.24 s",
      "Labels (mean rating / 7) by task group:",
  ]
  for group, indices in taxonomy.GROUPS.items():
    dims = ", ".join(f"{taxonomy.DIMENSIONS[i].name}={s['labels'][taxonomy.DIMENSIONS[i].name]:.2f}"
                     for i in indices)
    lines.append(f"  {group:<10} {dims}")
  return "\n".join(lines)


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string("percepiano_dir", None,
                      "Root of a PercePiano release; default: the generated corpus.")
  flags.DEFINE_string("corpus_dir", "out/demo-corpus", "Generated corpus (made here if absent).")
  flags.DEFINE_string("key", None, "Performance to render; default: the first key.")
  flags.DEFINE_string("soundfont", None,
                      "SoundFont (.sf2); default: TimGM6mb.sf2 from the pretty_midi wheel.")
  flags.DEFINE_string("output_dir", None,
                      "If set, writes the render (WAV), features (.npy) and a summary JSON.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  corpus = {}
  percepiano_dir = f.percepiano_dir
  if percepiano_dir is None:
    corpus = prepare_corpus(f.corpus_dir, f.soundfont)
    percepiano_dir = str(pathlib.Path(f.corpus_dir) / "percepiano")
  summary = {**corpus, **run(percepiano_dir, f.key, f.soundfont, f.output_dir)}
  logging.info("demo finished")
  print(format_summary(summary))


def cli() -> None:
  """Console entry point (`ppt-walkthrough`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
