"""One way to open any artifact of a workspace: `Loader(workspace).open(record) -> Runner`, whatever its kind.

A record names its runtime (toolkit.artifacts), and the runtime's kind decides the machinery: a desktop runtime
through `toolkit.runtimes` (LiteRT, ONNX Runtime, Keras), the web app in headless Chromium (`BrowserRunner`), or
LiteRT for Microcontrollers on the bytes parsed back from the C array. Every runner has the same interface:
`run(float32 model input) -> probabilities`. verify, benchmark, predict and quantize open artifacts here, and the
browser set-up (the site served, Chromium started) exists only here, made once per Loader and only when a web
model is opened. The heavy parts (Playwright, tflite-micro) are imported only when their kind is opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, fsio, runtimes
from toolkit import workspace as ws
from toolkit.contract import UNIT, InputContract
from toolkit.errors import ToolkitError
from toolkit.manifest import ArtifactRecord
from toolkit.workspace import Workspace


@dataclass
class BrowserPage:
    """The workspace's web app served on loopback with a headless Chromium to open it in: set up once."""

    site: Path
    url: str
    chromium: Any
    entries: dict[str, dict[str, Any]]  # models.json's entries by file (relative to the site)
    contract: InputContract = UNIT  # how the page makes pixels into inputs (models.json's input_contract)

    @property
    def name(self) -> str:
        from toolkit.web import chromium as chromium_lib

        return chromium_lib.browser_name(self.chromium)

    def entry(self, record: ArtifactRecord) -> dict[str, Any] | None:
        """The models.json entry of a web record, or None where models.json does not list it (or other bytes)."""
        found = self.entries.get(str(Path(record.file).relative_to(ws.SITE_DIR)))
        return found if found is not None and found.get("sha256") == record.sha256 else None


NOT_IN_SITE = f"{ws.SITE_DIR}/models.json does not list this file as exported; export --format web again"


@contextlib.contextmanager
def browser_page(workspace: str | Path, say: Callable[[str], None] = lambda msg: None) -> Iterator[BrowserPage]:
    """The web app ready in headless Chromium: the site prepared (vendored runtimes), served, Chromium launched."""
    from toolkit.web import app as web_app
    from toolkit.web import chromium as chromium_lib
    from toolkit.web import server

    site = web_app.prepare_site(workspace, say)
    models = fsio.read_json(site / "models.json")
    entries = {e["file"]: e for e in models["models"]}
    contract = (
        InputContract.from_dict(models["input_contract"], str(site / "models.json"))
        if models.get("input_contract")
        else UNIT
    )
    with server.serving(site) as url, chromium_lib.launch() as chromium:
        yield BrowserPage(site, url, chromium, entries, contract)


class BrowserRunner:
    """A web model run by the page itself, in its browser runtime (LiteRT.js, ONNX Runtime Web): the page reads
    uint8 pixels and makes them inputs by the input contract as an app does, so the images go to it as pixels."""

    def __init__(self, page: BrowserPage, record: ArtifactRecord, threads: int = 1):
        entry = page.entry(record)
        if entry is None:
            raise ToolkitError(NOT_IN_SITE)
        self.page, self.entry, self.threads = page, entry, threads
        self.path, self.runtime = Path(record.file), record.runtime
        self.input, self.output = record.input, record.output

    def run(self, images: np.ndarray) -> np.ndarray:
        from toolkit.web import chromium as chromium_lib

        pixels = self.page.contract.pixels(images).tobytes()
        app = chromium_lib.open_app(self.page.chromium, self.page.url, self.entry["id"], self.threads, pixels)
        try:
            probabilities, _ = app.classify(len(images))
        finally:
            app.close()
        return probabilities


def micro_runner(workspace: str | Path, record: ArtifactRecord):
    """The C array's bytes, parsed back from the `.c` file a firmware links, in LiteRT for Microcontrollers."""
    from toolkit.micro import runtime as micro

    data = micro.read_c_array(Path(workspace) / record.file)
    return micro.MicroRunner(data, Path(workspace) / record.file, record.made_with.get("arena_bytes_recommended"))


class Loader:
    """Opens the records of one workspace in their runtimes. Use it as a context manager: a browser opened for a
    web model is closed at the end."""

    def __init__(self, workspace: str | Path | Workspace, threads: int = 1, say: Callable[[str], None] = print):
        self.workspace, self.threads, self.say = Workspace.of(workspace), threads, say
        self._stack = contextlib.ExitStack()
        self._page: BrowserPage | None = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._page = None

    @property
    def page(self) -> BrowserPage:
        """The web app in Chromium, started on first use."""
        if self._page is None:
            self._page = self._stack.enter_context(browser_page(self.workspace, self.say))
        return self._page

    def open(self, record: ArtifactRecord, runtime_name: str | None = None, probe: bool = False):
        """A runner for `record` in its own runtime (or `runtime_name`, a second native runtime of its file).
        Native files of a manifest were probed when written; `probe` loads them in a child process first."""
        kind = artifacts.kind_of(record.runtime)
        if kind == artifacts.BROWSER:
            return BrowserRunner(self.page, record, self.threads)
        if kind == artifacts.MICRO:
            return micro_runner(self.workspace, record)
        if kind == artifacts.ESTIMATE:
            raise ToolkitError(
                f"{record.file}: runs on {artifacts.runtime(record.runtime).label}; nothing runs it here"
            )
        path = self.workspace / record.file
        return runtimes.load(path, threads=None, probe=probe, runtime_name=runtime_name)

    def keras(self, path: Path | None = None):
        """The workspace's Keras model (loaded once per command) as a runner."""
        path = path or self.workspace.model_path
        return runtimes.KerasRunner(path, model=self.workspace.keras_model(path))


def open_file(path: str | Path, threads: int | None = None) -> tuple[Any, ArtifactRecord | None, dict[str, Any]]:
    """Any artifact given by path (predict, report): its runner, its manifest record (None for a file no manifest
    lists; a certified file that changed is refused first) and its workspace's manifest ({} for none)."""
    from toolkit import manifest

    path = Path(path)
    record = manifest.record_of(path)
    found = Workspace.containing(path)
    header = manifest.read(found) if found is not None else {}
    if path.suffix == ".keras" and found is not None:
        return runtimes.KerasRunner(path, model=found.keras_model(path)), record, header
    return runtimes.load(path, threads=threads), record, header
