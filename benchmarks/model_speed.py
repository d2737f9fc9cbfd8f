"""AST speed: our Flax encoder against `transformers`' PyTorch ASTModel, in one run, on any device.

  python benchmarks/model_speed.py [--variants tiny,small,base] [--strides 16,10]
      [--dtypes float32,bfloat16] [--batch config|N] [--reps 5] [--frameworks flax,torch]
      [--attention auto|blocked|fused|plain] [--float32_matmul highest|tf32] [--json out.json]

Runs unchanged on whatever `jax.devices()` gives (CPU, GPU, TPU) and on the CUDA device
PyTorch sees, on Python 3.11 and 3.12: it imports jax, flax, optax and numpy (and torch +
transformers for the comparison, only when `--frameworks` names torch) and this
repository's `model/` package (pure Flax), found from the script's own path — not the
project's locked environment. On a GPU/TPU host with those preinstalled:

  git clone REPO && cd REPO && python benchmarks/model_speed.py --json speed.json

`--batch=config` (the default on an accelerator) is the fine-tuning configs' batch
(`CONFIG_BATCH`, checked against train/configs/finetune.py by a test); on a CPU the
default is 1 window, since a base batch of 32 takes minutes per step on 2 cores.

For every (variant, patch stride, dtype): seconds per window for the forward
pass (inference) and for a training step (forward + backward + AdamW on a
19-output regression head over the pooled embedding), for

  flax   model.ast.Encoder (`--attention`, default the config's "auto": the blocked
         kernel on a CPU, jax.nn.dot_product_attention on a GPU/TPU; bf16 = bf16
         compute, f32 master weights), jitted once, the train state donated (updated
         in place, as torch.optim does), results blocked on.
  torch  transformers.ASTModel with SDPA attention + nn.Linear + torch.optim.AdamW
         (bf16 = torch.autocast on CPU, the standard mixed-precision recipe),
         torch.set_num_threads = the cores JAX uses.

Timings alternate between the two frameworks in blocks of reps, twice, with a
pause before each block (median of `--reps` after warm-up); the ratio column is
torch time / flax time (> 1: Flax faster). FLOPs are the matmul-type FLOPs of
one window (2 per multiply-add; a training step counts 3x the forward); % peak
is against the matmul peak measured for each framework and dtype in the same
run (1024³ matmuls on a CPU, 4096³ on an accelerator, where small matmuls cannot fill the
chip): the model-FLOPs utilisation (MFU) against that device's measured peak.

float32 means float32 arithmetic in both frameworks (`--float32_matmul=highest`, the
default): JAX on a GPU would otherwise run float32 matmuls as TF32 while PyTorch does not
(torch.backends.cuda.matmul.allow_tf32 is off by default), which is not one comparison.
`--float32_matmul=tf32` lets both use TF32 (JAX's "tensorfloat32", PyTorch's "high").

Also per row: compile time (Flax: lowering + XLA compilation of the forward and of the
training step; PyTorch: its first, eager calls), and peak device memory of the training
step: for Flax the compiled training step's own footprint (XLA's memory analysis:
arguments + outputs + temporaries − donated aliases; JAX's runtime peak never resets, so
it would carry over from earlier rows, and it is kept as `flax_process_peak_mib`), for
PyTorch `torch.cuda.max_memory_allocated` since the row began (null on a CPU, where the
JSON's `peak_rss_mib` is the whole process's peak resident memory instead).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import statistics
import sys
import time

# JAX takes 75 % of a GPU's memory at start by default, leaving PyTorch in the same process
# too little for a base training step at stride 10: allocate on demand instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

# The repository's pure-Flax model package, without installing the project.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from model import ast, attention  # noqa: E402

# The fine-tuning configs' batch (train/configs/finetune.py, every variant).
CONFIG_BATCH = 32
# What this script may import beyond the standard library and this repository's model/
# (tests/test_model_speed.py checks the script and the model modules it loads).
ALLOWED_IMPORTS = ("jax", "flax", "optax", "numpy", "torch", "transformers")


def flops_per_window(c: ast.EncoderConfig) -> float:
  n, d = c.length, c.width
  per_layer = 2 * n * (4 * d * d + 2 * d * c.mlp_dim) + 4 * n * n * d
  return c.depth * per_layer + 2 * c.num_patches * c.patch_size ** 2 * d


def _times(fn, reps: int) -> list[float]:
  """Wall-clock seconds of each of `reps` calls of `fn`."""
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def on_accelerator() -> bool:
  return jax.default_backend() != "cpu"


def torch_device(torch) -> str:
  return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sync(torch) -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def matmul_peaks(frameworks=("flax", "torch"), n: int | None = None,
                 reps: int = 20) -> dict[str, float]:
  """Best n³ matmul rate per framework and dtype (FLOP/s); the best of many reps, because
  a noisy neighbour only ever makes a rep slower."""
  n = n or (4096 if on_accelerator() else 1024)
  flops = 2 * n ** 3
  peaks = {}
  if "flax" in frameworks:
    a = jax.random.normal(jax.random.key(0), (n, n))
    f32 = jax.jit(lambda a: a @ a)
    bf16 = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    ab = a.astype(jnp.bfloat16)
    for name, fn, x in (("flax/float32", f32, a), ("flax/bfloat16", bf16, ab)):
      fn(x).block_until_ready()
      peaks[name] = flops / min(_times(lambda: fn(x).block_until_ready(), reps))
  if "torch" in frameworks:
    import torch
    t = torch.randn(n, n, device=torch_device(torch))
    tb = t.bfloat16()
    for name, x, n_reps in (("torch/float32", t, reps), ("torch/bfloat16", tb, 2)):
      x @ x  # bf16 has no fast path on AVX2-only CPUs (~2 s per matmul): few reps
      _torch_sync(torch)

      def run(x=x):
        x @ x
        _torch_sync(torch)
      peaks[name] = flops / min(_times(run, n_reps))
  return peaks


def jax_peak_memory() -> int | None:
  """Peak bytes the default device has held (None where it does not say: CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def set_float32_matmul(mode: str, frameworks) -> None:
  """One float32 matmul precision for both frameworks (module doc)."""
  jax.config.update("jax_default_matmul_precision",
                    {"highest": "highest", "tf32": "tensorfloat32"}[mode])
  if "torch" in frameworks:
    import torch
    torch.set_float32_matmul_precision({"highest": "highest", "tf32": "high"}[mode])
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


def compiled_mib(compiled) -> float | None:
  """A compiled step's device footprint from XLA's memory analysis (None where the
  backend gives none)."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  used = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return used / 2 ** 20


def _flax_fns(c: ast.EncoderConfig, batch: int):
  encoder = ast.Encoder(c)
  x = jax.random.normal(jax.random.key(0), (batch, c.num_mel_bins, c.num_frames))
  y = jnp.zeros((batch, 19))
  params = jax.jit(encoder.init)(jax.random.key(1), x)["params"]
  head = {"w": jnp.zeros((c.width, 19)), "b": jnp.zeros(19)}
  state = {"encoder": params, "head": head}
  tx = optax.adamw(1e-4, b1=0.9, b2=0.999, weight_decay=0.01)
  opt = tx.init(state)

  @jax.jit
  def forward(state, x):
    pooled = encoder.apply({"params": state["encoder"]}, x)["pooled"].astype(jnp.float32)
    return pooled @ state["head"]["w"] + state["head"]["b"]

  # Donated like the trainer does: the update reuses the parameter and optimiser
  # buffers in place, as torch.optim does, instead of allocating ~3x the model per step.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(state, opt, x, y, rng):
    def loss_fn(s):
      pooled = encoder.apply({"params": s["encoder"]}, x, train=True,
                             rngs={"dropout": rng})["pooled"].astype(jnp.float32)
      return jnp.mean((pooled @ s["head"]["w"] + s["head"]["b"] - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state)
    updates, opt = tx.update(grads, opt, state)
    return optax.apply_updates(state, updates), opt, loss

  holder = {"state": state, "opt": opt}
  t0 = time.perf_counter()
  forward = forward.lower(state, x).compile()
  train_step = train_step.lower(state, opt, x, y, jax.random.key(2)).compile()
  compile_s = time.perf_counter() - t0

  def run_forward():
    forward(holder["state"], x).block_until_ready()

  def run_train():
    s, o, loss = train_step(holder["state"], holder["opt"], x, y, jax.random.key(2))
    loss.block_until_ready()
    holder["state"], holder["opt"] = s, o

  count = sum(a.size for a in jax.tree.leaves(params))
  return run_forward, run_train, compile_s, compiled_mib(train_step), count


def _torch_fns(c: ast.EncoderConfig, batch: int, dtype: str):
  import torch
  import transformers
  device = torch_device(torch)
  cfg = transformers.ASTConfig(
      hidden_size=c.width, num_hidden_layers=c.depth, num_attention_heads=c.heads,
      intermediate_size=c.mlp_dim, patch_size=c.patch_size, frequency_stride=c.freq_stride,
      time_stride=c.time_stride, num_mel_bins=c.num_mel_bins, max_length=c.num_frames,
      layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=c.dropout,
      attention_probs_dropout_prob=0.0)
  cfg._attn_implementation = "sdpa"
  torch.manual_seed(0)
  model = transformers.ASTModel(cfg).to(device)
  head = torch.nn.Linear(c.width, 19).to(device)
  params = list(model.parameters()) + list(head.parameters())
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)
  x = torch.randn(batch, c.num_frames, c.num_mel_bins, device=device)
  y = torch.zeros(batch, 19, device=device)
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16" else (
      lambda: torch.autocast(device, enabled=False))

  def run_forward():
    model.eval()
    with torch.inference_mode(), autocast():
      head(model(x).pooler_output)
    _torch_sync(torch)

  def run_train():
    model.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = torch.mean((head(model(x).pooler_output).float() - y) ** 2)
    loss.backward()
    opt.step()
    _torch_sync(torch)

  return run_forward, run_train


def torch_peak_memory() -> int | None:
  import torch
  return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def _reset_torch_peak() -> None:
  import torch
  if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()


def _batch(text: str) -> int:
  if text == "config":
    return CONFIG_BATCH
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"--batch must be config or a positive number, got {text!r}")
  return int(text)


def _mib(n: int | None) -> float | None:
  return None if n is None else n / 2 ** 20


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variants", default="tiny,small,base")
  parser.add_argument("--strides", default="16,10")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--batch", type=_batch, default=None,
                      help="config (the fine-tuning batch, %d) or N; default: config on an "
                      "accelerator, 1 on a CPU" % CONFIG_BATCH)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--pause_s", type=float, default=0.5)
  parser.add_argument("--frameworks", default="flax,torch",
                      help="flax, torch or both (torch needs torch + transformers)")
  parser.add_argument("--peak_n", type=int, default=None,
                      help="side of the square matmul that measures the peak (default 4096 on "
                      "an accelerator, 1024 on a CPU; smaller underestimates the peak)")
  parser.add_argument("--attention", default="auto", choices=attention.KERNELS,
                      help="the Flax encoder's attention kernel (model/attention.py)")
  parser.add_argument("--float32_matmul", default="highest", choices=("highest", "tf32"),
                      help="float32 matmul precision, the same for both frameworks")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  frameworks = args.frameworks.split(",")
  if not set(frameworks) <= {"flax", "torch"} or not frameworks:
    parser.error(f"--frameworks must name flax and/or torch, got {args.frameworks!r}")
  batch = args.batch or (CONFIG_BATCH if on_accelerator() else 1)
  set_float32_matmul(args.float32_matmul, frameworks)
  if "torch" in frameworks:
    import torch
    torch.set_num_threads(args.threads)

  peaks = matmul_peaks(frameworks, args.peak_n)
  devices = [str(d) for d in jax.devices()]
  torch_on = torch_device(torch) if "torch" in frameworks else None
  kernel = attention.resolve(args.attention)
  print(f"python {sys.version.split()[0]}, jax {jax.__version__} on {devices}, "
        f"torch on {torch_on}, batch {batch}, flax attention {kernel}, "
        f"float32 matmul {args.float32_matmul}")
  print("matmul peak GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()))
  header = (f"{'variant':<7}{'stride':>7}{'dtype':>10}{'GFLOP fwd':>10}"
            f"{'flax fwd ms':>12}{'torch fwd ms':>13}{'ratio':>7}"
            f"{'flax train ms':>14}{'torch train ms':>15}{'ratio':>7}"
            f"{'flax MFU fwd/train':>20}{'torch MFU fwd/train':>21}"
            f"{'compile s flax/torch':>22}{'peak MiB flax/torch':>21}")
  print(header + "   (per window)")

  def write(rows, end_peaks):
    """The JSON after every row, so rows measured before a failure or a time limit remain."""
    if not args.json:
      return
    with open(args.json, "w") as f:
      json.dump({"python": sys.version.split()[0], "jax": jax.__version__, "devices": devices,
                 "torch_device": torch_on, "frameworks": frameworks,
                 "peaks_gflops": {k: v / 1e9 for k, v in peaks.items()},
                 "end_peaks_gflops": end_peaks and {k: v / 1e9 for k, v in end_peaks.items()},
                 "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "rows": rows, "batch": batch, "threads": args.threads,
                 "flax_attention": kernel, "float32_matmul": args.float32_matmul,
                 "complete": end_peaks is not None}, f, indent=1)

  rows = []
  for variant in args.variants.split(","):
    for stride in (int(s) for s in args.strides.split(",")):
      for dtype in args.dtypes.split(","):
        try:
          row = _measure(args, frameworks, batch, peaks, variant, stride, dtype)
        except Exception as e:  # noqa: BLE001 -- e.g. out of device memory: say so, go on
          row = dict(variant=variant, stride=stride, dtype=dtype, batch=batch,
                     error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
          print(f"{variant:<7}{stride:>7}{dtype:>10}  failed: {row['error']}", flush=True)
        rows.append(row)
        write(rows, None)
  end_peaks = matmul_peaks(frameworks, args.peak_n)
  print("matmul peak GFLOP/s at the end: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in end_peaks.items()))
  write(rows, end_peaks)
  if any("error" in r for r in rows):
    sys.exit(1)


def _measure(args, frameworks, batch, peaks, variant, stride, dtype) -> dict:
  """One (variant, stride, dtype) row: times, ratios, MFU, compile time, memory."""
  both, nan = len(frameworks) == 2, float("nan")
  c = ast.variant(variant, freq_stride=stride, time_stride=stride, dtype=dtype,
                  attention=args.attention)
  fl = flops_per_window(c)
  fns, compile_s, flax_step_mib, count = {}, {"flax": None, "torch": None}, None, None
  if "flax" in frameworks:
    (fns["flax_fwd"], fns["flax_train"], compile_s["flax"], flax_step_mib,
     count) = _flax_fns(c, batch)
  if "torch" in frameworks:
    _reset_torch_peak()
    fns["torch_fwd"], fns["torch_train"] = _torch_fns(c, batch, dtype)
    t0 = time.perf_counter()
    fns["torch_fwd"](), fns["torch_train"]()  # PyTorch's first calls: its "compile"
    compile_s["torch"] = time.perf_counter() - t0
  # PyTorch's bf16 path has no hardware support on AVX2-only CPUs and takes ~100 s
  # per base train step there: fewer repetitions for base.
  reps = args.reps if variant != "base" else max(3, args.reps // 2)
  for fn in fns.values():
    fn()  # warm up
  times = {k: [] for k in fns}
  # Alternating blocks (flax, torch, flax, torch) so machine load hits both alike; a
  # pause before each block lets the other framework's spinning worker threads
  # (OpenMP, Eigen) go idle, so neither starts on a core the other still occupies.
  for _ in range(2):
    for name in ("flax_fwd", "torch_fwd", "flax_train", "torch_train"):
      if name in fns:
        time.sleep(args.pause_s)
        times[name] += _times(fns[name], -(-reps // 2))
  med = {k: statistics.median(v) / batch for k, v in times.items()}
  get = lambda k: med.get(k, nan)  # noqa: E731
  mfu = {f: (100 * fl / get(f"{f}_fwd") / peaks[f"{f}/{dtype}"],
             100 * 3 * fl / get(f"{f}_train") / peaks[f"{f}/{dtype}"])
         if f in frameworks else (nan, nan) for f in ("flax", "torch")}
  row = dict(variant=variant, stride=stride, dtype=dtype, batch=batch,
             gflop_forward=fl / 1e9, **{f"{k}_s": v for k, v in med.items()},
             forward_ratio=get("torch_fwd") / get("flax_fwd") if both else None,
             train_ratio=get("torch_train") / get("flax_train") if both else None,
             flax_mfu_pct=mfu["flax"], torch_mfu_pct=mfu["torch"],
             flax_compile_s=compile_s["flax"], torch_first_calls_s=compile_s["torch"],
             flax_peak_mib=flax_step_mib,
             torch_peak_mib=_mib(torch_peak_memory()) if "torch" in frameworks else None,
             flax_param_count=count,
             flax_process_peak_mib=_mib(jax_peak_memory()) if "flax" in frameworks else None)
  show = lambda v, f: "-" if v is None or v != v else format(v, f)  # noqa: E731
  ms = lambda k: show(get(k) * 1e3, ".4g")  # noqa: E731
  print(f"{variant:<7}{stride:>7}{dtype:>10}{fl / 1e9:>10.1f}"
        f"{ms('flax_fwd'):>12}{ms('torch_fwd'):>13}{show(row['forward_ratio'], '.2f'):>7}"
        f"{ms('flax_train'):>14}{ms('torch_train'):>15}{show(row['train_ratio'], '.2f'):>7}"
        f"{show(mfu['flax'][0], '.0f') + ' / ' + show(mfu['flax'][1], '.0f'):>20}"
        f"{show(mfu['torch'][0], '.0f') + ' / ' + show(mfu['torch'][1], '.0f'):>21}"
        f"{show(compile_s['flax'], '.1f') + ' / ' + show(compile_s['torch'], '.1f'):>22}"
        f"{show(row['flax_peak_mib'], '.0f') + ' / ' + show(row['torch_peak_mib'], '.0f'):>21}",
        flush=True)
  return row


if __name__ == "__main__":
  main()
