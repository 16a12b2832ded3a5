"""Classify image files with any artifact: preprocessing (toolkit.preprocess) + a runner (toolkit.runtimes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit import artifacts, manifest, runtimes
from toolkit import workspace as ws
from toolkit.contract import UNIT, decide, from_header
from toolkit.errors import ToolkitError
from toolkit.loader import open_file
from toolkit.preprocess import prepare_for
from toolkit.workspace import Workspace


@dataclass
class Prediction:
    file: str
    label: str  # the class name (a digit for the reference model)
    confidence: float
    top: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return asdict(self)


def best_artifact(workspace: str | Path | Workspace) -> Path:
    """The verified artifact with the best accuracy (the smaller file on a tie); model.keras if none is verified."""
    workspace = Workspace.of(workspace)
    candidates = []
    if workspace.has_manifest():
        for rec in manifest.records(workspace):
            v = rec.verification or {}
            runnable = artifacts.kind_of(rec.runtime) == artifacts.NATIVE and (workspace / rec.file).is_file()
            if runnable and v.get("passed"):
                candidates.append((-v["accuracy"], rec.bytes, rec.file))
    if candidates:
        return workspace / min(candidates)[2]
    if ws.model(workspace).is_file():
        return ws.model(workspace)
    raise ToolkitError(
        f"{workspace}: no verified artifact and no model.keras; run `toolkit train` and `toolkit export`, "
        "or pass --model"
    )


DEFAULT_TOP = 3


def classify(images: list[str | Path], model: str | Path, top: int | None = None) -> list[Prediction]:
    """The class of each image by `model`, with its `top` most likely classes (default 3, or every class of a model
    with fewer)."""
    if not images:
        raise ToolkitError("no image files given")
    if top is not None and top < 1:
        raise ToolkitError(f"--top must be at least 1, got {top}")
    runner, _, header = open_file(model)  # a changed file that a manifest certified is refused before it runs
    classes = runner.output.shape[1]
    labels = header.get("labels") if isinstance(header.get("labels"), list) else None
    if labels is None or len(labels) != classes:
        labels = [str(i) for i in range(classes)]
    top = min(DEFAULT_TOP, classes) if top is None else top
    if top > classes:
        raise ToolkitError(f"--top must be between 1 and {classes}, got {top}")
    shape = runtimes.image_shape(runner.input)
    preprocessing = header.get("preprocessing") if isinstance(header.get("preprocessing"), dict) else None
    batch = np.stack([prepare_for(p, shape, preprocessing) for p in images])  # pixel / 255
    # the manifest's contract; for a file no workspace lists, what a Keras model shows, else pixel / 255
    contract = from_header(header, str(model)) or decide(getattr(runner, "model", None), None)
    if not contract.maps_like(UNIT, shape[-1]):
        batch = contract.apply(batch * 255.0)
    probabilities = runtimes.predict(runner, batch)
    out = []
    for path, p in zip(images, probabilities):
        order = np.argsort(-p)[:top]
        out.append(
            Prediction(
                file=str(path),
                label=labels[order[0]],
                confidence=round(float(p[order[0]]), 6),
                top=[(labels[i], round(float(p[i]), 6)) for i in order],
            )
        )
    return out
