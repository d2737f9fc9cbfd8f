"""benchmarks/model_speed.py: the accelerator-ready model benchmark, at the tiny size.

It must run on a GPU/TPU host with only jax, flax, optax, numpy (and torch +
transformers for the comparison) installed, so the imports of the script and of the
repository modules it loads are checked against that list, and a tiny run of the
whole script (both frameworks, one dtype, one stride) must write every field.
"""

from __future__ import annotations

import ast as python_ast
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "model_speed.py"


def _imports(path: pathlib.Path) -> set[str]:
  """Dotted names imported anywhere in a file (function-level imports included)."""
  names = set()
  for node in python_ast.walk(python_ast.parse(path.read_text())):
    if isinstance(node, python_ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, python_ast.ImportFrom) and node.level == 0:
      if node.module == "model":  # `from model import ast`: the module model/ast.py
        names |= {f"model.{a.name}" for a in node.names}
      else:
        names.add(node.module)
  return names


def _third_party(path: pathlib.Path, seen: set[pathlib.Path] | None = None) -> set[str]:
  """Top-level packages a file needs outside the standard library, following the
  repository's own model/ modules it imports."""
  seen = set() if seen is None else seen
  seen.add(path)
  out = set()
  for name in _imports(path):
    top = name.split(".")[0]
    if top == "__future__" or top in sys.stdlib_module_names:
      continue
    if top == "model":
      module = REPO / (name.replace(".", "/") + ".py")
      assert module.is_file(), f"{path.name} imports {name}, which is not a model/ module"
      if module not in seen:
        out |= _third_party(module, seen)
      continue
    out.add(top)
  return out


def _model_speed():
  """The benchmark script as a module (benchmarks/ is not a package)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import model_speed
  finally:
    sys.path.remove(str(REPO / "benchmarks"))
  return model_speed


def test_the_benchmark_imports_only_what_an_accelerator_host_has():
  model_speed = _model_speed()
  needed = _third_party(SCRIPT)
  assert needed <= set(model_speed.ALLOWED_IMPORTS), needed - set(model_speed.ALLOWED_IMPORTS)
  assert {"jax", "optax"} <= needed  # the check sees the script's imports at all
  # torch and transformers only inside functions: the script imports without them.
  top_level = {n.split(".")[0] for n in _imports_at_top(SCRIPT)}
  assert not top_level & {"torch", "transformers"}


def _imports_at_top(path: pathlib.Path) -> set[str]:
  tree = python_ast.parse(path.read_text())
  names = set()
  for node in tree.body:
    if isinstance(node, python_ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, python_ast.ImportFrom) and node.level == 0:
      names.add(node.module)
  return names


def test_the_config_batch_is_the_fine_tuning_configs():
  model_speed = _model_speed()
  from train.configs import finetune
  for variant in ("tiny", "small", "base"):
    assert finetune.get_config(variant).batch_size == model_speed.CONFIG_BATCH, variant


def test_a_tiny_run_compares_both_frameworks_and_writes_every_field(tmp_path):
  out = tmp_path / "speed.json"
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--variants=tiny,nosuch", "--strides=16",
       "--dtypes=float32", "--reps=1", "--pause_s=0", "--batch=2", "--peak_n=256",
       f"--json={out}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
  # A row that fails (here an unknown variant; on a GPU, running out of memory) is recorded
  # with its error, the other rows are still measured, and the run exits non-zero.
  assert proc.returncode == 1, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["complete"] and "failed: ValueError: unknown encoder variant" in proc.stdout
  row, failed = result["rows"]
  assert failed["variant"] == "nosuch" and "unknown encoder variant" in failed["error"]
  assert result["frameworks"] == ["flax", "torch"] and result["batch"] == 2
  assert result["python"] == sys.version.split()[0] and result["devices"]
  assert set(result["peaks_gflops"]) == {"flax/float32", "flax/bfloat16", "torch/float32",
                                         "torch/bfloat16"}
  assert (row["variant"], row["stride"], row["dtype"], row["batch"]) == ("tiny", 16, "float32", 2)
  for k in ("flax_fwd_s", "torch_fwd_s", "flax_train_s", "torch_train_s", "flax_compile_s",
            "torch_first_calls_s"):
    assert row[k] > 0, k
  assert row["forward_ratio"] == row["torch_fwd_s"] / row["flax_fwd_s"]
  assert row["train_ratio"] == row["torch_train_s"] / row["flax_train_s"]
  # MFU: the window's FLOPs per second over the measured matmul peak, forward and train.
  flax_fwd_mfu = 100 * row["gflop_forward"] * 1e9 / row["flax_fwd_s"] / (
      result["peaks_gflops"]["flax/float32"] * 1e9)
  assert abs(row["flax_mfu_pct"][0] - flax_fwd_mfu) < 1e-6 * flax_fwd_mfu
  assert 0 < row["flax_mfu_pct"][1] and 0 < row["torch_mfu_pct"][0]
  # Flax's figure is its compiled step's footprint, at least the donated state (parameters
  # and two AdamW moments, float32) that it updates; PyTorch reports no memory on a CPU.
  params = row["flax_param_count"]
  assert params > 0 and row["flax_peak_mib"] >= 3 * 4 * params / 2 ** 20
  assert result["flax_attention"] == "blocked" and result["float32_matmul"] == "highest"
  if result["devices"][0].startswith("cpu") or "Cpu" in result["devices"][0]:
    assert row["torch_peak_mib"] is None and result["peak_rss_mib"] > 0
  assert "ratio" in proc.stdout and "MFU" in proc.stdout


@pytest.mark.slow  # a second compile of the tiny model (~30 s alone, minutes on busy cores)
def test_a_flax_only_run_needs_no_torch(tmp_path):
  """--frameworks=flax never imports torch or transformers (a host without them)."""
  code = ("import runpy, sys; sys.argv = ['model_speed.py', '--variants=tiny', '--strides=16', "
          "'--dtypes=float32', '--reps=1', '--pause_s=0', '--frameworks=flax']; "
          f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__'); "
          "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & "
          "{'torch', 'transformers'}))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                        text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "LOADED []" in proc.stdout
  assert " - " in proc.stdout.splitlines()[3]  # the torch columns are empty
  bad = subprocess.run([sys.executable, str(SCRIPT), "--frameworks=tensorflow"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode == 2 and "--frameworks must name flax and/or torch" in bad.stderr


@pytest.mark.slow  # twelve compiles of the tiny model
def test_the_lever_benchmark_times_every_lever_against_pytorch(tmp_path):
  out = tmp_path / "levers.json"
  # Stride 10 (1214 tokens): the shipped kernel loops the backward's blocks there, so the
  # partial-unroll lever compiles a program of its own.
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "step_levers.py"), "--cases=tiny/10",
       "--reps=1", "--pause_s=0", f"--json={out}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = json.loads(out.read_text())["rows"]
  levers = {"shipped", "threefry", "no dropout", "unrolled", "all heads", "fused", "block 128",
            "block 512", "bwd unroll 2", "no attention", "trainer", "pytorch"}
  assert row["case"] == "tiny/10" and set(row["seconds"]) == levers
  for k, s in row["seconds"].items():
    assert s > 0 and row["ratio"][k] == row["seconds"]["pytorch"] / s, k


def test_the_lever_benchmark_refuses_an_unknown_lever(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "step_levers.py"), "--levers=shipped,flash"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2 and "--levers: unknown ['flash']" in proc.stderr, proc.stderr[-2000:]
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "step_levers.py"), "--step=forward",
       "--levers=shipped,trainer"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 2 and "trainer is a training step" in proc.stderr, proc.stderr[-2000:]


def test_the_lever_benchmark_times_the_forward_pass(tmp_path):
  """--step forward: the shipped forward and the attention-free bound against PyTorch's."""
  out = tmp_path / "forward.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "step_levers.py"), "--cases=tiny/16",
       "--step=forward", "--levers=shipped,no attention", "--reps=1", "--pause_s=0",
       f"--json={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  (row,) = result["rows"]
  assert result["step"] == "forward" and set(row["seconds"]) == {"shipped", "no attention",
                                                                  "pytorch"}
  assert all(s > 0 for s in row["seconds"].values())


# The other speed benchmarks import model_speed's helpers: one changed signature broke both
# (make bench-predict and make bench-train failed at start, 2026-12-04). Each runs once, tiny.
@pytest.mark.slow  # ~1-2 min: a tiny predict benchmark end to end
def test_the_predict_benchmark_runs_and_writes_its_reports(tmp_path):
  out = tmp_path / "predict.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "predict_speed.py"), "--variants=tiny",
       "--seconds=12", "--reps=1", "--no-levers", f"--workdir={tmp_path / 'work'}",
       f"--json={out}", f"--txt={tmp_path / 'predict.txt'}"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(out.read_text())
  assert "tiny" in json.dumps(doc) and (tmp_path / "predict.txt").read_text().startswith("command:")


@pytest.mark.slow  # ~3-5 min: the trainer's tiny step (microbatch 16) against PyTorch's
def test_the_trainer_benchmark_runs_and_writes_its_json(tmp_path):
  out = tmp_path / "train.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--variants=tiny",
       "--dtypes=float32", "--reps=2", "--pause_s=0", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = json.loads(out.read_text())["rows"]
  assert row["variant"] == "tiny" and row["flax_s"] > 0 and row["torch_s"] > 0
  assert row["ratio"] == row["torch_s"] / row["flax_s"]
