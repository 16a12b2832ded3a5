"""`toolkit quantize`: the smallest artifact within an accuracy budget, found among quantization recipes and verified
on the test split, and the per-layer error that says which layer costs accuracy.

Why: the question edge users bring is "how small can it get before it hurts, and which layer hurts?". Every recipe of
`toolkit.export.recipes` is made from the workspace's certified float32 file and verified on the test split in its
runtime by the one verification loop (`toolkit.verify`), judged by the budget: accuracy loss against the Keras model,
in percentage points. The smallest passing file is kept. A recipe that fails the budget but is smaller gets the
per-layer fallback: the layer whose quantization alone costs most (the output's signal-to-noise ratio on calibration
images, that layer quantized and every other float) is re-quantized one type wider (int2 -> int4 -> int8 -> float),
until the file passes or is no longer smaller than the best. A fallback step that already disagrees with the float
model on more than budget + 1% of the calibration images is not run on the test split (a screen on training images:
int2 kernels take minutes there).

Calibration images come from the training split only (`toolkit.export.make_calibration`); the test split is used to
verify and for nothing else. The kept artifact joins the manifest like any export (format `recipes`, variant = recipe
name, made_with with its budget), so verify, benchmark and predict use it. The report (JSON, Markdown and the
size-vs-accuracy PNG; with --explain the per-layer table and bar chart) goes to DIR/quantization/.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio, manifest, runtimes, verify
from toolkit import workspace as ws
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.export import DEFAULT_CALIBRATION_SIZE, Calibration, describe_artifact, make_calibration
from toolkit.export import recipes as rc
from toolkit.model import MODEL_NAME

REPORT_DIR = ws.QUANTIZATION_DIR
DEFAULT_BUDGET_PP = verify.RECIPE_BUDGET_PP
EXPLAIN_DEFAULT = "int4"
LAYER_ERROR_IMAGES = 500  # calibration images for the per-layer errors (each layer's model runs on them)
VALIDATE_IMAGES = 100  # calibration images for ai-edge-quantizer's per-tensor comparison (two interpreters per image)
SCREEN_MARGIN_PP = 1.0
LATENCY_WARMUP, LATENCY_RUNS = 20, 200  # a short batch-1 timing, one thread (`toolkit benchmark` measures properly)
# row.status values
SOURCE, PASS, FAIL, QUANTIZE_FAILED, RUN_FAILED, SKIPPED, SCREENED, NOT_SMALLER = (
    "source",
    "pass",
    "fail",
    "fails to quantize",
    "fails to run",
    "skipped",
    "screened out",
    "not smaller",
)


@dataclass
class Row:
    """One recipe tried: its file, how it did on the test split, and why it stopped where it did."""

    recipe: str
    runtime: str
    summary: str
    origin: str  # "float32 source", "recipe", or "fallback from R: layer a -> b"
    status: str = PASS
    message: str = ""  # the failure, in the quantizer's or runtime's own words, or the criteria missed
    bytes: int | None = None
    percent_of_float32: float | None = None
    accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    agreement: float | None = None
    latency_p50_ms: float | None = None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> weight type
    pareto: bool = False
    kept: str | None = None  # the file written into the workspace, for the smallest passing row
    verification: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def result(self, best: str | None) -> str:
        """The table's last column."""
        if self.status in (PASS, FAIL):
            text = "pass" if self.passed else f"FAIL: {self.message}"
            return text + (", Pareto front" if self.pareto else "") + (", kept" if self.kept else "")
        if self.status == RUN_FAILED:
            return f"fails in {self.runtime}: {self.message}"
        if self.status == NOT_SMALLER:
            return f"not smaller than {best}: not verified"
        return f"{self.status}: {self.message}" if self.message else self.status


@dataclass
class Outcome:
    budget_pp: float
    images: int
    reference_accuracy: float
    calibration: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row]
    started_at: str
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.kept), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best"] = self.best.recipe if self.best else None
        return _finite(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        fields = {k: v for k, v in d.items() if k not in ("rows", "best")}
        return cls(rows=[Row(**r) for r in d["rows"]], **fields)

    def raise_if_none_passed(self) -> None:
        if self.best is None:
            raise ToolkitError(
                f"no recipe within {self.budget_pp:g} pp of the Keras model's accuracy (the table says why); "
                "allow more with --budget"
            )


@dataclass
class LayerError:
    """What quantizing one layer costs, on calibration images."""

    layer: str
    op: str
    params: int
    type: str  # its weight type in the recipe
    alone_snr_db: float  # output SNR when only this layer is quantized (inf: it stays float, or cannot be quantized)
    alone_agreement: float  # top-1 agreement with the float model, only this layer quantized
    output_snr_db: float | None = None  # SNR of this layer's output in the whole recipe (ai-edge-quantizer)
    output_mse: float | None = None


@dataclass
class Explanation:
    recipe: str
    summary: str
    images: int
    calibration: dict[str, Any]
    agreement: float | None  # the whole recipe against the float model on the calibration images
    layers: list[LayerError]
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _finite(obj: Any) -> Any:
    """JSON has no infinity: an SNR with no noise at all is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def check_budget(budget: float) -> float:
    if not (isinstance(budget, int | float) and math.isfinite(budget) and 0 <= budget <= 100):
        raise ToolkitError(f"--budget must be a number of percentage points from 0 to 100, got {budget}")
    return float(budget)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio of `other` against `reference` in dB (inf: identical; -inf: NaN in `other`)."""
    noise = float(np.sum((other.astype(np.float64) - reference) ** 2))
    if math.isnan(noise):
        return -math.inf
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


def _wider(kind: str) -> str | None:
    if kind not in rc.LADDER or kind == rc.LADDER[-1]:
        return None
    return rc.LADDER[rc.LADDER.index(kind) + 1]


class Workbench:
    """What a search or an explanation works with: the float32 sources, calibration images and the float model's
    probabilities on them, and a scratch folder inside the workspace for candidate files."""

    def __init__(self, workspace: Path, calibration: Calibration, scratch: Path, say: Callable[[str], None]):
        self.workspace, self.calibration, self.scratch, self.say = workspace, calibration, scratch, say
        self.sources = rc.workspace_sources(workspace, ws.model(workspace))
        if ".tflite" not in self.sources:
            raise ToolkitError(
                f"{ws.manifest(workspace)}: no certified float32 .tflite of {ws.MODEL_FILE} to quantize; "
                "run `toolkit export --format tflite` first"
            )
        self.tflite = self.sources[".tflite"]
        self.layers = rc.model_layers(self.tflite.data)
        self.images = calibration.images[:LAYER_ERROR_IMAGES]
        float_runner = runtimes.load(self.workspace / self.tflite.file, probe=False)  # certified, run by verify
        self.float_probabilities = runtimes.predict(float_runner, calibration.images)
        self._alone: dict[rc.Recipe, tuple[float, float]] = {}
        self._count = 0

    def path_for(self, recipe: rc.Recipe) -> Path:
        return self.scratch / f"{MODEL_NAME}.{recipe.name}{recipe.suffix}"

    def layer_errors(self, recipe: rc.Recipe) -> list[LayerError]:
        """Each layer quantized alone as `recipe` quantizes it, worst first (lowest output SNR; float layers last)."""
        errors = []
        for layer in self.layers:
            alone = recipe.alone(layer, self.layers)
            snr, agreement = (math.inf, 1.0) if alone is None else self._alone_error(alone)
            kind = recipe.type_of(layer, self.layers)
            errors.append(LayerError(layer.name, layer.op, layer.params, kind, snr, agreement))
        return sorted(errors, key=lambda e: e.alone_snr_db)

    def _alone_error(self, alone: rc.Recipe) -> tuple[float, float]:
        if alone not in self._alone:
            self._count += 1
            self.say(f"per-layer error: {alone.name} alone, on {len(self.images)} calibration images")
            path = self.scratch / f"alone-{self._count}.tflite"
            try:
                rc.build(alone, self.tflite, self.calibration, path)
                probabilities = runtimes.predict(runtimes.load(path, probe=False), self.images)
                reference = self.float_probabilities[: len(self.images)]
                agreement = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
                self._alone[alone] = (snr_db(reference, probabilities), agreement)
            except rc.RecipeFailed:  # the layer cannot be quantized (or run) that way: it cannot be blamed either
                self._alone[alone] = (math.inf, 1.0)
            finally:
                path.unlink(missing_ok=True)
        return self._alone[alone]

    def disagreement(self, path: Path) -> float:
        """Share of calibration images on which the file's top class differs from the float model's."""
        probabilities = runtimes.predict(runtimes.load(path, probe=False), self.calibration.images)
        return float(np.mean(probabilities.argmax(1) != self.float_probabilities.argmax(1)))


class Search:
    """One run of `toolkit quantize`: make, verify and time candidates; the per-layer fallback; keep the best."""

    def __init__(self, work: Workbench, dataset: Dataset, budget: float, ref: verify.Reference):
        self.work, self.dataset, self.budget, self.ref = work, dataset, budget, ref
        self.made: dict[str, tuple[rc.Recipe, dict[str, Any]]] = {}  # recipe name -> (recipe, made_with)

    def make(self, recipe: rc.Recipe, origin: str) -> Row:
        row = Row(recipe.name, recipe.runtime, recipe.description, origin)
        source = self.work.sources.get(recipe.suffix)
        if source is None:
            row.status, row.message = SKIPPED, f"no certified float32 {recipe.suffix} in the workspace to quantize"
            return row
        self.work.say(f"{recipe.name}: quantizing ({recipe.description})")
        path = self.work.path_for(recipe)
        try:
            rc.build(recipe, source, self.work.calibration, path)
        except rc.RecipeFailed as e:
            row.status, row.message = (QUANTIZE_FAILED if e.stage == "quantize" else RUN_FAILED), str(e)
            return row
        made_with = rc.made_with(recipe, source, self.work.calibration, self.budget)
        self.made[recipe.name] = (recipe, made_with)
        row.bytes = path.stat().st_size
        row.percent_of_float32 = round(100 * row.bytes / len(source.data), 4)
        row.layers = made_with.get("layers", {})
        return row

    def check(self, row: Row) -> None:
        """Verify a made candidate on the test split (the one verification loop) and time it at batch 1."""
        recipe, made_with = self.made[row.recipe]
        path = self.work.path_for(recipe)
        self.work.say(f"{row.recipe}: verifying on {len(self.ref.labels):,} test images")
        record = describe_artifact(path, rc.FORMAT, recipe.name, made_with)
        try:
            parity = verify.verify_artifact(self.work.scratch, record, self.ref, verify.NativeScorer(self.work.scratch))
            row.latency_p50_ms = latency_ms(path, self.ref.images)
        except ToolkitError as e:  # a runtime that loaded the file but fails on a larger batch
            row.status, row.message = RUN_FAILED, str(e)[:300]
            return
        parity.data_sha256 = self.dataset.sha256
        if parity.accuracy is None:  # the file did not run on the test images
            row.status, row.message = RUN_FAILED, "; ".join(parity.problems)
            return
        row.verification = parity.to_dict()
        row.accuracy, row.accuracy_delta_pp, row.agreement = parity.accuracy, parity.accuracy_delta_pp, parity.agreement
        row.status = PASS if parity.passed else FAIL
        row.message = "; ".join(parity.problems)

    def fallback(self, start: rc.Recipe, best: Row | None) -> list[Row]:
        """Widen the costliest layer, one type at a time, until the file passes or is no longer smaller than `best`."""
        rows: list[Row] = []
        recipe = start
        for _ in range(len(rc.LADDER) * len(self.work.layers)):
            step = next(
                ((e.layer, e.type, _wider(e.type)) for e in self.work.layer_errors(recipe) if _wider(e.type)), None
            )
            if step is None:
                break
            layer, old, new = step
            recipe = recipe.widened(layer, new)
            row = self.make(recipe, f"fallback from {start.name}: {layer} {old} -> {new}")
            rows.append(row)
            if row.bytes is None:
                break
            if best is not None and row.bytes >= best.bytes:
                row.status = NOT_SMALLER
                break
            share = self.work.disagreement(self.work.path_for(recipe))
            if share * 100 > self.budget + SCREEN_MARGIN_PP:
                row.status = SCREENED
                row.message = (
                    f"disagrees with float32 on {share:.1%} of {len(self.work.calibration.images):,} calibration "
                    f"images (training split), > {self.budget + SCREEN_MARGIN_PP:g}%"
                )
                continue
            self.check(row)
            if row.passed:
                break
        return rows

    def keep(self, row: Row, full_split: bool) -> None:
        """Write the row's file into the workspace and record it, with its verification, in the manifest."""
        recipe, made_with = self.made[row.recipe]
        target = fsio.write_bytes(
            self.work.workspace / self.work.path_for(recipe).name, self.work.path_for(recipe).read_bytes()
        )
        record = describe_artifact(target, rc.FORMAT, recipe.name, made_with)
        manifest.put_artifacts(self.work.workspace, [record], {})  # the manifest's header stays: same model
        manifest.put_verification(self.work.workspace, {record.file: row.verification}, full_split)
        row.kept = record.file


def latency_ms(path: Path, images: np.ndarray) -> float:
    """Median batch-1 latency on one thread over a short timing."""
    from toolkit.bench.stats import stats_ms, time_calls

    runner = runtimes.load(path, threads=1, probe=False)
    batches = [images[i : i + 1] for i in range(32)]
    return round(stats_ms(time_calls(runner.run, batches, LATENCY_WARMUP, LATENCY_RUNS))["p50_ms"], 4)


def mark_pareto(rows: list[Row]) -> None:
    """The size-accuracy front among verified rows: no other row is as small and at least as accurate."""
    verified = [r for r in rows if r.accuracy is not None and r.status != SOURCE]
    for r in verified:
        r.pareto = not any(
            o is not r
            and o.bytes <= r.bytes
            and o.accuracy >= r.accuracy
            and (o.bytes, o.accuracy) != (r.bytes, r.accuracy)
            for o in verified
        )


def parse_recipes(value: str | None, explain: bool = False) -> list[str] | None:
    """--recipe (comma-separated names, or None: every recipe) checked; --explain takes one LiteRT recipe, int4 by
    default."""
    if value is None:
        return [EXPLAIN_DEFAULT] if explain else None
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise ToolkitError(f"no recipe given in --recipe {value!r}; choose from: {', '.join(rc.VARIANTS)}")
    chosen = [rc.recipe_named(name) for name in names]
    if explain and len(chosen) > 1:
        raise ToolkitError(f"--explain takes one recipe, got {len(chosen)}: {', '.join(names)}")
    if explain and chosen[0].runtime != "litert":
        raise ToolkitError(f"--explain works on LiteRT recipes; {chosen[0].name} is an {chosen[0].runtime} one")
    return names


def _plan(names: list[str] | None) -> list[rc.Recipe]:
    return list(rc.RECIPES) if names is None else [rc.recipe_named(name) for name in dict.fromkeys(names)]


def search(
    workspace: str | Path,
    dataset: Dataset,
    budget: float = DEFAULT_BUDGET_PP,
    recipes: list[str] | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Try the recipes (all, or those named), verify each on the test split, fall back per layer where a failing one
    is smaller than the best, keep the smallest passing file in the workspace, and write the report."""
    from toolkit.bench.machine import cpu_model, usable_cpus

    started, clock = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    workspace, budget, plan, say = Path(workspace), check_budget(budget), _plan(recipes), progress or (lambda m: None)
    report_dir = _report_dir(workspace, out)
    verify.select_records(workspace, None, verify.NATIVE_KINDS)  # refused: no manifest, or model.keras changed since
    verify.check_same_data(workspace, dataset)
    calibration = make_calibration(dataset, calibration_size, seed)
    with tempfile.TemporaryDirectory(dir=workspace, prefix=".quantize-") as scratch:
        work = Workbench(workspace, calibration, Path(scratch), say)
        say(f"Keras reference on {limit or len(dataset.y_test):,} test images")
        ref = verify.reference(workspace, dataset, limit)
        run = Search(work, dataset, budget, ref)
        rows = [_source_row(work, ref)]
        made = [run.make(r, "recipe") for r in plan]
        rows += [r for r in made if r.bytes is None]
        for row in sorted((r for r in made if r.bytes is not None), key=lambda r: r.bytes):
            run.check(row)
            rows.append(row)
        best = _smallest(rows)
        for start in sorted((r for r in rows if r.status == FAIL), key=lambda r: r.bytes):
            recipe_of_start = run.made[start.recipe][0]
            if not recipe_of_start.widenable or (best is not None and start.bytes >= best.bytes):
                continue
            say(f"{start.recipe}: per-layer fallback (budget {budget:g} pp)")
            tried = run.fallback(recipe_of_start, best)
            rows += tried
            best = _smallest(rows)
        mark_pareto(rows)
        if best is not None:
            run.keep(best, full_split=limit is None)
    outcome = Outcome(
        budget_pp=budget,
        images=len(ref.labels),
        reference_accuracy=ref.accuracy,
        calibration=calibration.describe(),
        machine={"cpu": cpu_model(), "cpus_usable": usable_cpus()},
        rows=rows,
        started_at=started,
        seconds=round(time.perf_counter() - clock, 1),
    )
    stem = "quantization" if recipes is None else "quantization-" + "-".join(r.base for r in plan)
    outcome.files = write_report(outcome, report_dir, stem)
    return outcome


def _smallest(rows: list[Row]) -> Row | None:
    """The smallest passing row (the more accurate of two of one size)."""
    return min((r for r in rows if r.passed), key=lambda r: (r.bytes, -r.accuracy), default=None)


def _report_dir(workspace: Path, out: str | Path | None) -> Path:
    folder = Path(out) if out is not None else workspace / REPORT_DIR
    fsio.check_writable_target(folder / "quantization.json")  # fail now, not after minutes of quantizing
    return folder


def _source_row(work: Workbench, ref: verify.Reference) -> Row:
    """The float32 file the recipes start from, verified the same way, for the table's reference line."""
    source = work.tflite
    record = next(r for r in manifest.records(work.workspace) if r.file == source.file)
    parity = verify.verify_artifact(work.workspace, record, ref, verify.NativeScorer(work.workspace))
    return Row(
        recipe="float32",
        runtime=record.runtime,
        summary="the float32 .tflite every LiteRT recipe starts from",
        origin="float32 source",
        status=SOURCE,
        bytes=record.bytes,
        percent_of_float32=100.0,
        accuracy=parity.accuracy,
        accuracy_delta_pp=parity.accuracy_delta_pp,
        agreement=parity.agreement,
        latency_p50_ms=latency_ms(work.workspace / source.file, ref.images),
        layers={layer.name: "float" for layer in work.layers},
    )


# -------------------------------------------------------------------------------------------- explain


def explain(
    workspace: str | Path,
    dataset: Dataset,
    recipe: str = EXPLAIN_DEFAULT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Explanation:
    """Per-layer error of one recipe on calibration images (training split; no test image is read): each layer
    quantized alone (output SNR and agreement with the float model), and each layer's output SNR and MSE in the whole
    recipe from ai-edge-quantizer's model comparison. Sorted, costliest first; written as JSON, Markdown and a PNG."""
    workspace, say = Path(workspace), progress or (lambda m: None)
    chosen = rc.recipe_named(parse_recipes(recipe, explain=True)[0])
    report_dir = _report_dir(workspace, out)
    calibration = make_calibration(dataset, calibration_size, seed)
    with tempfile.TemporaryDirectory(dir=workspace, prefix=".quantize-") as scratch:
        work = Workbench(workspace, calibration, Path(scratch), say)
        whole = work.path_for(chosen)
        try:
            rc.build(chosen, work.tflite, calibration, whole)
        except rc.RecipeFailed as e:
            where = "fails to quantize" if e.stage == "quantize" else "fails in LiteRT"
            raise ToolkitError(f"recipe {recipe} {where}: {e}") from None
        errors = work.layer_errors(chosen)
        notes = _whole_recipe_errors(work, whole.read_bytes(), errors)
        agreement = 1 - work.disagreement(whole)
    result = Explanation(
        chosen.name, chosen.summary, len(work.images), calibration.describe(), agreement, errors, notes
    )
    result.files = write_explanation(result, report_dir)
    return result


def _whole_recipe_errors(work: Workbench, quantized: bytes, errors: list[LayerError]) -> list[str]:
    """Fill each layer's output SNR and MSE in the whole recipe from ai-edge-quantizer's comparison of every tensor."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    images = work.calibration.images[:VALIDATE_IMAGES]
    data = rc.signature_samples(work.tflite.data, images)
    try:
        with fsio.captured_output():
            comparison = model_validator.compare_model(
                bytearray(work.tflite.data),
                bytearray(quantized),
                data,
                [ValidationErrorMetric.SNR, ValidationErrorMetric.MSE],
                num_threads=1,
            )
    except Exception as e:  # the interpreter's refusal, as for any file it cannot run
        return [f"ai-edge-quantizer's comparison failed: {' '.join(str(e).split())[:300]}"]
    tensors = comparison.get_all_tensor_results()
    scopes = {layer.name: layer.scope.removesuffix(";") for layer in work.layers}
    for e in errors:
        metrics = tensors.get(scopes[e.layer])
        if metrics:
            e.output_snr_db = 10 * math.log10(metrics["snr"]) if metrics["snr"] > 0 else -math.inf
            e.output_mse = metrics["mse"]
    return [f"output SNR and MSE per layer: ai-edge-quantizer model_validator.compare_model on {len(images)} images"]


# --------------------------------------------------------------------------------------------- report


COLUMNS = ["recipe", "runtime", "bytes", "% of float32", "accuracy", "Δ pp", "agreement", "p50 ms", "result"]


def table_rows(outcome: Outcome) -> tuple[list[str], list[list[str]], list[str | None]]:
    """Columns, rows and row styles of the results table (CLI and Markdown): the source, then by size."""
    best = outcome.best.recipe if outcome.best else None

    def fmt(value, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    rows, styles = [], []
    for r in sorted(outcome.rows, key=lambda r: (r.status != SOURCE, r.bytes is None, r.bytes or 0)):
        rows.append(
            [
                r.recipe,
                r.runtime,
                fmt(r.bytes, ","),
                fmt(r.percent_of_float32, ".1f"),
                "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                fmt(r.accuracy_delta_pp, "+.2f"),
                "-" if r.agreement is None else f"{r.agreement:.2%}",
                fmt(r.latency_p50_ms, ".3f"),
                "float32 source" if r.status == SOURCE else r.result(best),
            ]
        )
        styles.append("bold green" if r.kept else "green" if r.passed else None if r.status == SOURCE else "red")
    return COLUMNS, rows, styles


def explain_rows(result: Explanation) -> tuple[list[str], list[list[str]]]:
    def db(value: float | None) -> str:
        if value is None:
            return "-"
        return "no error" if value == math.inf else "NaN output" if value == -math.inf else f"{value:.1f}"

    columns = ["layer", "op", "weights", "type", "alone: output SNR dB", "alone: agreement", "output SNR dB", "MSE"]
    rows = [
        [
            e.layer,
            e.op,
            f"{e.params:,}",
            e.type,
            db(e.alone_snr_db),
            "-" if e.alone_agreement is None else f"{e.alone_agreement:.2%}",
            db(e.output_snr_db),
            "-" if e.output_mse is None else f"{e.output_mse:.2e}",
        ]
        for e in result.layers
    ]
    return columns, rows


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    number = re.compile(r"[-+]?[\d,.]+(e[-+]\d+)?%?|-|no error")
    align = ["---:" if i and all(number.fullmatch(row[i]) for row in rows) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def markdown(outcome: Outcome) -> str:
    columns, rows, _ = table_rows(outcome)
    best = outcome.best
    lines = [
        "# Quantization recipes: the smallest model within the accuracy budget",
        "",
        f"Budget: accuracy loss <= {outcome.budget_pp:g} percentage points against the Keras model "
        f"({outcome.reference_accuracy:.2%}) on {outcome.images:,} test images, verified in each file's runtime. "
        f"Calibration and per-layer errors: {outcome.calibration['images']:,} images, "
        f"{outcome.calibration['sampling']} (seed {outcome.calibration['seed']}); never a test image. "
        f"Latency: batch-1 p50 over {LATENCY_RUNS} calls on one thread, {outcome.machine['cpu']} "
        f"({outcome.machine['cpus_usable']} CPUs usable); `toolkit benchmark` measures properly. "
        f"{outcome.started_at}, {outcome.seconds:g} s.",
        "",
        *markdown_table(columns, rows),
        "",
        f"**Kept**: `{best.kept}` ({best.bytes:,} bytes, {best.percent_of_float32:.1f}% of float32, "
        f"{best.accuracy:.2%}, {best.accuracy_delta_pp:+.2f} pp)."
        if best
        else "**Kept**: nothing passed the budget.",
        "",
        "Fallback rows say where they came from:",
        "",
        *[f"- `{r.recipe}`: {r.origin}" for r in outcome.rows if r.origin.startswith("fallback")],
        "",
    ]
    return "\n".join(lines)


def read_report(workspace: Path) -> Outcome | None:
    """The last full search's outcome in the workspace (DIR/quantization/quantization.json), if there is one."""
    path = Path(workspace) / REPORT_DIR / "quantization.json"
    return Outcome.from_dict(fsio.read_json(path)) if path.is_file() else None


def pareto_png(outcome: Outcome, target: Path) -> Path:
    """Size against accuracy: passing green, failing red, the front joined; points far below drawn at the bottom."""
    from toolkit.report import pyplot, save_png

    plt = pyplot()
    verified = [r for r in outcome.rows if r.accuracy is not None]
    reference = outcome.reference_accuracy * 100
    floor = reference - max(1.0, 5 * outcome.budget_pp)
    fig, ax = plt.subplots(figsize=(10, 6))
    ax.axhline(reference - outcome.budget_pp, color="grey", linestyle="--", linewidth=1)
    ax.text(
        min(r.bytes for r in verified) / 1000,
        reference - outcome.budget_pp,
        f" budget: -{outcome.budget_pp:g} pp",
        va="bottom",
        fontsize=8,
        color="grey",
    )
    front = sorted((r for r in verified if r.pareto), key=lambda r: r.bytes)
    ax.step(
        [r.bytes / 1000 for r in front],
        [max(r.accuracy * 100, floor) for r in front],
        where="post",
        color="tab:blue",
        linewidth=1,
        label="Pareto front",
    )
    placed: list[tuple[float, float]] = []
    for r in sorted(verified, key=lambda r: (r.bytes, -r.accuracy)):
        x, y = r.bytes / 1000, r.accuracy * 100
        color = "black" if r.status == SOURCE else "tab:green" if r.passed else "tab:red"
        marker = "s" if r.status == SOURCE else "v" if y < floor else "o" if r.passed else "x"
        ax.scatter(x, max(y, floor), color=color, marker=marker, s=60 if r.kept else 30, zorder=3)
        label = r.recipe + (f" ({y:.2f}%)" if y < floor else "") + (" - kept" if r.kept else "")
        near = sum(1 for px, py in placed if abs(math.log(x / px)) < 0.35 and abs(py - max(y, floor)) < 0.06)
        placed.append((x, max(y, floor)))
        ax.annotate(label, (x, max(y, floor)), fontsize=7, xytext=(5, 3 - 9 * near), textcoords="offset points")
    ax.set_xscale("log")
    ticks = [t for t in (100, 150, 200, 300, 500, 1000, 2000, 5000) if min(placed)[0] / 1.5 < t < max(placed)[0] * 1.5]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(floor - 0.05, reference + 0.15)
    ax.set_xlabel("file size (KB, log scale)")
    ax.set_ylabel(f"accuracy on {outcome.images:,} test images (%)")
    ax.set_title("Quantization recipes: size against accuracy (green: within budget, red: not)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, target)


def write_report(outcome: Outcome, folder: Path, stem: str) -> dict[str, str]:
    files = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md"}
    if any(r.accuracy is not None for r in outcome.rows):
        files["plot"] = folder / f"{stem}.png"
    outcome.files = {k: str(v) for k, v in files.items()}
    fsio.write_json(files["json"], outcome.to_dict())
    fsio.write_text(files["markdown"], markdown(outcome))
    if "plot" in files:
        pareto_png(outcome, files["plot"])
    return outcome.files


def write_explanation(result: Explanation, folder: Path) -> dict[str, str]:
    from toolkit.report import pyplot, save_png

    stem = f"explain-{result.recipe}"
    files = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "plot": folder / f"{stem}.png"}
    result.files = {k: str(v) for k, v in files.items()}
    fsio.write_json(files["json"], result.to_dict())
    columns, rows = explain_rows(result)
    agreement = "-" if result.agreement is None else f"{result.agreement:.2%}"
    text = [
        f"# Per-layer error of `{result.recipe}` ({result.summary})",
        "",
        f"On {result.images:,} calibration images ({result.calibration['sampling']}; no test image). "
        "*alone*: only this layer quantized, every other float: the SNR of the output probabilities and the top-1 "
        "agreement with the float model (sorted by this, costliest first). *output SNR/MSE*: this layer's output in "
        f"the whole recipe, errors of the layers before it included. The whole recipe agrees with float32 on "
        f"{agreement} of the calibration images.",
        "",
        *markdown_table(columns, rows),
        "",
        *[f"- {note}" for note in result.notes],
        "",
    ]
    fsio.write_text(files["markdown"], "\n".join(text))
    plt = pyplot()
    shown = [e for e in result.layers if e.alone_snr_db is not None and math.isfinite(e.alone_snr_db)]
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(result.layers), 4) + 1.5))
    names = [f"{e.layer} ({e.type}, {e.params:,})" for e in result.layers]
    values = [e.alone_snr_db if e in shown else 0 for e in result.layers]
    bars = ax.barh(names, values, color=["tab:red" if e is result.layers[0] else "tab:blue" for e in result.layers])
    for bar, e in zip(bars, result.layers):
        if e not in shown:
            ax.text(
                0,
                bar.get_y() + bar.get_height() / 2,
                " no error" if e.alone_snr_db == math.inf else " NaN output",
                va="center",
                fontsize=8,
            )
    ax.invert_yaxis()
    ax.set_xlabel("output SNR in dB with only this layer quantized (lower: costs more)")
    ax.set_title(f"{result.recipe}: which layer costs accuracy ({result.images} calibration images)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, files["plot"])
    return result.files
