"""Calibration of eval.statistics on simulations with known truth (larger than the tests').

  python benchmarks/statistics_calibration.py [--trials=1000] [--out=reports/calibration/statistics_calibration.txt]

Reports, per setting: the 95 % percentile-bootstrap CI's coverage of the true
Pearson r (overall and within passage), the type-I error at alpha = 0.05 of
Williams' t, Steiger's Z and the paired bootstrap when two models correlate
equally with the labels, and Holm's family-wise error over 19 null tests.
Each rate is printed with its Monte-Carlo standard error.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from eval import statistics
from train import metrics


def _rate(hits: int, trials: int) -> str:
  p = hits / trials
  return f"{p:.3f} ± {np.sqrt(p * (1 - p) / trials):.3f}"


def coverage(trials: int, n: int, rho: float, resamples: int, seed: int) -> int:
  rng = np.random.default_rng(seed)
  hits = 0
  for t in range(trials):
    x, y = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n).T
    reps = statistics.replicate_scores("pearson", x[:, None], y[:, None], np.ones((n, 1), bool),
                                       statistics.bootstrap_weights(n, resamples, t))
    low, high = statistics.percentile_interval(reps)
    hits += low[0] <= rho <= high[0]
  return hits


def coverage_within(trials: int, passages: int, performers: int, rho: float, resamples: int,
                    seed: int) -> int:
  """Passage offsets on both variables; the within-passage correlation is rho by construction."""
  rng = np.random.default_rng(seed)
  n = passages * performers
  names = np.repeat(np.arange(passages), performers).astype(str)
  hits = 0
  for t in range(trials):
    x, y = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n).T
    offsets = np.repeat(rng.normal(0, 2, (passages, 2)), performers, axis=0)
    x, y = x + offsets[:, 0], y + offsets[:, 1]
    reps = statistics.replicate_scores("pearson_within", x[:, None], y[:, None],
                                       np.ones((n, 1), bool),
                                       statistics.bootstrap_weights(n, resamples, t), names)
    low, high = statistics.percentile_interval(reps)
    hits += low[0] <= rho <= high[0]
  return hits


def type_one(trials: int, n: int, resamples: int, seed: int) -> dict[str, int]:
  rng = np.random.default_rng(seed)
  cov = np.array([[1, 0.5, 0.5], [0.5, 1, 0.6], [0.5, 0.6, 1]])
  hits = {"williams": 0, "steiger": 0, "paired bootstrap": 0}
  for t in range(trials):
    y, a, b = rng.multivariate_normal(np.zeros(3), cov, size=n).T
    args = (metrics.pearson(a, y), metrics.pearson(b, y), metrics.pearson(a, b), n)
    hits["williams"] += statistics.williams_test(*args)[1] < 0.05
    hits["steiger"] += statistics.steiger_z(*args)[1] < 0.05
    tile = lambda v: np.tile(v[:, None], (1, 19))  # the statistics run on all 19 dimensions
    out = statistics.paired_bootstrap("pearson", tile(a), tile(b), tile(y), np.ones((n, 19), bool),
                                      resamples=resamples, seed=t)
    hits["paired bootstrap"] += out["timing_stability"]["p"] < 0.05
  return hits


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=1000)
  parser.add_argument("--resamples", type=int, default=2000)
  parser.add_argument("--out", default="reports/calibration/statistics_calibration.txt")
  args = parser.parse_args()
  t0 = time.perf_counter()
  lines = [f"# python benchmarks/statistics_calibration.py --trials={args.trials} "
           f"--resamples={args.resamples}", ""]
  lines.append("95% bootstrap CI coverage of the true Pearson r")
  for n, rho in ((50, 0.3), (150, 0.5), (400, 0.7), (1200, 0.5)):
    trials = args.trials if n < 1000 else args.trials // 4
    lines.append(f"  overall        n={n:5d} rho={rho}: "
                 f"{_rate(coverage(trials, n, rho, args.resamples, n), trials)}")
    print(lines[-1], flush=True)
  for passages, performers, rho in ((50, 4, 0.5), (100, 8, 0.3)):
    lines.append(f"  within passage {passages} passages x {performers} rho={rho}: " + _rate(
        coverage_within(args.trials, passages, performers, rho, args.resamples, passages),
        args.trials))
    print(lines[-1], flush=True)
  lines.append("")
  lines.append("Type-I error at alpha 0.05, r(label,A) = r(label,B) = 0.5, r(A,B) = 0.6")
  for n in (80, 300):
    trials = args.trials
    hits = type_one(trials, n, min(args.resamples, 1000), n)
    for name, h in hits.items():
      lines.append(f"  n={n:4d} {name:17s}: {_rate(h, trials)}")
      print(lines[-1], flush=True)
  lines.append("")
  rng = np.random.default_rng(0)
  trials = 20 * args.trials
  fwer = sum((statistics.holm(rng.random(19)) < 0.05).any() for _ in range(trials))
  lines.append(f"Holm, 19 independent null p-values: family-wise error {_rate(fwer, trials)} "
               "(bound 0.05)")
  lines.append(f"\nwall time {time.perf_counter() - t0:.0f} s")
  print("\n".join(lines[-3:]))
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
