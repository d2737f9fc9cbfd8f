"""End-to-end preprocessing speed: the Beam job against a plain single-process loop.

  python benchmarks/preprocess_speed.py --percepiano_dir ../shared/data/percepiano \
      [--count 400] [--workers 2] [--from_wav]

Both do the same work on the same real PercePiano performances (a seeded
sample): render the MIDI, trim, log-mel, cut windows, encode records, write
ArrayRecord. The loop calls the job's own `ProcessRecording` for each
recording and writes one shard; the job is `pipelines.beam.percepiano_job`'s graph on
Beam's local runner with `--workers` processes, including shard grouping,
statistics, accounting and the final rename. Reported: windows/s, x real time
(seconds of rendered, trimmed audio per wall second) and the job / loop ratio.
With --from_wav the performances are first rendered to 16-bit 48 kHz stereo WAV
files (untimed, like MAESTRO's recordings) and both sides decode those instead
of synthesising: the speed of the pipeline itself on recorded audio.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import tempfile
import time

import numpy as np

from pipelines.audio import render
from pipelines.beam import augment_presets, percepiano_job, preprocess, writer
from pipelines.datasets import percepiano, splits
from pipelines.shards import layout, records


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--percepiano_dir", default="../shared/data/percepiano")
  parser.add_argument("--count", type=int, default=400)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--from_wav", action="store_true")
  args = parser.parse_args()

  release = percepiano.read_release(args.percepiano_dir)
  split = splits.piece_split(release.performances, seed=0)
  sources = percepiano_job.percepiano_sources(release, None, split)
  rng = np.random.default_rng(args.seed)
  sources = [sources[i] for i in sorted(rng.choice(len(sources), args.count, replace=False))]
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
  if args.from_wav:
    wav_dir = scratch / "wav"
    wav_dir.mkdir()
    font = render.load_soundfont()
    for source in sources:
      (wav_dir / f"{source.key}.wav").write_bytes(
          render.synthesize(pathlib.Path(source.midi_path).read_bytes(), font, name=source.key))
    sources = [dataclasses.replace(s, midi_path=None, audio_path=str(wav_dir / f"{s.key}.wav"))
               for s in sources]
  config = dict(dataset="percepiano", augment=augment_presets.get_config("percepiano"))

  # Baseline: the same per-recording work in one process, then one output shard.
  t0 = time.perf_counter()
  fn = preprocess.ProcessRecording(preprocess.JobConfig(output_dir=str(scratch / "loop"),
                                                        **config))
  fn.setup()  # one BLAS thread: a true single-core baseline
  spills = sorted((out.value[1], out.value[2]) for source in sources
                  for out in fn.process(source) if out.tag == "windows")
  rows = writer.write_shard(str(scratch), "loop", "all", ("array_record",), 0, 1,
                            (r for _, path in spills for r in writer.read_spill(path)),
                            "windows")
  loop_s = time.perf_counter() - t0
  loop_windows = rows[0]["records"]
  audio_seconds = sum(records.decode(r)[0]["valid_frames"] / 100.0 for r in
                      layout.read_array_record(str(scratch / rows[0]["file"])))

  # The Beam job, end to end.
  t0 = time.perf_counter()
  metadata = preprocess.run(
      sources, config, output_dir=str(scratch / "job"), overwrite=False,
      beam_args=[f"--direct_num_workers={args.workers}"], job_config={},
      source_checksums={}, splits={}, max_failure_fraction=0.0)
  job_s = time.perf_counter() - t0
  windows = metadata["counts"]["windows_written"]
  assert windows == loop_windows, (windows, loop_windows)
  shutil.rmtree(scratch)

  source_kind = "WAV recordings (48 kHz stereo, untrimmed)" if args.from_wav else \
      "MIDI rendered on the fly (trimmed)"
  print(f"{args.count} real PercePiano performances from {source_kind}, {windows} windows, "
        f"{audio_seconds:.0f} s of audio")
  print(f"{'':<30}{'seconds':>9}{'windows/s':>11}{'x real time':>13}")
  print(f"{'plain loop, 1 process':<30}{loop_s:>9.1f}{windows / loop_s:>11.1f}"
        f"{audio_seconds / loop_s:>13.0f}")
  print(f"{f'Beam job, {args.workers} workers':<30}{job_s:>9.1f}{windows / job_s:>11.1f}"
        f"{audio_seconds / job_s:>13.0f}")
  print(f"job / loop speed: {loop_s / job_s:.2f}x")


if __name__ == "__main__":
  main()
