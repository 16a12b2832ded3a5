"""The export driver: the formats of `toolkit.artifacts.FORMATS`, each written by its own module.

Each format module provides `VARIANTS` (its variant names, in export order) and
`export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]`, writing every file atomically and
returning a record for each; only this driver writes the manifest. A new format is a module plus its entry in
`FORMATS` (and, if it brings a new runtime, an entry in `toolkit.artifacts.RUNTIMES`). This package holds the
context every format module gets, the calibration sample, and the two desktop formats (tflite, onnx); the
microcontroller, web and recipe formats live with the rest of their job (`toolkit.micro`, `toolkit.web`,
`toolkit.quantize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import manifest
from toolkit import workspace as ws
from toolkit.artifacts import FORMAT_ALIASES, FORMATS
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.manifest import ArtifactRecord
from toolkit.model import LABELS, MODEL_NAME, load_keras_model
from toolkit.runtimes import load as load_runner
from toolkit.versions import package_versions

DEFAULT_CALIBRATION_SIZE = 1000


@dataclass
class Calibration:
    """A class-balanced random sample of the training split, as float32 model input."""

    images: np.ndarray
    seed: int
    source: str = "train split"

    @property
    def size(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, Any]:
        return {
            "images": self.size,
            "sampling": f"class-balanced random sample of the {self.source}",
            "seed": self.seed,
        }


def make_calibration(dataset: Dataset, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> Calibration:
    if size < 10:
        raise ToolkitError(f"--calibration-size must be at least 10 (one image per class), got {size}")
    x, y = dataset.splits().train
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    take = [idx[: size // 10 + (1 if c < size % 10 else 0)] for c, idx in enumerate(per_class)]
    chosen = rng.permutation(np.concatenate(take))
    return Calibration(images=to_model_input(x[chosen]), seed=seed)


@dataclass
class ExportContext:
    model: Any  # the Keras model
    model_path: Path
    out_dir: Path
    calibration: Calibration
    progress: Callable[[str], None] = field(default=lambda msg: None)
    built: dict[tuple[str, str], Path] = field(default_factory=dict)  # (format, variant) -> file written in this run

    def artifact_path(self, variant: str, suffix: str) -> Path:
        return self.out_dir / f"{MODEL_NAME}.{variant}.{suffix}"


def variants_of(fmt: str) -> tuple[str, ...]:
    """The variants a format module exports, in export order (its `VARIANTS`)."""
    return import_module(FORMATS[fmt].module).VARIANTS


def export_variants(
    ctx: ExportContext, variants: list[str], fmt: str, write: Callable[[ExportContext, str, Path], dict[str, Any]]
) -> list[ArtifactRecord]:
    """Write each variant to its path with `write` (which returns how it was made) and record what it is."""
    records = []
    for variant in variants:
        path = ctx.artifact_path(variant, fmt)
        records.append(describe_artifact(path, fmt, variant, write(ctx, variant, path)))
    return records


def describe_artifact(path: Path, fmt: str, variant: str, made_with: dict[str, Any]) -> ArtifactRecord:
    """Load the written file in its runtime and record what it really is."""
    runner = load_runner(path, probe=False)  # written by us a moment ago
    return ArtifactRecord(
        file=path.name,
        format=fmt,
        variant=variant,
        runtime=runner.runtime,
        bytes=path.stat().st_size,
        sha256=manifest.file_sha256(path),
        input=runner.input,
        output=runner.output,
        made_with=made_with,
    )


def parse_selection(fmt: str, variants: list[str] | None) -> list[tuple[str, list[str]]]:
    """('all' | formats, comma-separated; variants or None) -> [(format, [variants])], in export order; errors
    name the choices."""
    names = [FORMAT_ALIASES.get(f.strip(), f.strip()) for f in fmt.split(",") if f.strip()]
    if not names:
        raise ToolkitError(
            f"no format given in --format {fmt!r}; choose one or more of: {', '.join([*FORMATS, 'all'])}"
        )
    formats = (
        [f for f, entry in FORMATS.items() if entry.in_all]
        if "all" in names
        else [f for f in FORMATS if f in names] + [f for f in names if f not in FORMATS]
    )
    for f in formats:
        if f not in FORMATS:
            raise ToolkitError(f"unknown format {f!r}; choose one or more of: {', '.join([*FORMATS, 'all'])}")
    plan = []
    for f in formats:
        chosen = [v for v in variants_of(f) if variants is None or v in variants]
        plan.append((f, chosen))
    if variants is not None:
        known = {v for f in formats for v in variants_of(f)}
        unknown = [v for v in variants if v not in known]
        if unknown:
            raise ToolkitError(
                f"unknown variant {unknown[0]!r} for format {fmt}; choose from: {', '.join(sorted(known))}"
            )
    return [(f, v) for f, v in plan if v]


def export(
    workspace: Path,
    dataset: Dataset,
    fmt: str = "all",
    variants: list[str] | None = None,
    model_path: Path | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[ArtifactRecord]:
    """Export the Keras model to the chosen format(s) and variants; record each artifact in the manifest."""
    workspace = Path(workspace)
    plan = parse_selection(fmt, variants)
    if ws.manifest(workspace).exists():
        manifest.records(workspace)  # a damaged manifest fails here, before any file is rewritten
    model_path = Path(model_path) if model_path else ws.model(workspace)
    model = load_keras_model(model_path)
    ctx = ExportContext(
        model=model,
        model_path=model_path,
        out_dir=workspace,
        calibration=make_calibration(dataset, calibration_size, seed),
        progress=progress or (lambda msg: None),
    )
    header = {
        "model": {"name": MODEL_NAME, "file": model_path.name, "sha256": manifest.file_sha256(model_path)},
        "labels": LABELS,
        "preprocessing": manifest.PREPROCESSING,
        "versions": package_versions(),
    }
    written: list[ArtifactRecord] = []
    for f, chosen in plan:
        module = import_module(FORMATS[f].module)  # a format imports its libraries only when asked for
        records = module.export(ctx, chosen)
        manifest.put_artifacts(workspace, records, header)  # each format lands as soon as it is written
        written.extend(records)
    return written
