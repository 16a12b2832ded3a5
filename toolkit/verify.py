"""Parity of every artifact against the Keras model, on the test split, in the runtime an edge app would use.

Per artifact: accuracy, its change against Keras in percentage points, top-1 agreement with Keras, and the
largest absolute difference of the output probabilities; checked against the pass criteria below and
written into the manifest. A file whose SHA-256 no longer matches the manifest is refused, and the C array
is checked byte for byte against the `.tflite` it was made from.

One loop verifies every artifact; what differs between runtimes is the scorer that turns an artifact into
probabilities: a native runner, the web app in headless Chromium, or the microcontroller interpreter.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toolkit import artifacts, manifest, runtimes
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.loader import NOT_IN_SITE, BrowserRunner, Loader
from toolkit.manifest import ArtifactRecord
from toolkit.parity import ParityRecord, Reference, score, self_check_of
from toolkit.workspace import Workspace


def reference(
    workspace: str | Path | Workspace,
    dataset: Dataset,
    limit: int | None = None,
    loader: Loader | None = None,
    allow_chance: bool = False,
) -> Reference:
    """The Keras model's probabilities on the test split (or its first `limit` images), made into inputs by the
    workspace's input contract, from the workspace's model as loaded once for this command."""
    workspace = Workspace.of(workspace)
    x, y = dataset.splits().test
    if limit is not None:
        x, y = x[:limit], y[:limit]
    contract = workspace.input_contract()
    images = to_model_input(x, contract)
    keras_runner = (loader or Loader(workspace)).keras()
    probabilities = runtimes.predict(keras_runner, images, batch_size=1000)
    trained = trained_accuracy(workspace, dataset)
    return Reference(images, y, probabilities, contract=contract, allow_chance=allow_chance, trained_accuracy=trained)


def trained_accuracy(workspace: Workspace, dataset: Dataset) -> float | None:
    """The test accuracy metrics.json records for the workspace's model, where the toolkit trained it here, on
    this data, and the model is still the one it wrote; else None."""
    metrics = workspace.metrics()
    if not isinstance(metrics, dict) or metrics.get("data_sha256") != dataset.sha256:
        return None
    if not workspace.model_path.is_file() or metrics.get("model_sha256") != workspace.sha256(workspace.model_path):
        return None
    value = (metrics.get("accuracy") or {}).get("test") if isinstance(metrics.get("accuracy"), dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
    """Desktop runtimes (LiteRT, ONNX Runtime), opened by the loader. A file with a second runtime
    (artifacts.second_runtime: LiteRT's CompiledModel for a phone's `.tflite`) runs there too, and the two
    runtimes' agreement is reported."""

    where = f"this machine's CPU ({platform.machine()})"

    def __init__(self, loader: Loader):
        self.loader, self.workspace, self.say = loader, loader.workspace, loader.say

    def run_native(self, record: ArtifactRecord, ref: Reference) -> np.ndarray:
        """The record's file in its desktop runtime on the reference images, once per file content."""
        path = self.workspace / record.file
        run = lambda: runtimes.predict(self.loader.open(record, probe=True), ref.images)  # noqa: E731
        return ref.run_native(path, self.workspace.sha256(path), run)

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored:
        probabilities = self.run_native(record, ref)
        second = artifacts.second_runtime(record.runtime, record.format)
        if second is None:
            return Scored(probabilities)
        self.say(f"{record.file}: {len(ref.images):,} images in {artifacts.runtime(second).label}")
        compiled = runtimes.predict(self.loader.open(record, runtime_name=second), ref.images)
        return Scored(probabilities, [], cross_check(second, record.file, compiled, probabilities))


def cross_check(runtime: str, file: str, probabilities: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """How far two runtimes agree on the same model: top-1 agreement and the largest probability difference."""
    return {
        "runtime": runtime,
        "file": file,
        "agreement": round(float(np.mean(probabilities.argmax(1) == other.argmax(1))), 6),
        "max_abs_diff": float(np.max(np.abs(probabilities - other))),
    }


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
        problems = self.problems(record, source, source_path)
        if problems:
            return Scored(None, problems)
        runner = self.loader.open(record)
        chunks = []
        for i in range(0, len(ref.images), 1000):
            self.say(f"{record.file}: {i:,}/{len(ref.images):,} images in LiteRT for Microcontrollers")
            chunks.append(runner.run(ref.images[i : i + 1000]))
        probabilities = np.concatenate(chunks)
        source_record = next((r for r in manifest.records(self.workspace) if r.file == source), None)
        desktop = (
            self.run_native(source_record, ref)
            if source_record is not None
            else runtimes.predict(runtimes.load(source_path), ref.images)
        )
        return Scored(probabilities, [], cross_check(artifacts.LITERT, source, desktop, probabilities))

    def problems(self, record: ArtifactRecord, source: str, source_path: Path) -> list[str]:
        """The C array against the `.tflite` it was made from, byte for byte, and its header's checksum."""
        from toolkit.micro import runtime as micro

        data = micro.read_c_array(self.workspace / record.file)
        expected = source_path.read_bytes()
        problems = []
        if data != expected:
            first = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b), min(len(data), len(expected)))
            problems.append(f"C array differs from {source} at byte {first} ({len(data)} vs {len(expected)} bytes)")
        if self.workspace.sha256(source_path) != record.made_with.get("source_sha256"):
            problems.append(f"{source} changed since the C array was made")
        return problems + header_problems(self.workspace, record)


def header_problems(workspace: Workspace, record: ArtifactRecord) -> list[str]:
    """The C array's header (what a firmware includes beside it) against the checksum recorded at export."""
    header, expected = record.made_with.get("header"), record.made_with.get("header_sha256")
    if not isinstance(header, str) or not isinstance(expected, str):
        return ["no header checksum recorded for it (export --format micro again)"]
    path = manifest.artifact_path(workspace, header)
    if not path.is_file():
        return [f"header {header} missing"]
    if workspace.sha256(path) != expected:
        return [f"header {header}: {manifest.NOT_CERTIFIED}"]
    return []


class BrowserScorer:
    """The web app in headless Chromium: each web model in its browser runtime, on the same images."""

    def __init__(self, loader: Loader):
        self.loader = loader
        self.where = loader.page.name  # starts the browser: a kind that cannot run here fails before any record

    def score(self, record: ArtifactRecord, ref: Reference) -> Scored:
        if self.loader.page.entry(record) is None:
            return Scored(None, [NOT_IN_SITE])
        return Scored(BrowserRunner(self.loader.page, record, self.loader.threads).run(ref.images))


SCORERS = {artifacts.NATIVE: NativeScorer, artifacts.MICRO: MicroScorer, artifacts.BROWSER: BrowserScorer}


def verify_artifact(
    workspace: str | Path | Workspace, record: ArtifactRecord, ref: Reference, scorer: Scorer
) -> ParityRecord:
    """Check one artifact's file, run it through `scorer`, and score it against the reference."""
    started = time.perf_counter()
    workspace = Workspace.of(workspace)
    path = workspace / record.file
    scored = Scored(None)
    if not path.is_file():
        scored.problems.append("file missing")
    elif workspace.sha256(path) != record.sha256:
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
    arch: str | None = None  # the other architecture the results come from (verify --arch), else this machine

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        results = [r.to_dict() for r in self.results]
        return {"passed": self.passed, "arch": self.arch, "results": results, "notes": self.notes}

    def raise_if_failed(self) -> None:
        failed = [r.file for r in self.results if not r.passed]
        causes = {p for r in self.results for p in r.problems if p.startswith("the Keras model ")}
        if failed and len(causes) == 1:  # the reference itself is wrong: one line that names why, not N files
            raise ToolkitError(f"{causes.pop()}; no file certified ({len(failed)} failed)")
        if failed:
            raise ToolkitError(f"verification failed for {len(failed)} artifact(s): {', '.join(failed)}")

    def _repr_html_(self) -> str:
        """Jupyter shows the record as the CLI's table."""
        from toolkit.console import html_of

        return html_of(self)


def check(
    workspace: str | Path | Workspace,
    dataset: Dataset,
    files: list[str] | None = None,
    limit: int | None = None,
    kinds: tuple[str, ...] = NATIVE_KINDS,
    threads: int = 1,
    optional: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
    write: bool = True,
    allow_chance: bool = False,
) -> Verification:
    """Verify the manifest's artifacts of these runtime kinds (or those named in `files`) against one Keras
    reference, in one pass, and record the results in the manifest. A kind in `optional` whose runtime cannot
    start here (no Chromium after an export) gets a note instead of failing the whole check."""
    workspace = Workspace.of(workspace)
    say = progress or (lambda msg: None)
    records = select_records(workspace, files, kinds)
    check_same_data(workspace, dataset)
    say(f"Keras reference on {limit or len(dataset.y_test)} test images")
    with Loader(workspace, threads, say) as loader:
        ref = reference(workspace, dataset, limit, loader, allow_chance)
        outcome = Verification([])
        for kind in kinds:
            chosen = [r for r in records if artifacts.kind_of(r.runtime) == kind]
            if chosen:
                verify_kind(loader, kind, chosen, ref, dataset, outcome, kind in optional)
    if write:
        full_split = len(ref.labels) == len(dataset.y_test)
        inputs = ref.self_check_inputs() if full_split else None
        manifest.put_verification(workspace, {r.file: r.to_dict() for r in outcome.results}, full_split, inputs)
    return outcome


def verify_kind(
    loader: Loader,
    kind: str,
    records: list[ArtifactRecord],
    ref: Reference,
    dataset: Dataset,
    outcome: Verification,
    optional: bool,
) -> None:
    """Verify the records of one runtime kind with its scorer; where the kind is `optional` and its runtime
    cannot start here (no Chromium after an export), a note instead of an error."""
    try:
        scorer = SCORERS[kind](loader)
        for record in records:
            loader.say(f"verifying {record.file} ({record.runtime}, {scorer.where})")
            outcome.results.append(verify_artifact(loader.workspace, record, ref, scorer))
            outcome.results[-1].data_sha256 = dataset.sha256
    except ToolkitError as e:
        if not optional:
            raise
        outcome.notes.append(f"{kind} artifacts not verified: {e}; run `toolkit verify --{kind}` where it can run")


def check_same_data(workspace: str | Path | Workspace, dataset: Dataset) -> None:
    """Refuse to certify on other data than the model was trained on (metrics.json records its fingerprint):
    another dataset's test split says nothing about this model."""
    workspace = Workspace.of(workspace)
    metrics_path = workspace.metrics_path
    trained = workspace.metrics()
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


def select_records(
    workspace: str | Path | Workspace, files: list[str] | None, kinds: tuple[str, ...]
) -> list[ArtifactRecord]:
    """The manifest's artifacts to verify; refused when model.keras is not the model they were exported from."""
    workspace = Workspace.of(workspace)
    records = manifest.select(workspace, files, kinds)
    model_sha = manifest.read(workspace).get("model", {}).get("sha256")
    model_path = workspace.model_path
    if model_sha and model_path.is_file() and workspace.sha256(model_path) != model_sha:
        raise ToolkitError(f"{model_path}: differs from the model the artifacts were exported from; export again")
    return records


def check_new(
    workspace: str | Path | Workspace,
    dataset: Dataset,
    records: list[ArtifactRecord],
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    allow_chance: bool = False,
) -> Verification:
    """Verify what an export just wrote, in one pass over one Keras reference. The web models need Chromium:
    on a machine without it they get a note (verify them later with `toolkit verify --browser`)."""
    kinds = (*NATIVE_KINDS, artifacts.BROWSER)
    runnable = [r.file for r in records if artifacts.kind_of(r.runtime) in kinds]  # Vela's files run on an Ethos-U
    return check(
        workspace,
        dataset,
        runnable,
        limit,
        kinds,
        optional=(artifacts.BROWSER,),
        progress=progress,
        allow_chance=allow_chance,
    )
