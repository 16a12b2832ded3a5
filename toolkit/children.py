"""The one way the toolkit starts a Python child (a test load of a model, a benchmark worker, Vela, the arena search):
isolated with `-I`, so neither the current folder, nor PYTHONPATH, nor the user's site is on its import path, and a
`numpy.py` planted where a command is run is never imported. The toolkit's own folder comes last on the path, for a
source checkout that is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


def python(code: str, *args: str) -> list[str]:
    """The command that runs `code` with `args` as sys.argv[1:]."""
    prelude = f"import sys; sys.path.append({PACKAGE_PARENT!r})\n"
    return [sys.executable, "-I", "-c", prelude + code, *args]


def module(name: str, *args: str) -> list[str]:
    """The command that runs module `name` as `python -m name args...` would, but isolated."""
    return python(f"import runpy; runpy.run_module({name!r}, run_name='__main__', alter_sys=True)", *args)
