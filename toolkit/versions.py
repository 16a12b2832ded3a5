"""Installed versions of the libraries that made or ran an artifact, for manifests and results."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from toolkit import __version__

ALL = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy")


def package_versions(names: tuple[str, ...] = ALL) -> dict[str, str]:
    out = {"toolkit": __version__, "python": platform.python_version()}
    for dist in names:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out
