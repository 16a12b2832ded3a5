"""What the CLI shows: rich tables, progress bars and the Keras callback that feeds one. The library never prints."""

from __future__ import annotations

import re
import sys
import time

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from toolkit.artifacts import BROWSER, kind_of
from toolkit.backend import keras as _keras
from toolkit.contract import InputContract
from toolkit.tables import visible


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # in a pipe or a CI log there is no terminal width: use one wide enough for the result tables
    # markup off: paths and labels are the user's text, and "[red]x[/blue].png" is a file name, not markup
    return Console(stderr=stderr, highlight=False, markup=False, width=None if probe.is_terminal else 160)


console = _console()
err_console = _console(stderr=True)


def error(message: str) -> None:
    try:  # a file name that is not UTF-8 shows its bytes, escaped (dir\xff)
        printable = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        printable = message.encode("utf-8", "backslashreplace").decode("utf-8")
    err_console.print(Text.assemble(("error:", "bold red"), " ", printable), soft_wrap=True)


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal,
    )


_NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?%?$")


def table(title: str | None, columns: list[str], rows: list[list], styles: list[str | None] | None = None):
    t = Table(header_style="bold")
    for i, col in enumerate(columns):
        values = [visible(str(row[i])) for row in rows]
        numeric = i > 0 and all(_NUMBER.match(v) or v == "-" for v in values)
        t.add_column(col, justify="right" if numeric else "left")
    for i, row in enumerate(rows):
        t.add_row(*[Text(visible(str(c))) for c in row], style=(styles[i] if styles else None))
    return Group(Text(visible(title), style="bold"), t) if title else t


def _short(file: str) -> str:
    return file.removeprefix("web/models/")


def export_table(records, title: str):
    rows = [
        [
            r.file,
            r.format,
            r.variant,
            r.runtime,
            f"{r.bytes:,}",
            f"{r.input.dtype}{r.input.shape}",
            f"{r.output.dtype}{r.output.shape}",
        ]
        for r in records
    ]
    return table(title, ["artifact", "format", "variant", "runtime", "bytes", "input", "output"], rows)


def _runtime_where(r) -> str:
    """A verification's runtime, with the browser it ran in for web models (native ones all run on this CPU)."""
    if kind_of(r.runtime) == BROWSER and r.where:
        return f"{r.runtime} in {r.where.replace(' (headless)', '')}"
    return r.runtime


def parity_table(results, title: str, short: bool = True):
    """Verification results (toolkit.verify.ParityRecord), a row each, with their problems below the table; web
    files by their name alone where `short`."""
    rows, styles = [], []
    for r in results:
        rows.append(
            [
                _short(r.file) if short else r.file,
                _runtime_where(r),
                f"{r.images:,}",
                "-" if r.accuracy is None else f"{r.accuracy:.4f}",
                "-" if r.accuracy_delta_pp is None else f"{r.accuracy_delta_pp:+.2f}",
                "-" if r.agreement is None else f"{r.agreement:.2%}",
                "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
                r.criteria,
                "PASS" if r.passed else "FAIL",
            ]
        )
        styles.append("green" if r.passed else "bold red")
    ref = next((r.reference_accuracy for r in results if r.reference_accuracy is not None), None)
    columns = ["artifact", "runtime", "images", "accuracy", "Δ pp", "agreement", "max |Δp|", "criteria", "result"]
    problems = [Text(f"{r.file}: {p}", style="bold red") for r in results for p in r.problems]
    problems += [
        Text(
            f"{r.file}: agrees with {c['runtime']} ({c['file']}) on {c['agreement']:.2%} of the images, "
            f"max |Δp| {c['max_abs_diff']:.1e}"
        )
        for r in results
        if (c := r.cross_check)
    ]
    titled = title + (f" (Keras reference accuracy {ref:.4f})" if ref is not None else "")
    return Group(table(titled, columns, rows, styles), *problems)


_BENCH_COLUMNS = [
    "artifact",
    "runtime",
    "device",
    "threads",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "GFLOP/s (of fp32 peak)",
    "p50 / floor",
    "cold ms",
    "RSS MB",
    "size",
]


def _bench_row(r) -> tuple[list, str | None]:
    """A timed or untimed row of the benchmark table and its style: a skipped or failed row shows its note."""
    device = r.device.replace(" (headless)", "")
    if r.status != "ok":
        note = f"{r.status}: {r.note}"[:120]
        row = [_short(r.artifact), r.runtime, device, r.threads or "-", r.batch_size, *["-"] * 8, note]
        return row, "dim" if r.status == "skipped" else "red"
    row = [
        _short(r.artifact),
        r.runtime,
        device,
        r.threads,
        r.batch_size,
        f"{r.p50_ms:.3f}",
        f"{r.p90_ms:.3f}",
        f"{r.p99_ms:.3f}",
        f"{r.images_per_second:,.0f}",
        "-" if r.gflops_per_second is None else f"{r.gflops_per_second:.1f} ({r.fraction_of_peak:.0%})",
        "-" if r.ratio_to_floor is None else f"{r.ratio_to_floor:.2f}x",
        f"{r.load_ms:.0f}",
        "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
        f"{r.bytes / 1024:,.0f} KB",
    ]
    return row, None


def _device_table(results):
    """Microcontroller and NPU rows (sized at export, or Vela's estimates) as a table of their own; None if none."""
    rows = [
        [
            _short(r.artifact),
            r.runtime,
            r.device,
            f"{r.ram_bytes:,}" if r.ram_bytes else "-",
            f"{r.flash_bytes:,}" if r.flash_bytes else "-",
            r.note,
            r.method,
        ]
        for r in results
        if r.status in ("estimate", "sized")
    ]
    if not rows:
        return None
    return table(
        "Microcontroller and NPU: sizes measured at export; NPU rows are Vela ESTIMATES",
        ["artifact", "runtime", "device", "RAM B", "flash B", "figures", "how obtained"],
        rows,
    )


def _bench_notes(report) -> list[Text]:
    """The lines under the tables: the harness check (when it ran) and each browser-against-native comparison."""
    notes = []
    hc = report.harness_check
    if hc and "error" not in hc:
        notes.append(
            Text(
                f"Harness check: p50 {hc['harness_p50_ms']:.4f} ms vs bare LiteRT loop "
                f"{hc['bare_loop_p50_ms']:.4f} ms ({hc['overhead_fraction']:+.1%})"
            )
        )
    for c in report.comparison or []:
        notes.append(
            Text(
                f"Browser vs native, {c['threads']} thread(s), batch 1: best web {c['best_web']} p50 "
                f"{c['best_web_p50_ms']:.3f} ms, best native {c['best_native']} {c['best_native_p50_ms']:.3f} "
                f"ms: {c['web_over_native']:.2f}x"
            )
        )
    return notes


def benchmark_table(report):
    """A benchmark run (toolkit.bench.driver.BenchReport): a row per measurement, the harness check, the int8 note."""
    timed = [_bench_row(r) for r in report.results if r.status not in ("estimate", "sized")]  # those: shown apart
    rows, styles = [row for row, _ in timed], [style for _, style in timed]
    m = report.machine
    where = f" in {report.browser['name']}" if report.browser else ""
    parts = [table(f"Benchmark on {m['cpu']} ({m['cpus_usable']} CPUs){where}", _BENCH_COLUMNS, rows, styles)]
    device = _device_table(report.results)
    if device is not None:
        parts.append(device)
    parts += _bench_notes(report)
    parts.append(Text(m["int8_note"], style="dim"))
    return Group(*parts)


def layer_table(profile):
    """`toolkit profile`: one row per layer, the costliest share first in the reader's eye by its share column."""
    rows = [
        [
            r.layer,
            ", ".join(r.ops),
            f"{r.microseconds:.0f}",
            f"{r.share:.0%}",
            f"{r.mflop:.2f}" if r.mflop else "-",
            f"{r.gflops_per_second:.1f}" if r.gflops_per_second else "-",
            f"{r.fraction_of_peak:.0%}" if r.fraction_of_peak else "-",
            f"{r.weight_bytes / 1024:.0f}" if r.weight_bytes else "-",
            f"{r.weight_gb_per_second:.1f}" if r.weight_gb_per_second else "-",
        ]
        for r in profile.rows
    ]
    title = (
        f"{profile.artifact}, batch 1, {profile.threads} thread(s): p50 {profile.p50_ms:.3f} ms unprofiled, "
        f"{profile.profiled_ms:.3f} ms profiled; floor {profile.floor_ms:.3f} ms "
        f"({profile.p50_ms / profile.floor_ms:.2f}x) at {profile.peak_gflops:.0f} GFLOP/s"
    )
    columns = ["layer", "kernels", "us", "share", "MFLOP", "GFLOP/s", "of peak", "weights KB", "weights GB/s"]
    return table(title, columns, rows)


def keras_progress_callback():
    """A Keras callback: one progress bar per epoch, then a one-line summary of that epoch."""
    keras = _keras()

    class RichEpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._total = self.params.get("epochs", 0)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._progress = progress_bar(transient=True)
            self._progress.start()
            steps = self.params.get("steps") or 0
            self._task = self._progress.add_task(f"epoch {epoch + 1}/{self._total}", total=steps, status="")

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            status = f"loss {logs.get('loss', float('nan')):.4f}  acc {logs.get('accuracy', float('nan')):.4f}"
            self._progress.update(self._task, completed=batch + 1, status=status)

        def on_epoch_end(self, epoch, logs=None):
            self._progress.stop()
            logs = logs or {}
            err_console.print(
                f"epoch {epoch + 1:>3}/{self._total}  loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}"
                + (
                    f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}"
                    if "val_accuracy" in logs  # none with --all-data
                    else ""
                )
                + f"  {time.perf_counter() - self._t0:.1f} s"
                + (f"  {logs['gflop_per_s']:.1f} GFLOP/s" if "gflop_per_s" in logs else "")
                + (f" ({logs['fraction_of_peak']:.0%} of peak)" if "fraction_of_peak" in logs else "")
            )
            sys.stderr.flush()

    return RichEpochProgress()


def html_of(record) -> str:
    """A library record as the CLI shows it, in HTML: what Jupyter displays for an API result (`_repr_html_`)."""
    import io

    recorder = Console(record=True, file=io.StringIO(), width=160, highlight=False, markup=False, force_jupyter=False)
    for part in renderables_of(record):
        recorder.print(part)
    return recorder.export_html(inline_styles=True, code_format="<pre style='font-size: 12px'>{code}</pre>")


def renderables_of(record) -> list:
    """The tables of a record of the API: an export, a verification, a benchmark run, a quantization search."""
    parts: list = []
    if hasattr(record, "artifacts") and hasattr(record, "refused"):  # api.ExportResult
        parts.append(export_table(record.artifacts, "Exported"))
        record = record.verification
    if record is None:
        return parts
    if hasattr(record, "results") and hasattr(record, "notes"):  # verify.Verification
        parts.append(parity_table(record.results, "Verification against the Keras model"))
        parts.extend(Text(note, style="yellow") for note in record.notes)
    elif hasattr(record, "report") and hasattr(record, "merged"):  # bench.benchmark.BenchOutcome
        parts.append(benchmark_table(record.report))
    elif callable(getattr(record, "titled_rows", None)):  # a record that lays out its own table (quantize Outcome)
        parts.append(table(*record.titled_rows()))
    return parts


def show_data_report(report, ds, brief: bool = False) -> None:
    """`toolkit data` (and with `brief`, the two lines `toolkit train` starts with): source, checksums, splits."""
    if brief:
        sizes = "  ".join(f"{s.name} {s.count:,}" for s in report.splits)
        console.print(f"Data: {report.dataset} from {report.source} ({report.location}); {report.checksums}")
        console.print(f"      {sizes}; pixels {report.splits[0].pixel_min}-{report.splits[0].pixel_max}")
        return
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
    console.print("Model input: pixel / 255 -> float32 [0, 1] for the reference model; another model takes what its")
    console.print(f"input contract says (`toolkit export --input-contract`); NHWC {h}x{w}x{c}")


def show_training(result) -> None:
    """The end of `toolkit train`: the kept epoch, the files written, accuracy and loss per split."""
    m = result.metrics
    console.print(
        f"Best epoch {m['best_epoch']} of {m['epochs']}; {m['seconds_per_epoch']} s per epoch on {m['device']}"
    )
    console.print(f"Wrote {result.model_path} and {result.metrics_path}")
    if isinstance(m.get("input_contract"), dict):
        console.print(f"Inputs: {InputContract.from_dict(m['input_contract']).describe()}")
    for label, values in (("Accuracy", m["accuracy"]), ("    Loss", m["loss"])):
        shown = (f"{k}: {'-' if values[k] is None else format(values[k], '.3f')}" for k in ("train", "valid", "test"))
        console.print(f"{label}:  " + "  ".join(shown), style="bold")


def show_verification(outcome) -> None:
    """A verification: the native and the browser results in a table each, then what was not checked."""
    if outcome.arch is not None:  # every file in the native runtime of its suffix, web files too: full names
        console.print(parity_table(outcome.results, f"Verification on {outcome.arch} against Keras and x86", False))
    browser = [r for r in outcome.results if kind_of(r.runtime) == BROWSER]
    native = [r for r in outcome.results if r not in browser and outcome.arch is None]
    for results, title in (
        (native, "Verification against the Keras model"),
        (browser, "Verification in the browser against the Keras model"),
    ):
        if results:
            console.print(parity_table(results, title))
    for note in outcome.notes:
        console.print(note, style="yellow")


def show_report(result) -> None:
    """`toolkit report`: per-class precision, recall and F1, then the files written."""
    rows = [
        [label, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1-score']:.4f}", f"{int(v['support']):,}"]
        for label, v in result["per_class"].items()
    ]
    m = result["macro_avg"]
    rows.append(
        ["macro avg", f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1-score']:.4f}", f"{int(m['support']):,}"]
    )
    title = (
        f"{result['artifact']}: accuracy {result['accuracy']:.4f} ({result['errors']} errors of {result['images']:,})"
    )
    console.print(table(title, ["class", "precision", "recall", "F1", "images"], rows))
    for name, path in result["files"].items():
        console.print(f"{name}: {path}")
    if result.get("model_card"):
        console.print(f"Model card: {result['model_card']}")
