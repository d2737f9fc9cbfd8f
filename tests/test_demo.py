"""`python -m pipelines.walkthrough` as a user runs it: a real subprocess on the real release."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.real_data
def test_demo_renders_a_real_performance(percepiano_dir, tmp_path):
  key = "Beethoven_WoO80_var27_8bars_1_15"
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.walkthrough", f"--percepiano_dir={percepiano_dir}",
       f"--key={key}", f"--output_dir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "1202 rated performances" in proc.stdout
  assert f"Performance {key}" in proc.stdout
  summary = json.loads((tmp_path / f"{key}.summary.json").read_text())
  logmel = np.load(tmp_path / f"{key}.logmel.npy")
  samples, rate = soundfile.read(tmp_path / f"{key}.wav")
  assert rate == 16_000
  assert summary["features_shape"] == list(logmel.shape) == [(len(samples) - 400) // 160 + 1, 128]
  assert f"Log-mel features: {list(logmel.shape)}" in proc.stdout
  assert summary["labels"]["timing_stability"] == pytest.approx(0.4857, abs=1e-4)


@pytest.mark.real_data
def test_demo_unknown_key_fails_clearly(percepiano_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "pipelines.walkthrough", f"--percepiano_dir={percepiano_dir}",
       "--key=Nobody_X_8bars_1_1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "Nobody_X_8bars_1_1" in proc.stderr and "is not a key" in proc.stderr
