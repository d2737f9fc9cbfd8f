"""The import rules of the house: layers flow one way, no cycles, Beam only in pipelines.beam.

  pipelines -> model -> train -> eval -> experiments

A module may import its own layer and the layers to its left, never one to its right.
Inside pipelines/, the readers, the audio front end and the shard format sit below
the Beam jobs, the Grain input and the generated corpus. Function-level imports count
too: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ("pipelines", "model", "train", "eval", "experiments")
# pipelines/ sub-packages that everything else in pipelines/ builds on.
PIPELINES_BASE = ("pipelines.datasets", "pipelines.audio", "pipelines.shards")
BEAM_ONLY_IN = "pipelines.beam"


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  return {module_name(root, p): p for top in LAYERS for p in sorted((root / top).rglob("*.py"))}


def imports_of(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """Every module (project or external top-level name) that `path` imports, anywhere in it."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        # `from pkg import mod` imports the module pkg.mod when there is one.
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if candidate in modules else node.module)
  return found


def graph(root: pathlib.Path) -> dict[str, set[str]]:
  modules = project_modules(root)
  return {name: imports_of(path, modules) for name, path in modules.items()}


def layer(module: str) -> int | None:
  top = module.split(".")[0]
  return LAYERS.index(top) if top in LAYERS else None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
  out = []
  for source, targets in edges.items():
    for target in targets:
      if layer(target) is not None and layer(target) > layer(source):
        out.append(f"{source} imports {target} (a higher layer)")
      if source.startswith(PIPELINES_BASE) and target.startswith("pipelines.") and \
          not target.startswith(PIPELINES_BASE):
        out.append(f"{source} imports {target} (above the readers, audio and shard format)")
      if target.split(".")[0] == "apache_beam" and not source.startswith(BEAM_ONLY_IN):
        out.append(f"{source} imports Beam (only {BEAM_ONLY_IN} may)")
  return sorted(out)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), plus self-imports."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in edges:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in edges.get(v, ()):
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_the_project_follows_the_layer_order():
  assert layer_violations(graph(REPO)) == []


def test_the_project_has_no_import_cycle():
  assert cycles(graph(REPO)) == []


def test_every_package_is_found_by_the_graph():
  # A folder without __init__.py would silently drop out of the wheel and of this check.
  modules = project_modules(REPO)
  for name, path in modules.items():
    if path.name != "__init__.py":
      package = name.rsplit(".", 1)[0]
      assert package in modules, f"{path.parent} has no __init__.py"


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
  for name, text in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def tree(tmp_path):
  _write(tmp_path, {f"{top}/__init__.py": "" for top in LAYERS})
  _write(tmp_path, {"pipelines/audio/__init__.py": "", "pipelines/beam/__init__.py": ""})
  return tmp_path


def test_the_checker_catches_an_upward_import(tree):
  _write(tree, {"train/tasks.py": "from eval import metrics\n", "eval/metrics.py": "",
                "model/heads.py": "def f():\n  import train.tasks\n"})
  assert layer_violations(graph(tree)) == [
      "model.heads imports train.tasks (a higher layer)",
      "train.tasks imports eval.metrics (a higher layer)"]


def test_the_checker_catches_beam_and_base_violations(tree):
  _write(tree, {"pipelines/audio/render.py": "import apache_beam as beam\n"
                                             "from pipelines.beam import jobs\n",
                "pipelines/beam/jobs.py": "import apache_beam\n"})
  assert layer_violations(graph(tree)) == [
      "pipelines.audio.render imports Beam (only pipelines.beam may)",
      "pipelines.audio.render imports pipelines.beam.jobs (above the readers, audio and "
      "shard format)"]


def test_the_checker_catches_a_cycle(tree):
  _write(tree, {"pipelines/beam/jobs.py": "from pipelines.beam import maestro\n",
                "pipelines/beam/maestro.py": "def main():\n  from pipelines.beam import jobs\n",
                "pipelines/beam/writer.py": "from pipelines.beam import jobs\n"})
  assert cycles(graph(tree)) == [["pipelines.beam.jobs", "pipelines.beam.maestro"]]
