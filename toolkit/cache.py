"""The one cache folder (MNIST downloads, the web runtimes from npm): `TOOLKIT_CACHE_DIR`, else
`$XDG_CACHE_HOME/edge-toolkit`, else `~/.cache/edge-toolkit`. One function, so every command agrees on it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("TOOLKIT_CACHE_DIR"):
        return Path(os.environ["TOOLKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-toolkit"
