"""Resumable multi-stage jobs: each stage a subprocess with a log, skipped when its output is done.

The demo and the real benchmark are chains of the project's own command lines
(Beam jobs, trainer, cross-validation, report). Running each as a subprocess
keeps the stages exactly what a user would type, gives each its own log file,
and frees its memory when it ends. A stage is done when its output says so
(a job's metadata.json, a run's finished result.json), so rerunning the chain
after a kill, or in the next session, skips what is complete and resumes the
stage that was cut: the trainer and crossval resume from their checkpoints, while
a Beam job starts again from the beginning (its output is moved into place only
when complete, so a cut job leaves no output that looks finished).

Each stage appends to `LOG_DIR/<name>.log`, one dated header per attempt, so the
log of an attempt that failed survives the attempt that resumed it.

With `jobs` > 1, stages whose inputs (`needs`) are complete run side by side. On 2
cores two trainings at once did 1.3x the steps per second of one (XLA leaves a core
partly idle). A failing stage stops only the stages that need it; the chain raises
once the others are done, so one failure does not waste an unattended session.

A runner that dies (SIGKILL, a closed terminal) takes its stages with it (Linux: each
stage gets SIGTERM; the trainer saves first), and every writer holds its output's lock
(Beam jobs, the trainer, train.crossval), so the same command rerun resumes where the
chain stopped and never runs beside an orphan of the dead one.
"""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import datetime
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from pipelines.shards import layout, metadata
from train import rundir


class StageError(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  # After `python -m`; a callable is called when the stage starts, for a stage whose
  # command depends on what the earlier stages produced (a report of the runs so far).
  args: tuple[str, ...] | Callable[[], tuple[str, ...]]
  done: Callable[[], bool]
  what: str = ""
  always: bool = False  # cheap and derived from the others (a report): run every time
  # The stages whose output this one reads: with jobs > 1 it starts once they are done
  # (a need outside the chosen stages is the caller's to have run).
  needs: tuple[str, ...] = ()

  def command(self) -> tuple[str, ...]:
    return tuple(self.args()) if callable(self.args) else self.args


def _as_json(value):
  """Tuples as lists, as the stored JSON config has them."""
  if isinstance(value, (tuple, list)):
    return [_as_json(v) for v in value]
  return value


def _matches(stored, text: str) -> bool:
  """Whether a `--config.key=text` override gives the stored value, parsed by the
  stored value's type as ml_collections parses it for that field."""
  if isinstance(stored, bool):
    return text.lower() in (("true", "1") if stored else ("false", "0"))
  if isinstance(stored, str):
    return text == stored
  if isinstance(stored, (int, float)):
    try:
      return float(text) == stored
    except ValueError:
      return False
  if stored is None:
    return text in ("None", "none", "")
  try:
    return _as_json(ast.literal_eval(text)) == stored
  except (ValueError, SyntaxError):
    return False


def config_mismatches(config: dict, args: Sequence[str]) -> list[str]:
  """The `--config.*` overrides in `args` that a stored config (a run's config.json,
  a cross-validation's crossval.json) does not hold; the last override of a key wins."""
  overrides = {}
  for a in args:
    if a.startswith("--config.") and "=" in a:
      key, text = a[len("--config."):].split("=", 1)
      overrides[key] = text
  out = []
  absent = object()
  for key, text in overrides.items():
    node = config
    for part in key.split("."):
      node = node.get(part, absent) if isinstance(node, dict) else absent
    if node is absent:
      out.append(f"{key} absent (this stage: {text!r})")
    elif not _matches(node, text):
      out.append(f"{key}={node!r} (this stage: {text!r})")
  return out


def check_config(directory: pathlib.Path, config: dict, args: Sequence[str] | None) -> None:
  """Raises when finished output was made with other settings than the stage's
  command: skipping the stage would silently report another experiment."""
  differ = config_mismatches(config, args or ())
  if differ:
    raise StageError(f"{directory} holds finished output made with other settings: "
                     + "; ".join(differ) + ". Use another --workdir or delete it")


def run_finished(workdir: pathlib.Path, total_steps: int | None = None,
                 args: Sequence[str] | None = None) -> bool:
  """A trainer work directory whose run reached its last step.

  With `total_steps`, a finished run of another length is an error rather than
  done: the directory holds another experiment (e.g. a smoke run), and reusing
  it would silently report the wrong model. With `args` (the stage's command), so
  is a finished run whose config.json differs from the command's overrides.
  """
  result = rundir.read_result(workdir)
  done = rundir.finished(result)
  if done and total_steps is not None and result["total_steps"] != total_steps:
    raise StageError(f"{workdir} holds a finished run of {result['total_steps']} steps, not "
                     f"{total_steps}; use another --workdir or delete it")
  if done and args is not None:
    check_config(workdir, json.loads((workdir / "config.json").read_text()), args)
  return done


def training(name: str, workdir: pathlib.Path, args: tuple[str, ...], what: str,
             needs: tuple[str, ...] = ()) -> Stage:
  """A `train.main` stage: done when its run finished with the command's length and
  settings (another run in `workdir` is an error, never silently reused)."""
  return Stage(name, args, lambda: run_finished(workdir, num_steps(args), args), what,
               needs=needs)


def num_steps(args: Sequence[str]) -> int | None:
  """The `--config.num_steps=N` a trainer command sets, or None (the config's default)."""
  values = [a.split("=", 1)[1] for a in args if a.startswith("--config.num_steps=")]
  return int(values[-1]) if values else None


def window_flags(args: Sequence[str]) -> dict[str, float]:
  """The `--window_s`/`--hop_s` a Beam job command sets: what its shards' windows are."""
  return {a[2:].split("=", 1)[0]: float(a.split("=", 1)[1]) for a in args
          if a.startswith(("--window_s=", "--hop_s="))}


def job_finished(output_dir: pathlib.Path, expected: dict | None = None,
                 min_schema: int | None = None) -> bool:
  """A Beam job's output directory (moved into place only when complete).

  With `expected` (config values, e.g. the window), finished shards made with other
  values are an error rather than done: reusing them would silently train on other
  windows than the stage's command says. With `min_schema`, so are shards of an older
  record schema (e.g. 1, without the note targets a later stage reads).
  """
  if not (output_dir / layout.METADATA).is_file():
    return False
  meta = metadata.read(output_dir)
  have = meta.raw.get("schema", {}).get("schema_version")
  if min_schema is not None and (have or 0) < min_schema:
    raise StageError(f"{output_dir} holds record schema {have} shards, this stage needs "
                     f"schema {min_schema} or later; delete them to rebuild")
  config = meta.config
  differ = {k: (config.get(k), v) for k, v in (expected or {}).items() if config.get(k) != v}
  if differ:
    raise StageError(f"{output_dir} holds shards made with " + ", ".join(
        f"{k}={have} (this stage: {want})" for k, (have, want) in differ.items())
        + "; use another --workdir or delete it")
  return True


def first_test_midi(release: pathlib.Path, shard_dir: pathlib.Path, split: str) -> pathlib.Path:
  """The MIDI of the first held-out test performance of a PercePiano job's `split`: the
  recording a report draws attention maps of."""
  from pipelines.datasets import percepiano
  try:
    test_keys = metadata.read(shard_dir).test_keys(split)
  except (FileNotFoundError, metadata.MetadataError) as e:
    raise StageError(f"{shard_dir}: no {split} split table to pick the attention example "
                     f"from ({type(e).__name__}: {e}); run the PercePiano job first") from None
  if not test_keys:
    raise StageError(f"{shard_dir}: the {split} split has no test performances")
  try:
    midi = percepiano.index_midi(release / percepiano.MIDI_DIR)
  except FileNotFoundError as e:
    raise StageError(str(e)) from None
  if test_keys[0] not in midi:
    raise StageError(f"{release}: no MIDI for the test performance {test_keys[0]} (is "
                     "--percepiano_dir the release the shards were made from?)")
  return midi[test_keys[0]]


@dataclasses.dataclass
class _Running:
  stage: Stage
  prefix: str
  log: pathlib.Path
  start: int  # the log's size before this attempt
  file: io.TextIOWrapper
  proc: subprocess.Popen
  t0: float


def _dies_with(runner: int) -> Callable[[], None] | None:
  """Linux: a stage gets SIGTERM when the runner dies, however it dies (SIGKILL too), so a
  killed chain leaves no orphan writing its outputs: the trainer saves and exits, and a
  rerun resumes from there. Elsewhere None; the outputs' locks (pipelines.lockfile) still
  refuse a second writer while an orphan runs."""
  if not sys.platform.startswith("linux"):
    return None
  libc = ctypes.CDLL(None, use_errno=True)

  def preexec() -> None:  # in the child, between fork and exec
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != runner:  # the runner died before prctl: no signal will come
      os.kill(os.getpid(), signal.SIGTERM)
  return preexec


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start(stage: Stage, prefix: str, log_dir: pathlib.Path, cwd, env) -> _Running:
  log = log_dir / f"{stage.name}.log"
  print(f"{prefix}: {stage.what or stage.name} (log: {log})", flush=True)
  t0 = time.perf_counter()
  args = stage.command()
  start = log.stat().st_size if log.is_file() else 0
  f = log.open("a")
  try:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    f.write(f"=== {stamp}\n$ python -m " + " ".join(args) + "\n")
    f.flush()
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=f,
                            stderr=subprocess.STDOUT, preexec_fn=_dies_with(os.getpid()))
  except BaseException:
    f.close()
    raise
  return _Running(stage, prefix, log, start, f, proc, t0)


def _checked(stage: Stage, what: str, call: Callable):
  """`call()`, with any error but an interrupt reported as this stage's StageError."""
  try:
    return call()
  except StageError:
    raise
  except Exception as e:  # e.g. an unreadable summary behind a done check
    raise StageError(f"stage {stage.name}: {what}: {type(e).__name__}: {e}") from e


def _outcome(r: _Running) -> tuple[float, StageError | None]:
  """Wall seconds and the error (None when the stage's output is complete)."""
  r.file.close()
  seconds = time.perf_counter() - r.t0
  try:
    complete = r.proc.returncode == 0 and _checked(r.stage, "checking its output", r.stage.done)
  except StageError as e:
    return seconds, e
  if complete:
    return seconds, None
  with r.log.open() as f:  # this attempt's output only
    f.seek(r.start)
    tail = "\n".join(f.read().splitlines()[-25:])
  return seconds, StageError(
      f"stage {r.stage.name} failed (exit {r.proc.returncode}) after {seconds:.0f} s; rerun the "
      f"same command to resume. Log {r.log}:\n{tail}")


def _stop(running: list[_Running], grace_s: float = 120.0) -> None:
  """SIGTERM to every running stage (the trainer checkpoints and exits), then SIGKILL
  after `grace_s`: an interrupted chain leaves no stage running unattended."""
  for r in running:
    if r.proc.poll() is None:
      r.proc.terminate()
  deadline = time.monotonic() + grace_s
  for r in running:
    try:
      r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      r.proc.kill()
      r.proc.wait()
    r.file.close()


def run(stages: Sequence[Stage], log_dir: pathlib.Path, *, cwd: pathlib.Path | None = None,
        env: dict | None = None, jobs: int = 1,
        others: Sequence[Stage] = ()) -> dict[str, float]:
  """Runs the stages not done yet; returns wall seconds per stage run now.

  `others` are the plan's stages left out of this call (`--only`): a stage that needs one
  of them starts only if that one is done when it would start (checked then, since another
  call may be finishing it), and fails otherwise, naming it; never on half-made input. A
  stage that always runs (a report of whatever finished) is exempt.

  With `jobs` = 1 they run in order. With more, up to `jobs` at once, each as soon
  as the stages it `needs` among these are done, in order otherwise. A failing
  stage stops the stages that need it (directly or not); the others still run, so
  the work of a long unattended chain is not held back by one failure. Every
  failure is then raised in one `StageError`, each with the tail of its log. An
  interrupt (or any unexpected error) stops the running stages before it propagates.
  """
  if jobs < 1:
    raise ValueError(f"jobs must be >= 1, got {jobs}")
  names = [s.name for s in stages]
  for k, stage in enumerate(stages):
    later = [n for n in stage.needs if n in names[k:]]
    if later:
      raise ValueError(f"stage {stage.name} needs {later}, which are not earlier stages")
  chosen = set(names)
  outside = {s.name: s for s in others if s.name not in chosen}
  log_dir.mkdir(parents=True, exist_ok=True)
  waiting = list(enumerate(stages, 1))
  running: list[_Running] = []
  done: set[str] = set()
  failed: set[str] = set()  # failed, or not started because a need failed
  errors: list[StageError] = []
  timings: dict[str, float] = {}

  def fail(name: str, prefix: str, error: StageError) -> None:
    failed.add(name)
    errors.append(error)
    print(f"{prefix}: FAILED ({str(error).splitlines()[0]})", flush=True)

  try:
    while waiting or running:
      while waiting and len(running) < jobs:
        if jobs == 1:  # in order: the next stage once nothing runs
          ready = waiting[:1] if not running else []
        else:
          ready = [(i, s) for i, s in waiting
                   if all(n in done or n in failed or n not in chosen for n in s.needs)]
        if not ready:
          break
        i, stage = ready[0]
        waiting.remove(ready[0])
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        lost = [n for n in stage.needs if n in failed]
        if lost:
          failed.add(stage.name)
          print(f"{prefix}: not started: needs {', '.join(lost)}, which did not finish", flush=True)
          continue
        try:
          if not stage.always and _checked(stage, "checking its output", stage.done):
            print(f"{prefix}: done earlier, skipped", flush=True)
            done.add(stage.name)
            continue
          # Reports (`always`) take what finished and name the rest as pending.
          unmet = [n for n in stage.needs if n in outside and not stage.always
                   and not _checked(outside[n], "checking its output", outside[n].done)]
          if unmet:
            raise StageError(f"stage {stage.name} needs {', '.join(unmet)}, which is not done "
                             "and not in this run (run it first, or name it too)")
          running.append(_checked(stage, "starting",
                                  lambda: _start(stage, prefix, log_dir, cwd, env)))
        except StageError as e:  # stale output, or a command that cannot be built yet
          fail(stage.name, prefix, e)
      if not running:
        break
      finished = _wait_any(running)
      running.remove(finished)
      seconds, failure = _outcome(finished)
      if failure is not None:
        fail(finished.stage.name, finished.prefix, failure)
        continue
      done.add(finished.stage.name)
      timings[finished.stage.name] = round(seconds, 1)
      print(f"{finished.prefix}: finished in {seconds:.0f} s", flush=True)
  except BaseException:
    _stop(running)
    raise
  if errors:
    raise StageError("\n\n".join(str(e) for e in errors))
  return timings


def _wait_any(running: list[_Running]) -> _Running:
  """The first of the running stages to exit."""
  if len(running) == 1:
    running[0].proc.wait()
    return running[0]
  while True:
    for r in running:
      if r.proc.poll() is not None:
        return r
    time.sleep(0.5)
