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

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import contract as contract_lib
from toolkit import fsio, manifest
from toolkit.artifacts import FORMAT_ALIASES, FORMATS
from toolkit.contract import UNIT, InputContract
from toolkit.data import Dataset, to_model_input
from toolkit.errors import FormatRefused, ToolkitError
from toolkit.manifest import ArtifactRecord
from toolkit.model import (
    LABELS,
    LOGITS,
    MODEL_NAME,
    PROBABILITIES,
    Interface,
    check_fits,
    equalize_batchnorm_scales,
    file_stem,
    flops_per_image,
    interface_of,
    title_of,
    with_probabilities,
)
from toolkit.runtimes import load as load_runner
from toolkit.versions import package_versions
from toolkit.workspace import Workspace, describe_data

DEFAULT_CALIBRATION_SIZE = 1000


@dataclass
class Calibration:
    """A class-balanced random sample of the training split, as float32 model input."""

    images: np.ndarray
    seed: int
    source: str = "train split"
    spanned: bool = False  # one pixel of the first image set to 0 and one to 255 (see make_calibration)

    @property
    def size(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, Any]:
        return {
            "images": self.size,
            "sampling": f"class-balanced random sample of the {self.source}",
            "seed": self.seed,
            **(
                {"pixel_range": "one pixel of the first image set to 0 and one to 255, so the int8 input spans 0-255"}
                if self.spanned
                else {}
            ),
        }


def make_calibration(
    dataset: Dataset, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0, contract: InputContract = UNIT
) -> Calibration:
    classes = dataset.num_classes
    if size < 10:
        raise ToolkitError(f"--calibration-size must be at least 10, got {size}")
    x, y = dataset.splits().train
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(classes)]
    take = [idx[: size // classes + (1 if c < size % classes else 0)] for c, idx in enumerate(per_class)]
    chosen = rng.permutation(np.concatenate(take))
    pixels = x[chosen]
    spanned = bool(pixels.min() > 0 or pixels.max() < 255)
    if spanned:
        # the int8 input's range is what calibration saw: spanning every pixel value makes its quantization the
        # contract itself where it can be (q = pixel - 128 for raw and unit), at the cost of two changed pixels
        pixels = pixels.copy()
        pixels.reshape(len(pixels), -1, *pixels.shape[3:])[0, :2] = [[0], [255]] if pixels.ndim == 4 else [0, 255]
    return Calibration(images=to_model_input(pixels, contract), seed=seed, spanned=spanned)


@dataclass
class ExportContext:
    model: Any  # the Keras model, ending in probabilities (a softmax is added after logits)
    model_path: Path
    out_dir: Workspace  # the workspace (a path too): files are hashed through it, once each
    calibration: Calibration
    progress: Callable[[str], None] = field(default=lambda msg: None)
    built: dict[tuple[str, str], Path] = field(default_factory=dict)  # (format, variant) -> file written in this run
    name: str = MODEL_NAME  # the stem of every file name
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    preprocessing: dict[str, str] = field(default_factory=lambda: dict(manifest.PREPROCESSING))
    contract: InputContract = UNIT  # how an app's pixels become this model's inputs

    def artifact_path(self, variant: str, suffix: str) -> Path:
        return self.out_dir / f"{self.name}.{variant}.{suffix}"

    def sha256(self, path: Path) -> str:
        return Workspace.of(self.out_dir).sha256(path)


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
        records.append(describe_artifact(path, fmt, variant, write(ctx, variant, path), ctx.out_dir))
    return records


def describe_artifact(
    path: Path, fmt: str, variant: str, made_with: dict[str, Any], workspace: Workspace | Path | None = None
) -> ArtifactRecord:
    """Load the written file in its runtime and record what it really is (hashed through `workspace`'s cache)."""
    runner = load_runner(path, probe=False)  # written by us a moment ago
    return ArtifactRecord(
        file=path.name,
        format=fmt,
        variant=variant,
        runtime=runner.runtime,
        bytes=path.stat().st_size,
        sha256=Workspace.of(workspace if workspace is not None else path.parent).sha256(path),
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


def labels_for(interface: Interface, dataset: Dataset, labels_file: Path | None) -> list[str]:
    """Class names: one per line of `labels_file`, else the dataset's (folder names, or 0..N-1). A line ends at a
    line feed only (a carriage return before it is dropped): `str.splitlines` would also split inside a label at
    characters such as U+001C or U+2028. A UTF-8 byte-order mark is not part of the first label."""
    if labels_file is None:
        return list(dataset.class_names)
    text = fsio.read_bytes(labels_file).decode("utf-8-sig", "replace")
    lines = [line.strip(" \t\r") for line in text.split("\n")]
    names = [line for line in lines if line]
    if len(names) != interface.classes:
        raise ToolkitError(f"{labels_file}: {len(names)} labels for the model's {interface.classes} classes")
    if len(set(names)) != len(names):
        raise ToolkitError(f"{labels_file}: a label appears twice; each class needs its own name")
    return names


def preprocessing_for(interface: Interface, dataset: Dataset, contract: InputContract = UNIT) -> dict[str, str]:
    """How an app turns an image into the model's input: MNIST's digit steps for MNIST, else resize; then the
    input contract's scaling."""
    h, w, c = interface.input_shape
    if dataset.name == "mnist":
        out = dict(manifest.PREPROCESSING)
    else:
        out = {
            "input": f"{'RGB' if c == 3 else 'grey'} image, {h}x{w} pixels",
            "scaling": manifest.PREPROCESSING["scaling"],
            "layout": f"NHWC: (batch, {h}, {w}, {c})",
            "resize": f"bilinear to {w}x{h} (width x height), no cropping",
            "int8_input": manifest.PREPROCESSING["int8_input"],
            "int8_output": manifest.PREPROCESSING["int8_output"],
        }
    if not contract.maps_like(UNIT, c):
        out["scaling"] = contract.describe()
    if c == 3:
        bgr = contract.channel_order == "BGR"
        out["channel_order"] = "BGR (the model's channel order: swap an RGB image's channels)" if bgr else "RGB"
    return out


def contract_for(
    workspace: Workspace, model: Any, channels: int, asked: str | InputContract | None, own_model: bool
) -> InputContract:
    """The input contract of this export: asked for, else recorded for the workspace's own model, else what the
    model shows. Refused where the workspace already holds files made for another one (they would mix)."""
    wanted = contract_lib.parse(asked) if isinstance(asked, str) else asked
    recorded = workspace.recorded_contract() if own_model else None
    chosen = contract_lib.decide(model, wanted, recorded).for_channels(channels)
    if workspace.has_manifest() and workspace.read_manifest().get("artifacts"):
        before = contract_lib.from_header(workspace.read_manifest(), str(workspace.manifest_path))
        if before is not None and not before.maps_like(chosen, channels):
            raise ToolkitError(
                f"{workspace.manifest_path}: its files take inputs {before.describe()}; this export's would take "
                f"{chosen.describe()}: export into another --dir, or give --input-contract {before.name}"
            )
    return chosen


def adopt_model(source: Path, workspace: Workspace) -> Path:
    """The workspace's model.keras: `source` copied in (atomically) when it is another file, so that verify and
    every later command find the model the artifacts were made from."""
    target = workspace.model_path
    if target.exists() and target.resolve() == source.resolve():
        return target
    return fsio.write_bytes(target, fsio.read_bytes(source))


@contextlib.contextmanager
def equalized(model) -> Iterator[list[dict[str, Any]]]:
    """The model with its BatchNormalization gains equalized (model.py says why) for the converters, and its own
    weights back afterwards: verification compares every file with model.keras as it is."""
    weights = model.get_weights()
    try:
        yield equalize_batchnorm_scales(model)
    finally:
        model.set_weights(weights)


def export(
    workspace: str | Path | Workspace,
    dataset: Dataset,
    fmt: str = "all",
    variants: list[str] | None = None,
    model_path: Path | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
    labels_file: Path | None = None,
    logits: str = "wrap",
    refusals: list[str] | None = None,
    input_contract: str | InputContract | None = None,
) -> list[ArtifactRecord]:
    """Export the Keras model to the chosen format(s) and variants; record each artifact in the manifest. The model
    is checked (an image classifier of the data's size and classes) before any conversion, and copied into the
    workspace as model.keras when it comes from elsewhere. A format that cannot carry the model (an operator its
    runtime lacks) is skipped and its one-line reason added to `refusals`; without that list it is raised."""
    workspace = Workspace.of(workspace)
    plan = parse_selection(fmt, variants)
    if workspace.has_manifest():
        manifest.records(workspace)  # a damaged manifest fails here, before any file is rewritten
    source = Path(model_path) if model_path else workspace.model_path
    model = workspace.keras_model(source)
    interface = interface_of(model, source, logits)
    check_fits(interface, dataset.image_shape, dataset.num_classes, dataset.location, source)
    labels = labels_for(interface, dataset, labels_file)
    own = model_path is None or source.resolve() == workspace.model_path.resolve()
    contract = contract_for(workspace, model, interface.input_shape[-1], input_contract, own)
    calibration = make_calibration(dataset, calibration_size, seed, contract)
    fsio.ensure_dir(workspace.root)
    model_path = adopt_model(source, workspace)
    workspace.adopt_model(model, model_path)  # verify's reference is this model, not a second load of the file
    with equalized(model) as changes:
        ctx = ExportContext(
            model=with_probabilities(model) if interface.output == LOGITS else model,
            model_path=model_path,
            out_dir=workspace,
            calibration=calibration,
            progress=progress or (lambda msg: None),
            name=file_stem(name) if name else interface.name,
            labels=labels,
            preprocessing=preprocessing_for(interface, dataset, contract),
            contract=contract,
        )
        header = export_header(ctx, interface, changes, dataset)
        return export_formats(ctx, plan, header, refusals)


def export_header(ctx: ExportContext, interface: Interface, changes: list, dataset: Dataset) -> dict[str, Any]:
    """The manifest's model-level fields: the model, its labels and preprocessing, the data, the versions."""
    return {
        "model": {
            "name": ctx.name,
            "title": title_of(ctx.model_path) or ctx.name,  # the model's own name, as the user wrote it
            "file": ctx.model_path.name,
            "sha256": ctx.sha256(ctx.model_path),
            "input_shape": list(interface.input_shape),
            "classes": interface.classes,
            "output": "probabilities" if interface.output == PROBABILITIES else "logits: every export adds a softmax",
            "flops_per_image": flops_per_image(ctx.model),
            # BatchNormalization gains moved into the ReLU layer before, for every export (model.py says why)
            "equalized": changes,
        },
        "labels": ctx.labels,
        "preprocessing": ctx.preprocessing,
        "input_contract": ctx.contract.to_dict(),  # the numbers an app applies to its pixels (toolkit.contract)
        "data": describe_data(dataset),  # later commands load the same data without --data-dir
        "versions": package_versions(),
    }


def export_formats(
    ctx: ExportContext, plan: list[tuple[str, list[str]]], header: dict[str, Any], refusals: list[str] | None
) -> list[ArtifactRecord]:
    """Each format of the plan by its own module; each lands in the manifest as soon as it is written."""
    written: list[ArtifactRecord] = []
    for f, chosen in plan:
        module = import_module(FORMATS[f].module)  # a format imports its libraries only when asked for
        try:
            records = module.export(ctx, chosen)
        except FormatRefused as e:
            if refusals is None:
                raise
            refusals.append(f"{f}: {e}; the other formats are exported")
            continue
        for record in records:  # what an app does to its pixels for this very file (toolkit.contract.app_input)
            record.made_with["app_input"] = contract_lib.app_input(ctx.contract, record.input)
        manifest.put_artifacts(ctx.out_dir, records, header)
        written.extend(records)
    return written
