"""`toolkit quantize`: the smallest artifact within an accuracy budget, found among quantization recipes and verified
on the test split, and the per-layer error that says which layer costs accuracy.

Why: the question edge users bring is "how small can it get before it hurts, and which layer hurts?". Every recipe of
`toolkit.quantize.recipes` is made from the workspace's certified float32 file and verified on the test split in its
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
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio, manifest, runtimes, verify
from toolkit import workspace as ws
from toolkit.artifacts import LITERT, RECIPES_FORMAT
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.export import DEFAULT_CALIBRATION_SIZE, Calibration, describe_artifact, make_calibration
from toolkit.loader import Loader
from toolkit.machine import cpu_model, usable_cpus
from toolkit.parity import RECIPE_BUDGET_PP, Reference
from toolkit.quantize import backends, recipes
from toolkit.quantize.report import (
    FAIL,
    LATENCY_RUNS,
    LATENCY_WARMUP,
    NOT_SMALLER,
    PASS,
    QUANTIZE_FAILED,
    REPORT_DIR,
    RUN_FAILED,
    SCREENED,
    SKIPPED,
    SOURCE,
    LayerError,
    Outcome,
    Row,
    write_report,
)
from toolkit.timing import stats_ms, time_calls
from toolkit.workspace import Workspace

DEFAULT_BUDGET_PP = RECIPE_BUDGET_PP

EXPLAIN_DEFAULT = "int4"

LAYER_ERROR_IMAGES = 500  # calibration images for the per-layer errors (each layer's model runs on them)

SCREEN_MARGIN_PP = 1.0


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
    if kind not in recipes.LADDER or kind == recipes.LADDER[-1]:
        return None
    return recipes.LADDER[recipes.LADDER.index(kind) + 1]


class Workbench:
    """What a search or an explanation works with: the float32 sources, calibration images and the float model's
    probabilities on them, and a scratch folder inside the workspace for candidate files."""

    def __init__(self, workspace: Path, calibration: Calibration, scratch: Path, say: Callable[[str], None]):
        self.workspace, self.calibration, self.scratch, self.say = workspace, calibration, scratch, say
        self.sources = backends.workspace_sources(workspace, ws.model(workspace))
        if ".tflite" not in self.sources:
            raise ToolkitError(
                f"{ws.manifest(workspace)}: no certified float32 .tflite of {ws.MODEL_FILE} to quantize; "
                "run `toolkit export --format tflite` first"
            )
        self.tflite = self.sources[".tflite"]
        self.name = self.tflite.file.removesuffix(".float32.tflite")  # the stem every file of this model has
        self.layers = backends.model_layers(self.tflite.data)
        self.images = calibration.images[:LAYER_ERROR_IMAGES]
        float_runner = runtimes.load(self.workspace / self.tflite.file, probe=False)  # certified, run by verify
        self.float_probabilities = runtimes.predict(float_runner, calibration.images)
        self._alone: dict[recipes.Recipe, tuple[float, float]] = {}
        self._count = 0

    def path_for(self, recipe: recipes.Recipe) -> Path:
        return self.scratch / f"{self.name}.{recipe.name}{recipe.suffix}"

    def layer_errors(self, recipe: recipes.Recipe) -> list[LayerError]:
        """Each layer quantized alone as `recipe` quantizes it, worst first (lowest output SNR; float layers last)."""
        errors = []
        for layer in self.layers:
            alone = recipe.alone(layer, self.layers)
            snr, agreement = (math.inf, 1.0) if alone is None else self._alone_error(alone)
            kind = recipe.type_of(layer, self.layers)
            errors.append(LayerError(layer.name, layer.op, layer.params, kind, snr, agreement))
        return sorted(errors, key=lambda e: e.alone_snr_db)

    def _alone_error(self, alone: recipes.Recipe) -> tuple[float, float]:
        if alone not in self._alone:
            self._count += 1
            self.say(f"per-layer error: {alone.name} alone, on {len(self.images)} calibration images")
            path = self.scratch / f"alone-{self._count}.tflite"
            try:
                backends.build(alone, self.tflite, self.calibration, path)
                probabilities = runtimes.predict(runtimes.load(path, probe=False), self.images)
                reference = self.float_probabilities[: len(self.images)]
                agreement = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
                self._alone[alone] = (snr_db(reference, probabilities), agreement)
            except backends.RecipeFailed:  # the layer cannot be quantized (or run) that way: it cannot be blamed either
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

    def __init__(self, work: Workbench, dataset: Dataset, budget: float, ref: Reference):
        self.work, self.dataset, self.budget, self.ref = work, dataset, budget, ref
        self.made: dict[str, tuple[recipes.Recipe, dict[str, Any]]] = {}  # recipe name -> (recipe, made_with)

    def make(self, recipe: recipes.Recipe, origin: str) -> Row:
        row = Row(recipe.name, recipe.runtime, recipe.description, origin)
        source = self.work.sources.get(recipe.suffix)
        if source is None:
            row.status, row.message = SKIPPED, f"no certified float32 {recipe.suffix} in the workspace to quantize"
            return row
        self.work.say(f"{recipe.name}: quantizing ({recipe.description})")
        path = self.work.path_for(recipe)
        try:
            backends.build(recipe, source, self.work.calibration, path)
        except backends.RecipeFailed as e:
            row.status, row.message = (QUANTIZE_FAILED if e.stage == "quantize" else RUN_FAILED), str(e)
            return row
        made_with = backends.made_with(recipe, source, self.work.calibration, self.budget)
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
        record = describe_artifact(path, RECIPES_FORMAT, recipe.name, made_with)
        try:
            scorer = verify.NativeScorer(Loader(self.work.scratch))
            parity = verify.verify_artifact(self.work.scratch, record, self.ref, scorer)
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

    def fallback(self, start: recipes.Recipe, best: Row | None) -> list[Row]:
        """Widen the costliest layer, one type at a time, until the file passes or is no longer smaller than `best`."""
        rows: list[Row] = []
        recipe = start
        for _ in range(len(recipes.LADDER) * len(self.work.layers)):
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
        record = describe_artifact(target, RECIPES_FORMAT, recipe.name, made_with)
        manifest.put_artifacts(self.work.workspace, [record], {})  # the manifest's header stays: same model
        manifest.put_verification(self.work.workspace, {record.file: row.verification}, full_split)
        row.kept = record.file


def latency_ms(path: Path, images: np.ndarray) -> float:
    """Median batch-1 latency on one thread over a short timing."""
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
        raise ToolkitError(f"no recipe given in --recipe {value!r}; choose from: {', '.join(recipes.VARIANTS)}")
    chosen = [recipes.recipe_named(name) for name in names]
    if explain and len(chosen) > 1:
        raise ToolkitError(f"--explain takes one recipe, got {len(chosen)}: {', '.join(names)}")
    if explain and chosen[0].runtime != LITERT:
        raise ToolkitError(f"--explain works on LiteRT recipes; {chosen[0].name} is an {chosen[0].runtime} one")
    return names


def _plan(names: list[str] | None) -> list[recipes.Recipe]:
    return list(recipes.RECIPES) if names is None else [recipes.recipe_named(name) for name in dict.fromkeys(names)]


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
    allow_chance: bool = False,
) -> Outcome:
    """Try the recipes (all, or those named), verify each on the test split, fall back per layer where a failing one
    is smaller than the best, keep the smallest passing file in the workspace, and write the report. A Keras model
    at chance level fails every recipe, unless `allow_chance`."""
    started, clock = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    workspace, budget, plan, say = Path(workspace), check_budget(budget), _plan(recipes), progress or (lambda m: None)
    report_dir = report_folder(workspace, out)
    verify.select_records(workspace, None, verify.NATIVE_KINDS)  # refused: no manifest, or model.keras changed since
    verify.check_same_data(workspace, dataset)
    calibration = make_calibration(dataset, calibration_size, seed, Workspace.of(workspace).input_contract())
    with tempfile.TemporaryDirectory(dir=workspace, prefix=".quantize-") as scratch:
        work = Workbench(workspace, calibration, Path(scratch), say)
        say(f"Keras reference on {limit or len(dataset.y_test):,} test images")
        ref = verify.reference(workspace, dataset, limit, allow_chance=allow_chance)
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


def report_folder(workspace: Path, out: str | Path | None) -> Path:
    folder = Path(out) if out is not None else workspace / REPORT_DIR
    fsio.check_writable_target(folder / "quantization.json")  # fail now, not after minutes of quantizing
    return folder


def _source_row(work: Workbench, ref: Reference) -> Row:
    """The float32 file the recipes start from, verified the same way, for the table's reference line."""
    source = work.tflite
    record = next(r for r in manifest.records(work.workspace) if r.file == source.file)
    parity = verify.verify_artifact(work.workspace, record, ref, verify.NativeScorer(Loader(work.workspace)))
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
