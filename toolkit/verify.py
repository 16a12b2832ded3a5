"""Parity of every artifact against the Keras model, on the test split, in the runtime an edge app would use.

Per artifact: accuracy, its change against Keras in percentage points, top-1 agreement with Keras, and the
largest absolute difference of the output probabilities; checked against the pass criteria below and
written into the manifest. A file whose SHA-256 no longer matches the manifest is refused, and the C array
is checked byte for byte against the `.tflite` it was made from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit import fsio, manifest, runtimes
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.manifest import ArtifactRecord

# variant -> (minimum top-1 agreement with Keras, largest probability difference, largest accuracy loss in pp)
CRITERIA: dict[str, dict[str, float]] = {
    "float32": {"min_agreement": 0.9999, "max_abs_diff": 1e-4},
    "float16": {"min_agreement": 0.999},
    "dynamic": {"min_agreement": 0.999},
    "int8": {"max_accuracy_loss_pp": 0.2},
}


def describe_criteria(variant: str) -> str:
    c = CRITERIA.get(variant, {})
    parts = []
    if "min_agreement" in c:
        parts.append(f"agreement >= {c['min_agreement'] * 100:g}%")
    if "max_abs_diff" in c:
        parts.append(f"max |diff| <= {c['max_abs_diff']:g}")
    if "max_accuracy_loss_pp" in c:
        parts.append(f"accuracy loss <= {c['max_accuracy_loss_pp']:g} pp")
    return ", ".join(parts)


@dataclass
class ParityRecord:
    file: str
    format: str
    variant: str
    runtime: str
    images: int
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    agreement: float | None = None
    disagreements: int | None = None
    max_abs_diff: float | None = None
    criteria: str = ""
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verified_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """The Keras model's probabilities on the verification images: computed once, compared with every artifact."""

    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.probabilities.argmax(1) == self.labels))


def reference(workspace: Path, dataset: Dataset, limit: int | None = None, model_path: Path | None = None) -> Reference:
    x, y = dataset.splits().test
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = to_model_input(x)
    keras_runner = runtimes.load(model_path or Path(workspace) / "model.keras")
    return Reference(images=images, labels=y, probabilities=runtimes.predict(keras_runner, images, batch_size=1000))


def compare(record: ArtifactRecord, probabilities: np.ndarray, ref: Reference) -> ParityRecord:
    """Score one artifact's probabilities against the reference and apply its variant's criteria."""
    predicted = probabilities.argmax(1)
    accuracy = float(np.mean(predicted == ref.labels))
    disagreements = int(np.sum(predicted != ref.probabilities.argmax(1)))
    result = ParityRecord(
        file=record.file, format=record.format, variant=record.variant, runtime=record.runtime,
        images=len(ref.labels), accuracy=round(accuracy, 6), reference_accuracy=round(ref.accuracy, 6),
        accuracy_delta_pp=round((accuracy - ref.accuracy) * 100, 4),
        agreement=round(1 - disagreements / len(ref.labels), 6), disagreements=disagreements,
        max_abs_diff=float(np.max(np.abs(probabilities - ref.probabilities))),
        criteria=describe_criteria(record.variant),
    )
    c = CRITERIA.get(record.variant, {})
    if "min_agreement" in c and result.agreement < c["min_agreement"]:
        result.problems.append(f"agreement {result.agreement:.4%} < {c['min_agreement']:.2%}")
    if "max_abs_diff" in c and result.max_abs_diff > c["max_abs_diff"]:
        result.problems.append(f"max |diff| {result.max_abs_diff:.2e} > {c['max_abs_diff']:g}")
    if "max_accuracy_loss_pp" in c and -result.accuracy_delta_pp > c["max_accuracy_loss_pp"]:
        result.problems.append(f"accuracy loss {-result.accuracy_delta_pp:.2f} pp > {c['max_accuracy_loss_pp']:g} pp")
    result.passed = not result.problems
    return result


def score(record: ArtifactRecord, probabilities: np.ndarray | None, ref: Reference) -> ParityRecord:
    """`compare` where the artifact gave probabilities; an empty record (to carry its problems) where it did not."""
    if probabilities is not None:
        return compare(record, probabilities, ref)
    return ParityRecord(file=record.file, format=record.format, variant=record.variant, runtime=record.runtime,
                        images=len(ref.labels), criteria=describe_criteria(record.variant))


def _check_c_array(workspace: Path, record: ArtifactRecord) -> tuple[str | None, list[str]]:
    """The C array must hold exactly the bytes of its source .tflite. Returns (that .tflite to score, problems)."""
    from toolkit.export.c_array import parse_c_array

    source = record.made_with.get("source")
    if not source or not (workspace / source).is_file():
        return None, [f"source {source or '(unknown)'} not found"]
    problems = []
    data, declared = parse_c_array(workspace / record.file)
    expected = (workspace / source).read_bytes()
    if data != expected:
        first = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), min(len(data), len(expected)))
        problems.append(f"C array differs from {source} at byte {first} ({len(data)} vs {len(expected)} bytes)")
    if declared != len(expected):
        problems.append(f"declared length {declared} != {len(expected)} bytes of {source}")
    if manifest.file_sha256(workspace / source) != record.made_with.get("source_sha256"):
        problems.append(f"{source} changed since the C array was made")
    return source, problems


def verify_artifact(workspace: Path, record: ArtifactRecord, ref: Reference) -> ParityRecord:
    """Check one artifact's file, run it in its runtime, and score it against the reference."""
    started = time.perf_counter()
    path = workspace / record.file
    problems: list[str] = []
    scored: str | None = None
    if not path.is_file():
        problems.append("file missing")
    elif manifest.file_sha256(path) != record.sha256:
        problems.append("SHA-256 differs from the manifest: file changed since export, not certified")
    elif record.format == "c":
        scored, problems = _check_c_array(workspace, record)
    else:
        scored = record.file
    probabilities = None
    if scored is not None:
        try:
            probabilities = runtimes.predict(runtimes.load(workspace / scored), ref.images)
        except ToolkitError as e:
            problems.append(str(e))
    result = score(record, probabilities, ref)
    if record.format == "c":
        result.criteria = "byte-identical to its .tflite; " + result.criteria
    result.problems = problems + result.problems
    result.passed = not result.problems
    result.seconds = round(time.perf_counter() - started, 3)
    result.verified_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def run_parity(
    workspace: str | Path,
    dataset: Dataset,
    files: list[str] | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    write: bool = True,
) -> list[ParityRecord]:
    """Verify the artifacts of the manifest (or those named in `files`) and record the results in it."""
    workspace = Path(workspace)
    say = progress or (lambda msg: None)
    records = select_records(workspace, files, browser=False)
    say(f"Keras reference on {limit or len(dataset.y_test)} test images")
    ref = reference(workspace, dataset, limit)
    results = []
    for record in records:
        say(f"verifying {record.file}")
        results.append(verify_artifact(workspace, record, ref))
    if write:
        manifest.put_verification(workspace, {r.file: r.to_dict() for r in results})
    return results


def select_records(workspace: Path, files: list[str] | None, browser: bool) -> list[ArtifactRecord]:
    """The manifest's native artifacts (or, with `browser`, its web ones), or those named in `files`."""
    records = [r for r in manifest.records(workspace) if (r.format == "web") == browser]
    what = "web artifacts (run `toolkit export --format web`)" if browser else "artifacts to verify; run `toolkit export` first"
    if not records:
        raise ToolkitError(f"{workspace / manifest.MANIFEST_FILE}: no {what}")
    if files is not None:
        def named(record: ArtifactRecord, f: str) -> bool:  # by manifest path, file name, or a path to the file
            return f in (record.file, Path(record.file).name) or Path(f).resolve() == (workspace / record.file).resolve()

        unknown = [f for f in files if not any(named(r, f) for r in records)]
        if unknown:
            kind = "web artifact" if browser else "native artifact"
            raise ToolkitError(f"{unknown[0]}: not a {kind} in {workspace / manifest.MANIFEST_FILE}; export it first")
        records = [r for r in records if any(named(r, f) for f in files)]
    model_sha = manifest.read(workspace).get("model", {}).get("sha256")
    model_path = workspace / "model.keras"
    if model_sha and model_path.is_file() and manifest.file_sha256(model_path) != model_sha:
        raise ToolkitError(f"{model_path}: differs from the model the artifacts were exported from; export again")
    return records


def run_browser_parity(
    workspace: str | Path,
    dataset: Dataset,
    files: list[str] | None = None,
    limit: int | None = None,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    write: bool = True,
) -> list[ParityRecord]:
    """Verify the web artifacts inside the web app in headless Chromium, each in its browser runtime, with the
    same criteria as native verification; record the results in the manifest."""
    from toolkit import browser, serve, web
    from toolkit.export.web import SITE_DIR

    workspace = Path(workspace)
    say = progress or (lambda msg: None)
    records = select_records(workspace, files, browser=True)
    site = serve.check_site(workspace / SITE_DIR)
    if web.vendor_missing(site):
        web.install_vendor(site, say)
    say(f"Keras reference on {limit or len(dataset.y_test)} test images")
    ref = reference(workspace, dataset, limit)
    images = np.ascontiguousarray(np.round(ref.images[..., 0] * 255).astype(np.uint8)).tobytes()  # the page divides by 255
    entries = {e["file"]: e for e in fsio.read_json(site / "models.json")["models"]}
    results = []
    with serve.serving(site) as url, browser.launch() as chromium:
        name = browser.browser_name(chromium)
        for record in records:
            say(f"verifying {record.file} in {name}")
            started = time.perf_counter()
            problems: list[str] = []
            entry = entries.get(str(Path(record.file).relative_to(SITE_DIR)))
            probabilities = None
            if not (workspace / record.file).is_file():
                problems.append("file missing")
            elif manifest.file_sha256(workspace / record.file) != record.sha256:
                problems.append("SHA-256 differs from the manifest: file changed since export, not certified")
            elif entry is None or entry["sha256"] != record.sha256:
                problems.append(f"{SITE_DIR}/models.json does not list this file as exported; export --format web again")
            else:
                try:
                    app = browser.open_app(chromium, url, entry["id"], threads, images)
                    try:
                        probabilities, _ = app.classify(len(ref.labels))
                    finally:
                        app.close()
                except ToolkitError as e:
                    problems.append(str(e))
            result = score(record, probabilities, ref)
            result.runtime = f"{record.runtime} in {name}"
            result.problems = problems + result.problems
            result.passed = not result.problems
            result.seconds = round(time.perf_counter() - started, 3)
            result.verified_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            results.append(result)
    if write:
        manifest.put_verification(workspace, {r.file: r.to_dict() for r in results})
    return results
