"""Parity of every artifact against the Keras model, on the test split, in the runtime an edge app would use.

Per artifact: accuracy, its change against Keras in percentage points, top-1 agreement with Keras, and the
largest absolute difference of the output probabilities; checked against the pass criteria below and
written into the manifest. A file whose SHA-256 no longer matches the manifest is refused, and the C array
is checked byte for byte against the `.tflite` it was made from.

One loop verifies every artifact; what differs between runtimes is the scorer that turns an artifact into
probabilities: a native runner, the web app in headless Chromium, or the microcontroller interpreter.
"""

from __future__ import annotations

import base64
import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toolkit import artifacts, fsio, manifest, runtimes
from toolkit import workspace as ws
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.manifest import ArtifactRecord
from toolkit.micro import runtime as micro
from toolkit.web import app as web_app
from toolkit.web import chromium as chromium_lib
from toolkit.web import server

# Pass criteria per variant. float32 must match Keras exactly up to float rounding. A reduced-precision variant
# moves every probability a little; whether that flips a prediction depends on how many images sit near the
# decision boundary, which depends on the model and the dataset (a weak model has many). So agreement is
# required only on the images where Keras is confident (top probability >= CONFIDENT), where only a broken
# artifact disagrees, and the near-boundary images are judged by what users see: the change in accuracy.
CONFIDENT = 0.9
CRITERIA: dict[str, dict[str, float]] = {
    "float32": {"min_agreement": 0.9999, "max_abs_diff": 1e-4},
    "float16": {"min_confident_agreement": 0.999, "max_accuracy_loss_pp": 0.1},
    "dynamic": {"min_confident_agreement": 0.999, "max_accuracy_loss_pp": 0.1},
    "int8": {"max_accuracy_loss_pp": 0.2},
}
# A quantization recipe (format "recipes", `toolkit quantize`) is judged by the accuracy budget it was kept under,
# recorded in its made_with; where none is recorded, by the default budget: never by no criterion at all.
RECIPE_BUDGET_PP = 0.1


def criteria_of(record: ArtifactRecord) -> dict[str, float]:
    """The pass criteria of one artifact: its variant's, or a recipe's accuracy budget."""
    if record.format != artifacts.RECIPES_FORMAT:
        return CRITERIA.get(record.variant, {})
    budget = record.made_with.get("accuracy_budget_pp")
    valid = isinstance(budget, int | float) and not isinstance(budget, bool) and 0 <= budget <= 100
    return {"max_accuracy_loss_pp": float(budget) if valid else RECIPE_BUDGET_PP}


def describe_criteria(c: dict[str, float]) -> str:
    parts = []
    if "min_agreement" in c:
        parts.append(f"agreement >= {c['min_agreement'] * 100:g}%")
    if "min_confident_agreement" in c:
        parts.append(f"agreement >= {c['min_confident_agreement'] * 100:g}% where Keras p >= {CONFIDENT:g}")
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
    runtime: str  # a name of toolkit.artifacts.RUNTIMES
    images: int
    where: str = ""  # where the runtime ran: this machine's CPU, a named browser, tflite-micro's host build
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    agreement: float | None = None
    disagreements: int | None = None
    confident_images: int | None = None  # images where Keras' top probability >= CONFIDENT
    confident_agreement: float | None = None
    max_abs_diff: float | None = None
    criteria: str = ""
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verified_at: str = ""
    data_sha256: str = ""  # fingerprint of the dataset whose test split was used
    cross_check: dict[str, Any] | None = None  # agreement with another runtime on the same model (micro vs LiteRT)
    self_check: dict[str, Any] | None = None  # this file's own outputs on the self-check images (see self_check_of)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """The Keras model's probabilities on the verification images: computed once, compared with every artifact."""

    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    # desktop runs on these images by the file's SHA-256, so that a file is run once per check: the micro model's
    # .tflite is both an artifact of its own and the micro scorer's cross-check
    native_runs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.probabilities.argmax(1) == self.labels))

    @cached_property
    def self_check_images(self) -> list[int]:
        """The first test image of each class that Keras classifies correctly with p >= 0.99, at most
        SELF_CHECK_IMAGES: far from any decision boundary, so that every correct runtime, on any CPU, gives the
        same answer and nearly the same probabilities."""
        top, sure = self.probabilities.argmax(1), self.probabilities.max(1) >= 0.99
        chosen = []
        for c in range(self.probabilities.shape[1]):
            hits = np.flatnonzero((self.labels == c) & (top == c) & sure)
            if len(hits):
                chosen.append(int(hits[0]))
        return sorted(chosen[:SELF_CHECK_IMAGES])

    def self_check_inputs(self) -> dict[str, Any]:
        """The self-check images as an app gets them: uint8 pixels (model input x 255), base64, with their shape."""
        pixels = np.round(self.images[self.self_check_images] * 255).astype(np.uint8)
        return {
            "test_images": self.self_check_images,
            "shape": list(pixels.shape),
            "pixels_uint8_base64": base64.b64encode(pixels.tobytes()).decode(),
        }

    def run_native(self, path: Path) -> np.ndarray:
        """`path`'s probabilities on the images in its desktop runtime, computed once per file content."""
        key = manifest.file_sha256(path)
        if key not in self.native_runs:
            self.native_runs[key] = runtimes.predict(runtimes.load(path), self.images)
        return self.native_runs[key]


def reference(workspace: Path, dataset: Dataset, limit: int | None = None, model_path: Path | None = None) -> Reference:
    x, y = dataset.splits().test
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = to_model_input(x)
    keras_runner = runtimes.load(model_path or ws.model(workspace))
    return Reference(images=images, labels=y, probabilities=runtimes.predict(keras_runner, images, batch_size=1000))


SELF_CHECK_IMAGES = 10
# how far a correct runtime on another machine may land from this file's own outputs here: float32 kernels differ
# in summation order; reduced-precision ones by a quantization step or two
SELF_CHECK_TOLERANCE = {"float32": 1e-4}
SELF_CHECK_DEFAULT_TOLERANCE = 0.02


def self_check_of(record: ArtifactRecord, probabilities: np.ndarray, ref: Reference) -> dict[str, Any]:
    """What an app checks at start-up: this file's probabilities on the self-check images (the manifest's
    `self_check` inputs), the same top class, and every probability within the tolerance."""
    return {
        "expected": [[round(float(p), 6) for p in probabilities[i]] for i in ref.self_check_images],
        "tolerance": SELF_CHECK_TOLERANCE.get(record.variant, SELF_CHECK_DEFAULT_TOLERANCE),
        "rule": "the same top class as expected, and every probability within tolerance of it",
    }


def compare(record: ArtifactRecord, probabilities: np.ndarray, ref: Reference) -> ParityRecord:
    """Score one artifact's probabilities against the reference and apply its variant's criteria."""
    predicted = probabilities.argmax(1)
    accuracy = float(np.mean(predicted == ref.labels))
    differs = predicted != ref.probabilities.argmax(1)
    disagreements = int(np.sum(differs))
    confident = ref.probabilities.max(1) >= CONFIDENT
    result = ParityRecord(
        file=record.file,
        format=record.format,
        variant=record.variant,
        runtime=record.runtime,
        images=len(ref.labels),
        accuracy=round(accuracy, 6),
        reference_accuracy=round(ref.accuracy, 6),
        accuracy_delta_pp=round((accuracy - ref.accuracy) * 100, 4),
        agreement=round(1 - disagreements / len(ref.labels), 6),
        disagreements=disagreements,
        max_abs_diff=float(np.max(np.abs(probabilities - ref.probabilities))),
        confident_images=int(confident.sum()),
        confident_agreement=round(1 - float(differs[confident].mean()), 6) if confident.any() else None,
        criteria=describe_criteria(criteria_of(record)),
    )
    c = criteria_of(record)
    if "min_agreement" in c and result.agreement < c["min_agreement"]:
        result.problems.append(f"agreement {result.agreement:.4%} < {c['min_agreement']:.2%}")
    wanted = c.get("min_confident_agreement")
    if wanted is not None and result.confident_agreement is not None and result.confident_agreement < wanted:
        result.problems.append(
            f"agreement {result.confident_agreement:.4%} < {wanted:.2%} on the "
            f"{result.confident_images:,} images where Keras is confident"
        )
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
    return ParityRecord(
        file=record.file,
        format=record.format,
        variant=record.variant,
        runtime=record.runtime,
        images=len(ref.labels),
        criteria=describe_criteria(criteria_of(record)),
    )


@dataclass
class Scored:
    """What a scorer returns: the artifact's probabilities (None if it could not run), problems found on the way,
    and a cross-check against another runtime where the scorer makes one."""

    probabilities: np.ndarray | None
    problems: list[str] = field(default_factory=list)
    cross_check: dict[str, Any] | None = None


class Scorer(Protocol):
    """Turns one artifact into probabilities on the reference images, in the runtime its record names."""

    where: str  # where its runtime runs, for the record and the tables

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored: ...


class NativeScorer:
    """Desktop runtimes (LiteRT, ONNX Runtime), loaded through `toolkit.runtimes`. A file with a second runtime
    (artifacts.second_runtime: LiteRT's CompiledModel for a phone's `.tflite`) runs there too, and the two
    runtimes' agreement is reported."""

    where = f"this machine's CPU ({platform.machine()})"

    def __init__(self, workspace: Path, say=lambda msg: None):
        self.workspace, self.say = workspace, say

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored:
        path = self.workspace / record.file
        probabilities = ref.run_native(path)
        second = artifacts.second_runtime(record.runtime, record.format)
        if second is None:
            return Scored(probabilities)
        self.say(f"{record.file}: {len(ref.images):,} images in {artifacts.runtime(second).label}")
        compiled = runtimes.predict(runtimes.load(path, runtime_name=second), ref.images)
        cross = {
            "runtime": second,
            "file": record.file,
            "agreement": round(float(np.mean(compiled.argmax(1) == probabilities.argmax(1))), 6),
            "max_abs_diff": float(np.max(np.abs(compiled - probabilities))),
        }
        return Scored(probabilities, [], cross)


class MicroScorer(NativeScorer):
    """The C array in LiteRT for Microcontrollers: the bytes parsed back from the `.c` file (what a firmware links)
    are run, after checking they are byte for byte the `.tflite` they were made from; desktop LiteRT runs that
    `.tflite` too, and their agreement is reported."""

    where = f"tflite-micro's reference kernels on this machine ({platform.machine()})"

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored:
        source = record.made_with.get("source")
        source_path = manifest.artifact_path(self.workspace, source) if isinstance(source, str) else None
        if source_path is None or not source_path.is_file():
            return Scored(None, [f"source {source or '(unknown)'} not found"])
        data = micro.read_c_array(self.workspace / record.file)
        expected = source_path.read_bytes()
        problems = []
        if data != expected:
            first = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), min(len(data), len(expected)))
            problems.append(f"C array differs from {source} at byte {first} ({len(data)} vs {len(expected)} bytes)")
        if manifest.file_sha256(source_path) != record.made_with.get("source_sha256"):
            problems.append(f"{source} changed since the C array was made")
        problems += header_problems(self.workspace, record)
        if problems:
            return Scored(None, problems)
        runner = micro.MicroRunner(data, self.workspace / record.file, record.made_with.get("arena_bytes_recommended"))
        chunks = []
        for i in range(0, len(ref.images), 1000):
            self.say(f"{record.file}: {i:,}/{len(ref.images):,} images in LiteRT for Microcontrollers")
            chunks.append(runner.run(ref.images[i : i + 1000]))
        probabilities = np.concatenate(chunks)
        desktop = ref.run_native(source_path)
        agreement = float(np.mean(desktop.argmax(1) == probabilities.argmax(1)))
        cross = {
            "runtime": artifacts.LITERT,
            "file": source,
            "agreement": round(agreement, 6),
            "max_abs_diff": float(np.max(np.abs(desktop - probabilities))),
        }
        return Scored(probabilities, [], cross)


def header_problems(workspace: Path, record: ArtifactRecord) -> list[str]:
    """The C array's header (what a firmware includes beside it) against the checksum recorded at export."""
    header, expected = record.made_with.get("header"), record.made_with.get("header_sha256")
    if not isinstance(header, str) or not isinstance(expected, str):
        return ["no header checksum recorded for it (export --format micro again)"]
    path = manifest.artifact_path(workspace, header)
    if not path.is_file():
        return [f"header {header} missing"]
    if manifest.file_sha256(path) != expected:
        return [f"header {header}: {manifest.NOT_CERTIFIED}"]
    return []


class BrowserScorer:
    """The web app in headless Chromium: each web model in its browser runtime, on the same images."""

    def __init__(self, workspace: Path, chromium, url: str, site: Path, threads: int):
        self.workspace, self.chromium, self.url, self.threads = workspace, chromium, url, threads
        self.where = chromium_lib.browser_name(chromium)
        self.entries = {e["file"]: e for e in fsio.read_json(site / "models.json")["models"]}

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored:
        entry = self.entries.get(str(Path(record.file).relative_to(ws.SITE_DIR)))
        if entry is None or entry["sha256"] != record.sha256:
            return Scored(
                None, [f"{ws.SITE_DIR}/models.json does not list this file as exported; export --format web again"]
            )
        images = np.ascontiguousarray(np.round(ref.images * 255).astype(np.uint8)).tobytes()  # page: / 255
        app = chromium_lib.open_app(self.chromium, self.url, entry["id"], self.threads, images)
        try:
            probabilities, _ = app.classify(len(ref.labels))
        finally:
            app.close()
        return Scored(probabilities)


@contextlib.contextmanager
def open_scorer(workspace: Path, kind: str, threads: int = 1, say=lambda msg: None) -> Iterator[Scorer]:
    """The scorer for artifacts of one runtime kind (toolkit.artifacts: native, micro, browser)."""
    if kind == artifacts.BROWSER:
        site = web_app.prepare_site(workspace, say)
        with server.serving(site) as url, chromium_lib.launch() as browser:
            yield BrowserScorer(workspace, browser, url, site, threads)
    else:
        yield MicroScorer(workspace, say) if kind == artifacts.MICRO else NativeScorer(workspace, say)


def verify_artifact(workspace: Path, record: ArtifactRecord, ref: Reference, scorer: Scorer) -> ParityRecord:
    """Check one artifact's file, run it through `scorer`, and score it against the reference."""
    started = time.perf_counter()
    path = workspace / record.file
    scored = Scored(None)
    if not path.is_file():
        scored.problems.append("file missing")
    elif manifest.file_sha256(path) != record.sha256:
        scored.problems.append(manifest.NOT_CERTIFIED)
    else:
        try:
            scored = scorer.score(record, ref)
        except ToolkitError as e:
            scored.problems.append(str(e))
    problems = scored.problems
    result = score(record, scored.probabilities, ref)
    result.where = scorer.where
    result.cross_check = scored.cross_check
    if scored.probabilities is not None:
        result.self_check = self_check_of(record, scored.probabilities, ref)
    if artifacts.kind_of(record.runtime) == artifacts.MICRO:
        result.criteria = "byte-identical to its .tflite; " + result.criteria
    result.problems = problems + result.problems
    result.passed = not result.problems
    result.seconds = round(time.perf_counter() - started, 3)
    result.verified_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


NATIVE_KINDS = (artifacts.NATIVE, artifacts.MICRO)  # what `toolkit verify` runs without --browser


@dataclass
class Verification:
    """The outcome of `toolkit verify` or of the check after `toolkit export`: results, and what was not checked."""

    results: list[ParityRecord]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [r.to_dict() for r in self.results], "notes": self.notes}

    def raise_if_failed(self) -> None:
        failed = [r.file for r in self.results if not r.passed]
        if failed:
            raise ToolkitError(f"verification failed for {len(failed)} artifact(s): {', '.join(failed)}")


def check(
    workspace: str | Path,
    dataset: Dataset,
    files: list[str] | None = None,
    limit: int | None = None,
    kinds: tuple[str, ...] = NATIVE_KINDS,
    threads: int = 1,
    optional: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
    write: bool = True,
) -> Verification:
    """Verify the manifest's artifacts of these runtime kinds (or those named in `files`) against one Keras
    reference, in one pass, and record the results in the manifest. A kind in `optional` whose runtime cannot
    start here (no Chromium after an export) gets a note instead of failing the whole check."""
    workspace = Path(workspace)
    say = progress or (lambda msg: None)
    records = select_records(workspace, files, kinds)
    check_same_data(workspace, dataset)
    say(f"Keras reference on {limit or len(dataset.y_test)} test images")
    ref = reference(workspace, dataset, limit)
    outcome = Verification([])
    for kind in kinds:
        chosen = [r for r in records if artifacts.kind_of(r.runtime) == kind]
        if not chosen:
            continue
        try:
            with open_scorer(workspace, kind, threads, say) as scorer:
                for record in chosen:
                    say(f"verifying {record.file} ({record.runtime}, {scorer.where})")
                    outcome.results.append(verify_artifact(workspace, record, ref, scorer))
                    outcome.results[-1].data_sha256 = dataset.sha256
        except ToolkitError as e:
            if kind not in optional:
                raise
            outcome.notes.append(f"{kind} artifacts not verified: {e}; run `toolkit verify --{kind}` where it can run")
    if write:
        full_split = len(ref.labels) == len(dataset.y_test)
        inputs = ref.self_check_inputs() if full_split else None
        manifest.put_verification(workspace, {r.file: r.to_dict() for r in outcome.results}, full_split, inputs)
    return outcome


def check_same_data(workspace: Path, dataset: Dataset) -> None:
    """Refuse to certify on other data than the model was trained on (metrics.json records its fingerprint):
    another dataset's test split says nothing about this model."""
    metrics_path = ws.metrics(workspace)
    if not metrics_path.is_file():
        return
    trained = fsio.read_json(metrics_path)
    expected = trained.get("data_sha256") if isinstance(trained, dict) else None
    if isinstance(expected, str) and expected != dataset.sha256:
        raise ToolkitError(
            f"{dataset.location}: not the data the model was trained on (fingerprint "
            f"{dataset.sha256[:12]}, {metrics_path} says {expected[:12]}); pass the same --data-dir "
            "and --dataset as for training"
        )


def run_parity(
    workspace: str | Path,
    dataset: Dataset,
    files: list[str] | None = None,
    limit: int | None = None,
    kinds: tuple[str, ...] = NATIVE_KINDS,
    **options,
) -> list[ParityRecord]:
    """The parity records of `check`, which it also writes into the manifest."""
    return check(workspace, dataset, files, limit, kinds, **options).results


def select_records(workspace: Path, files: list[str] | None, kinds: tuple[str, ...]) -> list[ArtifactRecord]:
    """The manifest's artifacts to verify; refused when model.keras is not the model they were exported from."""
    records = manifest.select(workspace, files, kinds)
    model_sha = manifest.read(workspace).get("model", {}).get("sha256")
    model_path = ws.model(workspace)
    if model_sha and model_path.is_file() and manifest.file_sha256(model_path) != model_sha:
        raise ToolkitError(f"{model_path}: differs from the model the artifacts were exported from; export again")
    return records


def check_new(
    workspace: Path,
    dataset: Dataset,
    records: list[ArtifactRecord],
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Verify what an export just wrote, in one pass over one Keras reference. The web models need Chromium:
    on a machine without it they get a note (verify them later with `toolkit verify --browser`)."""
    kinds = (*NATIVE_KINDS, artifacts.BROWSER)
    runnable = [r.file for r in records if artifacts.kind_of(r.runtime) in kinds]  # Vela's files run on an Ethos-U
    return check(workspace, dataset, runnable, limit, kinds, optional=(artifacts.BROWSER,), progress=progress)
