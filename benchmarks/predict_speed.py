"""Inference speed end to end: x real time of eval.predict from an audio file, tiny/small/base.

  python benchmarks/predict_speed.py [--variants tiny,small,base] [--seconds 120]
      [--reps 3] [--no-levers] [--torch_bf16]
      [--json reports/speed/predict_speed.json] [--txt reports/speed/predict_speed.txt]

The input is a real recording's format: PercePiano MIDI clips (the real release
if present, else a generated corpus) rendered back to back to `--seconds`,
resampled to 44.1 kHz stereo and written as 16-bit WAV, so every rep pays for
decoding and resampling as a user's file would.

For each encoder size (the fine-tuning config's AST: stride 10, one token,
patch pooling, 1024-frame = 10.24 s windows, hop = the job's default 10.24 s,
random-init parameters), `eval.predict.Predictor.predict_file` is timed end to
end (compiled beforehand; compile time reported separately), split into
feature time (decode + resample + log-mel + windows) and model time (the
batched forward of every window, the padded last batch included).

Baseline in the same run: transformers' PyTorch ASTModel (SDPA attention) + a
19-output nn.Linear on the same normalised windows in batches of the same size
(torch.set_num_threads = the cores; inference_mode), end to end = our feature
time + its model time. PyTorch bf16 (autocast) runs only with `--torch_bf16`:
this CPU has no bf16 matmul path (~1 GFLOP/s measured, a base window would take
minutes).

Levers for base (`--no-levers` skips them), each changed alone from the
default (batch `--batch`, blocked attention, float32, hop 10.24 s): batch 4
and 8, attention "plain", bfloat16 compute, the layer scan unrolled, and
stride 16 (a different model: a stride-10 checkpoint would need its position
embeddings resized). A hop longer than the window is not a lever: it leaves
audio unscored (eval.predict refuses it). Each lever is timed as one compiled
call on the file's first batch and projected to the file (feature time +
calls x seconds per call), which keeps the whole benchmark near 10 minutes on
a quiet machine.

x real time = seconds of audio / wall seconds, from the fastest rep (other
work on the 2 cores only ever makes a rep slower; the load average is
printed). The bound column is the best any implementation could do at this
run's measured float32 matmul peak: hop / (matmul FLOPs per window / peak).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np
import soundfile
import soxr
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
import model_speed  # noqa: E402  (the shared FLOP count, matmul peaks and PyTorch model)

from eval import predict, recording  # noqa: E402
from model import ast, multitask, targets  # noqa: E402
from pipelines.audio import frontend, render, windowing  # noqa: E402
from pipelines.corpus import make_corpus
from train.configs import finetune  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
REAL_MIDI = REPO.parent / "shared" / "data" / "percepiano" / "virtuoso" / "data" / "all_2rounds"
FILE_RATE = 44_100
# Feature normalisation statistics do not change the cost; these are the dev run's.
MEAN, STD = -10.18, 3.42


def make_recording(path: pathlib.Path, seconds: float) -> str:
  """Writes a `seconds`-long 44.1 kHz stereo 16-bit WAV of rendered MIDI; returns its source."""
  if REAL_MIDI.is_dir():
    midis, source = sorted(REAL_MIDI.glob("*.mid")), f"real PercePiano MIDI ({REAL_MIDI})"
  else:
    corpus = path.parent / "corpus"
    make_corpus.make_corpus(corpus, "tiny", seed=0)
    midis = sorted((corpus / "percepiano").rglob("*.mid"))
    source = "generated corpus MIDI (real release not found)"
  parts, total, i = [], 0, 0
  while total < seconds * 16000:
    samples = render.render_midi(midis[(i * 97) % len(midis)]).samples  # spread over pieces
    parts.append(samples)
    total += samples.shape[0]
    i += 1
  mono = np.concatenate(parts)[:int(seconds * 16000)]
  up = soxr.resample(mono, 16000, FILE_RATE, quality="HQ")
  soundfile.write(path, np.stack([up, up], axis=1), FILE_RATE, subtype="PCM_16")
  return f"{source}, {i} clips"


def encoder_config(variant: str, **overrides) -> ast.EncoderConfig:
  e = finetune.get_config(variant).model.encoder.to_dict()
  return ast.EncoderConfig(**{**e, "remat": "none", **overrides})


def build(encoder: ast.EncoderConfig, batch: int, hop_s: float) -> predict.Predictor:
  config = multitask.MultiTaskConfig(encoder=encoder)
  model = multitask.MultiTaskModel(config)
  x = np.zeros((1, encoder.num_mel_bins, encoder.num_frames), np.float32)
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  settings = recording.FeatureSettings(
      window=windowing.WindowConfig.from_seconds(encoder.num_frames / 100, hop_s),
      mean=MEAN, std=STD)
  return predict.Predictor(config, params, targets.TargetNormalizer.identity(19), settings,
                           batch_size=batch)


def time_flax(p: predict.Predictor, path: pathlib.Path, reps: int, warm_up: bool) -> dict:
  """Compile, then `reps` end-to-end runs of the file; the fastest of each part."""
  compile_s = p.compile()
  runs = [p.predict_file(path) for _ in range(reps + warm_up)][warm_up:]
  fastest = lambda f: min(f(r) for r in runs)
  return dict(compile_s=compile_s, windows=runs[0].windows, duration_s=runs[0].duration_s,
              feature_s=fastest(lambda r: r.feature_seconds),
              model_s=fastest(lambda r: r.model_seconds), total_s=fastest(lambda r: r.seconds),
              traces=p.traces)


def padded_batches(p: predict.Predictor, path: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
  """The file's model inputs, in the predictor's padded batches (what predict_file runs)."""
  samples = recording.load_samples(path, p.settings)
  windows = recording.windows_of(samples, p.settings, name=str(path))
  out = []
  for start in range(0, len(windows), p.batch_size):
    chunk = list(windows[start:start + p.batch_size])
    chunk += [chunk[-1]] * (p.batch_size - len(chunk))
    out.append((frontend.model_input(chunk, p.settings.mean, p.settings.std),
                np.array([w.valid_frames for w in chunk], np.int32)))
  return out


def time_torch(p: predict.Predictor, batches, reps: int, dtype: str, warm_up: bool) -> float:
  """Fastest seconds of the PyTorch forward over the same padded batches."""
  e = p.model_config.encoder
  # model_speed's PyTorch model, fed our windows instead of random input.
  cfg = transformers.ASTConfig(
      hidden_size=e.width, num_hidden_layers=e.depth, num_attention_heads=e.heads,
      intermediate_size=e.mlp_dim, patch_size=e.patch_size, frequency_stride=e.freq_stride,
      time_stride=e.time_stride, num_mel_bins=e.num_mel_bins, max_length=e.num_frames,
      layer_norm_eps=e.layer_norm_eps)
  cfg._attn_implementation = "sdpa"
  torch.manual_seed(0)
  model, head = transformers.ASTModel(cfg).eval(), torch.nn.Linear(e.width, 19)
  inputs = [torch.from_numpy(x.transpose(0, 2, 1).copy()) for x, _ in batches]  # [B, T, mel]

  def run():
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                enabled=dtype == "bfloat16"):
      for x in inputs:
        head(model(x).pooler_output)
  if warm_up:
    run()
  return min(model_speed._times(run, reps))


def time_one_batch(p: predict.Predictor, path: pathlib.Path, reps: int) -> tuple[float, float]:
  """(compile seconds, fastest seconds of one compiled call on the file's first batch)."""
  compile_s = p.compile()
  x, valid = padded_batches(p, path)[0]
  call = lambda: np.asarray(p._compiled(p.params, x, valid))
  call()  # warm up
  return compile_s, min(model_speed._times(call, reps))


E2E_HEADER = (f"{'size':<6}{'GFLOP/win':>10}{'windows':>8}{'feat s':>8}{'model s':>9}"
              f"{'total s':>9}{'x RT':>7}{'bound':>7}{'torch s':>9}{'torch xRT':>10}"
              f"{'compile':>8}")
LEVER_HEADER = (f"{'base lever':<26}{'batch':>6}{'hop s':>7}{'s/call':>8}{'s/window':>9}"
                f"{'calls':>6}{'proj. total s':>14}{'proj. x RT':>11}{'bound':>7}{'compile':>8}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--seconds", type=float, default=120.0)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=predict.default_batch_size(),
                      help="default: the CLI's (1 on CPU)")
  parser.add_argument("--hop_s", type=float, default=10.24, help="the jobs' default hop")
  parser.add_argument("--no-levers", dest="levers", action="store_false")
  parser.add_argument("--torch_bf16", action="store_true")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--workdir", default="/tmp/predict_speed")
  parser.add_argument("--json", default="reports/speed/predict_speed.json")
  parser.add_argument("--txt", default="reports/speed/predict_speed.txt")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  t_start = time.perf_counter()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  path = work / "recording.wav"
  source = make_recording(path, args.seconds)
  peaks = model_speed.matmul_peaks()
  peak = peaks["flax/float32"]
  lines = [f"command: python benchmarks/{pathlib.Path(__file__).name} " + " ".join(sys.argv[1:]),
           f"input: {path.name}, {args.seconds:g} s, {FILE_RATE} Hz stereo 16-bit WAV from {source}",
           f"devices: {jax.devices()}, {os.cpu_count()} cores, torch threads "
           f"{torch.get_num_threads()}",
           "matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()),
           # Other work on the 2 cores slows every row alike; the load says how much there was.
           "load average (1/5/15 min) at the start: %.2f %.2f %.2f" % os.getloadavg(),
           "",
           f"End to end from the WAV (predict_file; AST stride 10, float32, blocked attention, "
           f"batch {args.batch}, hop {args.hop_s:g} s, 10.24 s windows):",
           E2E_HEADER]
  print("\n".join(lines), flush=True)

  e2e = []
  for variant in args.variants.split(","):
    encoder = encoder_config(variant)
    p = build(encoder, args.batch, args.hop_s)
    # A base run takes ~30 s (minutes under load): one rep, no warm-up run (the
    # compile is done before; a first call costs nothing extra measurable at this size).
    reps, warm = (args.reps, True) if variant != "base" else (1, False)
    r = time_flax(p, path, reps, warm)
    flops = model_speed.flops_per_window(encoder)
    time.sleep(0.5)  # let XLA's spinning threads go idle before PyTorch starts
    r["torch_model_s"] = time_torch(p, padded_batches(p, path), reps, "float32", warm)
    if args.torch_bf16:
      r["torch_bf16_model_s"] = time_torch(p, padded_batches(p, path), 1, "bfloat16", False)
    r.update(variant=variant, batch=args.batch, hop_s=args.hop_s, gflop_per_window=flops / 1e9,
             realtime=r["duration_s"] / r["total_s"],
             torch_realtime=r["duration_s"] / (r["feature_s"] + r["torch_model_s"]),
             bound=args.hop_s / (flops / peak))
    e2e.append(r)
    lines.append(f"{variant:<6}{flops / 1e9:>10.1f}{r['windows']:>8}{r['feature_s']:>8.2f}"
                 f"{r['model_s']:>9.2f}{r['total_s']:>9.2f}{r['realtime']:>7.1f}"
                 f"{r['bound']:>7.1f}{r['torch_model_s']:>9.2f}{r['torch_realtime']:>10.1f}"
                 f"{r['compile_s']:>8.1f}")
    print(lines[-1], flush=True)

  levers = []
  base_row = next((r for r in e2e if r["variant"] == "base"), None)
  if args.levers and base_row is not None:
    lines += ["", "Base levers, each changed alone from the default: one compiled call on the "
              "file's first batch (fastest of 2 after a warm-up); projected total = feature s "
              "above + calls x s/call for this file.", LEVER_HEADER]
    print("\n".join(lines[-3:]), flush=True)
    base = encoder_config("base")
    b = args.batch
    plan = [("default", base, b, args.hop_s),
            ("batch 4", base, 4, args.hop_s),
            ("batch 8", base, 8, args.hop_s),
            ("attention plain", base.replace(attention="plain"), b, args.hop_s),
            ("bfloat16", base.replace(dtype="bfloat16"), b, args.hop_s),
            ("scan unrolled (12 layers)", base.replace(scan_unroll=base.depth), b, args.hop_s),
            ("stride 16 (other model)", base.replace(freq_stride=16, time_stride=16), b,
             args.hop_s)]
    for lever, encoder, batch, hop_s in plan:
      p = build(encoder, batch, hop_s)
      compile_s, call_s = time_one_batch(p, path, 2)
      windows = len(recording.windows_of(recording.load_samples(path, p.settings), p.settings,
                                       name=str(path)))
      calls = -(-windows // batch)
      total = base_row["feature_s"] + calls * call_s
      flops = model_speed.flops_per_window(encoder)
      r = dict(lever=lever, dtype=encoder.dtype, attention=encoder.attention,
               stride=encoder.freq_stride, scan_unroll=encoder.scan_unroll, batch=batch,
               hop_s=hop_s, windows=windows, calls=calls, call_s=call_s,
               window_s=call_s / batch, projected_total_s=total,
               projected_realtime=base_row["duration_s"] / total,
               bound=hop_s / (flops / peak), compile_s=compile_s)
      levers.append(r)
      lines.append(f"{lever:<26}{batch:>6}{hop_s:>7.2f}{call_s:>8.2f}{r['window_s']:>9.2f}"
                   f"{calls:>6}{total:>14.1f}{r['projected_realtime']:>11.1f}{r['bound']:>7.1f}"
                   f"{compile_s:>8.1f}")
      print(lines[-1], flush=True)

  end = model_speed.matmul_peaks()
  lines += ["", "x RT = audio seconds / wall seconds (fastest rep); bound = the float32 matmul "
            "peak's limit, hop / (FLOPs per window / peak).",
            "matmul peak GFLOP/s at the end: " +
            ", ".join(f"{k} {v / 1e9:.0f}" for k, v in end.items()),
            "load average (1/5/15 min) at the end: %.2f %.2f %.2f" % os.getloadavg(),
            f"benchmark wall time: {time.perf_counter() - t_start:.0f} s"]
  print("\n".join(lines[-4:]))
  doc = {"input_seconds": args.seconds, "source": source, "threads": args.threads,
         "peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
         "end_peaks_gflops": {k: v / 1e9 for k, v in end.items()},
         "end_to_end": e2e, "base_levers": levers}
  for out, text in ((args.txt, "\n".join(lines) + "\n"), (args.json, json.dumps(doc, indent=1)
                                                          + "\n")):
    if out:
      pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(out).write_text(text)
  print(f"wrote {args.txt} and {args.json}")


if __name__ == "__main__":
  main()
