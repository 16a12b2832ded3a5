"""A workspace (`--dir`): its layout, and the `Workspace` object a command opens once and works through.

A workspace holds the trained model, its metrics, the exported artifacts, the manifest that certifies them, the
web app and the reports. Every file and folder name the toolkit writes or reads in it is named here. The
`Workspace` object keeps what a command would otherwise read again and again: the manifest (read once, and again
only when another process has changed it), the Keras model (loaded once), each file's SHA-256 (hashed once per
command), and the data the workspace was made from. It is also a path (`os.fspath(workspace)`), so code that
only needs the folder takes it as one.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import contract, fsio
from toolkit.contract import InputContract
from toolkit.errors import ToolkitError

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"
CHECKPOINT_DIR = "checkpoint"
SITE_DIR = "web"  # the web app: the page, models.json, models/, vendor/
SITE_MODELS_DIR = "models"
REPORT_DIR = "report"
QUANTIZATION_DIR = "quantization"  # `toolkit quantize`: the recipe table, the Pareto plot, --explain
BENCHMARK_DIR = "benchmark"  # results of an ad-hoc `toolkit benchmark` run
MODEL_CARD = "MODEL_CARD.md"
SCHEMA_VERSION = 1


def model(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / MODEL_FILE


def metrics(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / METRICS_FILE


def manifest(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / MANIFEST_FILE


def checkpoint(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / CHECKPOINT_DIR


def site(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / SITE_DIR


def report(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / REPORT_DIR


def model_card(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / MODEL_CARD


def _stat_key(path: Path) -> tuple[int, int, int, int] | None:
    """What changes whenever a file's bytes do (ctime cannot be set back by a user), or None for no file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Workspace(os.PathLike):
    """One workspace folder and what a command knows of it. Open it once per command (`Workspace.of`) and pass
    it down: every read of the manifest, every load of the model and every checksum goes through it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._manifest: dict[str, Any] | None = None
        self._manifest_key: tuple | None = None
        self._hashes: dict[tuple[str, tuple], str] = {}
        self._models: dict[tuple[str, tuple], Any] = {}

    @classmethod
    def of(cls, where: str | os.PathLike | Workspace) -> Workspace:
        """`where` itself if it is a Workspace already (so that a command's caches are shared), else a new one."""
        return where if isinstance(where, Workspace) else cls(where)

    @classmethod
    def containing(cls, path: str | os.PathLike) -> Workspace | None:
        """The workspace a file belongs to: the nearest of its folder and the two above it (web models live in
        DIR/web/models/) that holds a manifest.json, or None. The one rule for finding a file's workspace."""
        found = cls.candidates(path)
        return cls(found[0]) if found else None

    @staticmethod
    def candidates(path: str | os.PathLike) -> list[Path]:
        """Every folder that may hold the manifest of `path`, nearest first, as given and as resolved, so that a
        symlink cannot hide the workspace it sits in (a certified file reached through a link is still checked)."""
        path, found = Path(path), []
        for start in (path.absolute(), path.resolve()):
            for folder in list(start.parents)[:3]:
                if folder not in found and manifest(folder).is_file():
                    found.append(folder)
        return found

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.root / other

    def __str__(self) -> str:
        return str(self.root)

    def __getattr__(self, name: str):
        """The folder's own path methods (`resolve`, `exists`, `name`, ...): code that takes a workspace as a path
        works on this object too."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.root, name)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------ paths

    @property
    def model_path(self) -> Path:
        return model(self.root)

    @property
    def metrics_path(self) -> Path:
        return metrics(self.root)

    @property
    def manifest_path(self) -> Path:
        return manifest(self.root)

    @property
    def site(self) -> Path:
        return site(self.root)

    # --------------------------------------------------------------------------------------- manifest

    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest as JSON, or an empty one where none was written yet; read from disk only when the file
        changed since this workspace last read or wrote it. Callers read it; changes go through `update_manifest`."""
        key = _stat_key(self.manifest_path)
        if key is None:
            return {"schema": SCHEMA_VERSION, "artifacts": {}}
        if key != self._manifest_key or self._manifest is None:
            data = fsio.read_json(self.manifest_path)
            if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
                raise ToolkitError(f"{self.manifest_path}: not a toolkit manifest (no 'artifacts' object)")
            self._manifest, self._manifest_key = data, key
        return self._manifest

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The manifest's exclusive lock (DIR/.manifest.lock): two processes on one workspace merge their changes."""
        fsio.ensure_dir(self.root)
        with open(self.root / MANIFEST_LOCK, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update_manifest(self, change: Callable[[dict[str, Any]], None], check=lambda m: None) -> dict[str, Any]:
        """Read-modify-write under the lock, atomically: `change` edits a copy of the manifest in place (the copy
        on disk is re-read first only if another process wrote it since); `check` validates what was read."""
        with self.locked():
            current = copy.deepcopy(self.read_manifest())
            check(current)
            change(current)
            current["schema"] = SCHEMA_VERSION
            current["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            fsio.write_json(self.manifest_path, current)
            self._manifest, self._manifest_key = current, _stat_key(self.manifest_path)
        return current

    # -------------------------------------------------------------------------------- checksums, model

    def sha256(self, path: str | os.PathLike) -> str:
        """The SHA-256 of a file, hashed once per command (again only if the file changed since)."""
        path = Path(path)
        key = (str(path.resolve()), _stat_key(path))
        if key[1] is None:
            raise ToolkitError(f"{path}: file not found")
        if key not in self._hashes:
            self._hashes[key] = fsio.file_sha256(path)
        return self._hashes[key]

    def keras_model(self, path: str | os.PathLike | None = None):
        """The Keras model of `path` (default: DIR/model.keras), loaded once per command in safe mode. Callers that
        change weights restore them (the export's equalization does)."""
        from toolkit.model import load_keras_model  # Keras only when a model is asked for

        path = Path(path) if path is not None else self.model_path
        key = (str(path.resolve()), _stat_key(path))
        if key[1] is None or key not in self._models:
            self._models[key] = load_keras_model(path)  # a missing file gets its one-line error here
        return self._models[key]

    def adopt_model(self, model, path: Path) -> None:
        """Remember `model` as the content of `path` (just saved from it), so that it is not loaded again."""
        self._models[(str(Path(path).resolve()), _stat_key(Path(path)))] = model

    # --------------------------------------------------------------------------------------------- data

    def metrics(self) -> dict[str, Any] | None:
        """metrics.json of the training that made model.keras, or None where the model came from elsewhere."""
        if not self.metrics_path.is_file():
            return None
        found = fsio.read_json(self.metrics_path)
        return found if isinstance(found, dict) else None

    def recorded_contract(self) -> InputContract | None:
        """The input contract this workspace's files were made for (the manifest), else the one its model was
        trained with (metrics.json); None where neither records one."""
        if self.has_manifest():
            found = contract.from_header(self.read_manifest(), str(self.manifest_path))
            if found is not None:
                return found
        return contract.from_header(self.metrics(), str(self.metrics_path))

    def input_contract(self, asked: InputContract | None = None) -> InputContract:
        """How pixels become this workspace's model inputs: `asked`, else what is recorded, else what the model shows
        (a leading Rescaling: raw pixels), else pixel / 255. The model is loaded only where nothing is recorded."""
        recorded = self.recorded_contract() if asked is None else None
        model = self.keras_model() if asked is None and recorded is None and self.model_path.is_file() else None
        return contract.decide(model, asked, recorded)

    def remembered_data(self) -> dict[str, Any]:
        """What the workspace remembers of its data (manifest `data`: dataset, data_dir, image_size, sha256)."""
        data = self.read_manifest().get("data")
        return data if isinstance(data, dict) else {}

    def dataset(
        self,
        data_dir: str | os.PathLike | None = None,
        dataset: str | None = None,
        image_size: tuple[int, int] | None = None,
        progress: Callable[[str], None] | None = None,
    ):
        """The data of this workspace: what is asked for, else what the workspace remembers (the data it was
        exported with), else the default (MNIST, or TOOLKIT_DATA_DIR)."""
        from toolkit import data as data_lib

        memory = self.remembered_data() if data_dir is None and dataset is None and image_size is None else {}
        remembered_dir = memory.get("data_dir") if isinstance(memory.get("data_dir"), str) else None
        if remembered_dir is not None and not Path(remembered_dir).exists():
            remembered_dir = None  # moved: the default source, checked against the fingerprint as ever
        size = memory.get("image_size")
        if remembered_dir is not None and isinstance(size, list) and len(size) == 2:
            image_size = (int(size[0]), int(size[1]))
        kind = dataset or (memory.get("dataset") if remembered_dir is not None else None) or "mnist"
        return data_lib.load(
            data_dir if data_dir is not None else remembered_dir, kind, progress=progress, image_size=image_size
        )


def describe_data(dataset) -> dict[str, Any]:
    """The manifest's `data`: enough to load the same data again without options, and its fingerprint. MNIST's
    folder is not recorded: the default search finds it on any machine (and a committed manifest names no path of
    the machine it was made on)."""
    own_folder = dataset.source == "data-dir" and dataset.name != "mnist"
    return {
        "dataset": dataset.name,
        "source": dataset.source,
        "data_dir": dataset.location if own_folder else None,
        "image_size": list(dataset.resized) if dataset.resized else None,
        "sha256": dataset.sha256,
    }
