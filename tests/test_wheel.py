"""The project as a user outside the repository gets it: a wheel, installed, run by its commands.

The wheel is built from the tracked files alone (what a clean clone holds), installed
with --no-deps into a fresh virtual environment that sees the locked environment's
packages but not the project's editable install, and every command runs from a
directory that holds no project code. A package missing from the wheel, a config
file read relative to the repository, or an entry point that does not resolve fails
here rather than on a user's GPU machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(args, cwd, env, timeout=900) -> subprocess.CompletedProcess:
  proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
  root = tmp_path_factory.mktemp("wheel")
  source = root / "source"
  tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
  for name in filter(None, tracked):
    if (REPO / name).is_file():
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, source / name)
  dist = root / "dist"
  _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dist, source], cwd=root, env=os.environ)
  wheel = next(dist.glob("*.whl"))

  env_dir = root / "env"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  site = pathlib.Path(subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip())
  # The locked environment's packages, as a plain path entry: its .pth files (the
  # project's editable install among them) are not processed from there.
  (site / "locked.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        wheel], cwd=root, env=os.environ)
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  return {"bin": env_dir / "bin", "python": python, "wheel": wheel, "cwd": elsewhere, "env": env}


def test_the_wheel_holds_every_package_and_imports_from_its_install(installed):
  code = ("import json, pipelines, train.configs, model, eval, experiments\n"
          "import pipelines.beam.percepiano_job, eval.predict, train.main\n"
          "print(json.dumps({m.__name__: m.__file__ for m in "
          "(pipelines, train.configs, model, eval, experiments)}))")
  proc = _run([installed["python"], "-c", code], installed["cwd"], installed["env"])
  files = json.loads(proc.stdout)
  assert all(str(REPO) not in f and "site-packages" in f for f in files.values()), files


def test_entry_points_run_a_job_a_few_trainer_steps_and_predict(installed):
  bin_, cwd, env = installed["bin"], installed["cwd"], installed["env"]
  _run([bin_ / "ppt-make-corpus", "--output_dir=corpus", "--size=tiny", "--seed=3",
        "--parts=percepiano"], cwd, env)
  _run([bin_ / "ppt-shards-percepiano", "--percepiano_dir=corpus/percepiano",
        "--output_dir=shards", "--test_fraction=0.34", "--num_folds=2", "--window_s=2.56",
        "--hop_s=1.28", "--nowrite_audio", "--direct_running_mode=in_memory",
        "--direct_num_workers=1"], cwd, env)
  assert (cwd / "shards" / "metadata.json").is_file()
  # The config path as the README writes it: read from the installed package.
  _run([bin_ / "ppt-train", "--config=train/configs/finetune.py:tiny", "--workdir=run",
        "--config.data_dir=shards", "--config.model.encoder.num_frames=256",
        "--config.model.encoder.width=32", "--config.model.encoder.depth=1",
        "--config.model.encoder.heads=2", "--config.model.encoder.mlp_dim=64",
        "--config.batch_size=8", "--config.microbatch_size=8", "--config.eval_batch_size=8",
        "--config.num_steps=2", "--config.log_every_steps=1"], cwd, env)
  result = json.loads((cwd / "run" / "result.json").read_text())
  assert result["status"] == "finished" and result["step"] == 2
  # absl exits 1 after printing help; what matters is that the command resolves, imports
  # and describes itself.
  proc = subprocess.run([bin_ / "ppt-predict", "--helpfull"], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "Perceptual scores for recordings" in proc.stdout and "--checkpoint" in proc.stdout
