"""Where an artefact came from: the git revision of the code that made it."""

from __future__ import annotations

import pathlib
import subprocess


def git_revision() -> str | None:
  """The project's HEAD commit, or None outside a git checkout (an installed wheel)."""
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent, timeout=10,
                          check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
