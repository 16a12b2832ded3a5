"""`DIR/manifest.json`: everything an app developer needs to use each artifact, and how it was made.

The file is rewritten atomically under an exclusive lock (`DIR/.manifest.lock`), so two toolkit processes on
the same workspace merge their changes instead of losing one; re-exporting one variant keeps the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from toolkit import fsio
from toolkit.errors import ToolkitError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1

PREPROCESSING = {
    "input": "grey image, white digit on black background, 28x28 pixels",
    "scaling": "float32 = uint8 pixel / 255, range [0, 1]",
    "layout": "NHWC: (batch, 28, 28, 1)",
    "int8_input": "q = clip(round(x / scale) + zero_point, -128, 127) with the input's scale and zero_point",
    "int8_output": "probability = (q - zero_point) * scale with the output's scale and zero_point",
    "digit_centering": "as in MNIST: the digit fitted into 20x20, centred by its centre of mass in 28x28",
}


@dataclass
class TensorSpec:
    name: str
    shape: list[int]  # -1 where the dimension is dynamic
    dtype: str
    quantization: dict[str, float] | None = None  # {"scale": s, "zero_point": z} for int8 tensors


@dataclass
class ArtifactRecord:
    file: str
    format: str
    variant: str
    runtime: str
    bytes: int
    sha256: str
    input: TensorSpec
    output: TensorSpec
    made_with: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArtifactRecord":
        d = dict(d)
        d["input"] = TensorSpec(**d["input"])
        d["output"] = TensorSpec(**d["output"])
        return cls(**d)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(workspace: Path) -> Iterator[None]:
    fsio.ensure_dir(workspace)
    with open(workspace / ".manifest.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read(workspace: Path) -> dict[str, Any]:
    """The manifest, or an empty one where none was written yet."""
    path = Path(workspace) / MANIFEST_FILE
    if not path.exists():
        return {"schema": SCHEMA_VERSION, "artifacts": {}}
    manifest = fsio.read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        raise ToolkitError(f"{path}: not a toolkit manifest (no 'artifacts' object)")
    return manifest


def update(workspace: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write under the lock; `change` edits the manifest dict in place."""
    workspace = Path(workspace)
    with _locked(workspace):
        manifest = read(workspace)
        change(manifest)
        manifest["schema"] = SCHEMA_VERSION
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fsio.write_json(workspace / MANIFEST_FILE, manifest)
    return manifest


def records(workspace: Path) -> list[ArtifactRecord]:
    manifest = read(workspace)
    try:
        return [ArtifactRecord.from_dict(r) for r in manifest["artifacts"].values()]
    except (TypeError, KeyError) as e:
        raise ToolkitError(f"{Path(workspace) / MANIFEST_FILE}: malformed artifact entry ({e})") from None


def put_artifacts(workspace: Path, new: list[ArtifactRecord], header: dict[str, Any]) -> dict[str, Any]:
    """Add or replace artifact entries (keyed by file name) and refresh the model-level fields."""

    def change(m: dict[str, Any]) -> None:
        m.update(header)
        for rec in new:
            m["artifacts"][rec.file] = rec.to_dict()
        m["artifacts"] = dict(sorted(m["artifacts"].items()))

    return update(workspace, change)


def put_verification(workspace: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def change(m: dict[str, Any]) -> None:
        for file, result in results.items():
            if file in m["artifacts"]:
                m["artifacts"][file]["verification"] = result

    return update(workspace, change)
