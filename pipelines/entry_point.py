"""How every command line of the project starts: its --help text, its flags, then absl.

One function for the `python -m` entry points and the console scripts alike. In the
lowest layer so that every layer's commands can use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app


def run(doc: str | None, define_flags: Callable[[], None], main: Callable, *,
        argv: Sequence[str] | None = None, flags_parser: Callable | None = None) -> None:
  """Defines the flags and runs `main` under absl.

  absl prints `__main__`'s docstring for --help; under a console script `__main__`
  is the generated wrapper, which has none, so the command's own `doc` is put there.
  """
  sys.modules["__main__"].__doc__ = doc
  define_flags()
  if flags_parser is None:
    app.run(main, argv=argv)
  else:
    app.run(main, argv=argv, flags_parser=flags_parser)
