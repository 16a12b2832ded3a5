"""`toolkit benchmark` (`toolkit.benchmark` in Python): latency, throughput, cold start, size and memory of
every artifact in its runtime.

One driver (`toolkit.bench.driver`) whatever the backend: `native` (desktop runtimes and the Keras baseline, a
worker process per measurement), `browser` (the web app in headless Chromium) and, for targets this machine
cannot run, `estimates` (a compiler's performance model, labelled as such). This module chooses the backend,
where results go, and merges them with earlier results of the same machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import fsio, manifest
from toolkit import workspace as ws
from toolkit.bench.browser import MIN_ITERATIONS, BrowserBackend
from toolkit.bench.driver import (
    BenchRecord,
    BenchReport,
    Settings,
    compare_web_native,
    earlier_results,
    merge,
    model_flops,
    run,
)
from toolkit.bench.estimates import EstimateBackend
from toolkit.bench.native import NativeBackend
from toolkit.bench.summary import write_benchmark_outputs
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.machine import machine_info, machine_slug

__all__ = ["BenchRecord", "BenchReport", "BenchOutcome", "benchmark", "measure", "machine_info", "results_folder"]

PUBLISHED = Path("benchmarks") / "results"  # the committed reference results, one folder per machine
QUICK = {"batch_sizes": (1, 32), "seconds_per_measurement": 5.0}  # the default plan: minutes, not ten
FULL = {"batch_sizes": (1, 32, 256), "seconds_per_measurement": None}  # --full, and every published run


def measure(
    workspace: str | Path,
    dataset: Dataset,
    batch_sizes: list[int] = (1, 32, 256),
    threads: list[int] | None = None,
    iterations: int = 1000,
    warmup: int = 100,
    models: list[Path] | None = None,
    include_keras: bool = True,
    browser: bool = False,
    progress: Callable[[str], None] | None = None,
    timeout: float = 1800.0,
    seconds_per_measurement: float | None = None,
    machine: dict[str, Any] | None = None,
) -> BenchReport:
    """Measure the workspace's artifacts (or `models`) natively, or with `browser` its web artifacts in Chromium.
    `seconds_per_measurement` caps the timed calls of a slow target (at least 20 are made)."""
    if browser:
        if iterations < MIN_ITERATIONS:
            raise ToolkitError(
                f"--iterations must be at least {MIN_ITERATIONS} for the browser (timer resolution and "
                f"noise), got {iterations}"
            )
        # the native rows are measured in the same run, so that the browser's ratio to them is honest
        web = BrowserBackend(workspace, dataset, [str(m) for m in models] if models else None)
        backends = [NativeBackend(workspace, dataset, None, False, timeout), web]
    else:
        backends = [
            NativeBackend(workspace, dataset, models, include_keras, timeout),
            EstimateBackend(workspace, models),
        ]
    settings = Settings.of(batch_sizes, threads, iterations, warmup, seconds_per_measurement)
    if max(settings.batch_sizes) > len(dataset.y_test):
        raise ToolkitError(
            f"batch size {max(settings.batch_sizes):,} is larger than the test split ({len(dataset.y_test):,} images) "
            "that the calls are made of; pass smaller --batch-sizes"
        )
    report = run(backends, settings, progress, machine, model_flops(Path(workspace)))
    if browser:
        report.comparison = compare_web_native(report.results)
    return report


def results_folder(workspace: str | Path, machine: dict[str, Any], out: Path | None, publish: bool) -> Path:
    """Where results go: `out` if given; with `publish`, the committed results of this machine
    (benchmarks/results/<machine>/); otherwise the workspace's own benchmark/ folder."""
    if out is not None:
        return Path(out)
    return PUBLISHED / machine_slug(machine) if publish else Path(workspace) / ws.BENCHMARK_DIR


@dataclass
class BenchOutcome:
    report: BenchReport  # this run
    merged: dict[str, Any]  # this run folded into the folder's earlier results: what was written
    files: dict[str, Path]
    failed: list[BenchRecord]  # rows of asked-for artifacts that could not be measured

    def raise_if_failed(self) -> None:
        if self.failed:
            names = sorted({r.artifact for r in self.failed})
            raise ToolkitError(
                f"{len(names)} artifact(s) could not be measured: {', '.join(names)} ({self.failed[0].note[:200]})"
            )

    def _repr_html_(self) -> str:
        """Jupyter shows the record as the CLI's table."""
        from toolkit.console import html_of

        return html_of(self)


def benchmark(
    workspace: str | Path,
    dataset: Dataset,
    out: Path | None = None,
    publish: bool = False,
    full: bool = False,
    batch_sizes: list[int] | None = None,
    **options,
) -> BenchOutcome:
    """`measure` with the quick plan (the full one with `full` or `publish`: published results are always full),
    then write results.json, SUMMARY.md and benchmark.png, merged with the folder's earlier results."""
    machine = machine_info()
    folder = results_folder(workspace, machine, out, publish)
    fsio.ensure_dir(folder)  # an unusable folder, or another machine's results in it, fail before the measuring
    earlier_results(folder / "results.json", machine)
    plan = FULL if full or publish else QUICK
    sizes = batch_sizes or plan["batch_sizes"]
    result = measure(
        workspace, dataset, sizes, seconds_per_measurement=plan["seconds_per_measurement"], machine=machine, **options
    )
    merged = merge(result.to_dict(), folder / "results.json")
    merged["arm64"] = arm64_rows(workspace)
    files = write_benchmark_outputs(merged, folder)
    failed = [r for r in result.results if r.status == "failed"]
    return BenchOutcome(result, merged, files, failed)


def arm64_rows(workspace: str | Path) -> list[dict[str, Any]]:
    """The phone files' results on ARM64 under emulation (`toolkit verify --arch arm64`, from the manifest), for
    SUMMARY.md beside the timed rows: whether each agreed with Keras and with x86, never a time (QEMU's time is
    not a phone's)."""
    rows = []
    for record, v in manifest.architecture_results(manifest.records(workspace), "arm64"):
        x86, emulation = v.get("cross_check") or {}, v.get("emulation") or {}
        rows.append(
            {
                "artifact": record.file,
                "runtime": v.get("runtime"),
                "cpu": emulation.get("cpu"),
                "key_features": emulation.get("key_features", []),
                "images": v.get("images"),
                "full_split": bool(v.get("full_split")),
                "agreement": v.get("agreement"),
                "agreement_x86": x86.get("agreement"),
                "max_abs_diff_x86": x86.get("max_abs_diff"),
                "passed": bool(v.get("passed")),
            }
        )
    return rows
