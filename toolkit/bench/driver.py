"""The one benchmark driver, whatever the backend (native worker processes, the browser, a compiler's estimates).

As LiteRT's `benchmark_model` does, the driver owns the plan (batch sizes, threads, iterations), the machine and
its measured peak, the derived figures (images/s, GFLOP/s, fraction of peak) and the report; a backend only
lists its targets and measures one (target, threads) pair into rows that carry the timing statistics.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from toolkit import manifest
from toolkit import workspace as ws
from toolkit.artifacts import BROWSER, NATIVE, kind_of
from toolkit.errors import ToolkitError
from toolkit.machine import machine_info, machine_slug, measure_peak_gflops, usable_cpus
from toolkit.model import flops_per_image, load_keras_model


@dataclass
class BenchRecord:
    artifact: str
    format: str
    variant: str
    runtime: str
    device: str
    batch_size: int
    threads: int
    load_ms: float | None = None  # cold start: load the file and get the first result (runtime already imported)
    import_ms: float | None = None  # importing the runtime's libraries, before that
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    runs: int = 0
    images_per_second: float | None = None
    bytes: int | None = None
    sha256: str | None = None  # of the file measured, so that a published row names the very bytes it timed
    peak_rss_mb: float | None = None  # peak resident memory of the process that ran it
    rss_before_load_mb: float | None = None  # its memory with the runtime imported, before the model was loaded
    gflops_per_second: float | None = None
    peak_gflops_per_second: float | None = None
    fraction_of_peak: float | None = None
    floor_ms: float | None = None  # the compute floor of one call: its FLOPs at the measured float32 peak
    ratio_to_floor: float | None = None  # p50 / floor: 1.0 would be every cycle doing useful float32 work
    page_peak_gflops: float | None = None  # browser rows: the page's own float32 peak (a MatMul in ORT Web)
    fraction_of_page_peak: float | None = None
    accuracy: float | None = None
    status: str = "ok"  # ok (timed here), estimate (a compiler's model: never timed), sized, skipped, failed
    note: str = ""
    method: str = "measured"  # how the row's figures were obtained; "estimate: ..." for a performance model
    ram_bytes: int | None = None  # what the target must reserve: the tensor arena on a microcontroller, NPU SRAM
    flash_bytes: int | None = None  # what it must store: the model in flash (or, where Vela says so, DRAM)
    estimate: dict[str, Any] | None = None  # a performance model's figures (cycles, inference time, MACs, ...)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.artifact, self.runtime, self.threads, self.batch_size)


@dataclass
class Target:
    """One thing to measure: an artifact in one runtime."""

    artifact: str  # as rows name it: the file name (native) or the manifest path (web)
    path: Path
    format: str
    variant: str
    runtime: str
    bytes: int
    accuracy: float | None = None
    entry: dict[str, Any] | None = None  # what the backend needs besides the file (the web app's model entry)
    sha256: str | None = None

    @classmethod
    def of(cls, workspace: Path, record, entry: dict[str, Any] | None = None) -> Target:
        """A manifest record's target, after checking its file is the one that was certified."""
        path = manifest.certified(workspace, record)
        accuracy = (record.verification or {}).get("accuracy")
        fields = (record.file, path, record.format, record.variant, record.runtime, record.bytes, accuracy, entry)
        return cls(*fields, sha256=record.sha256)

    def row(self, **fields) -> BenchRecord:
        base = dict(
            artifact=self.artifact,
            format=self.format,
            variant=self.variant,
            runtime=self.runtime,
            device="cpu",
            bytes=self.bytes,
            sha256=self.sha256,
            accuracy=self.accuracy,
        )
        return BenchRecord(**{**base, **fields})


MAX_BATCH = 4096  # images per call; the test split must hold a few batches of the largest
MAX_THREADS = 1024


@dataclass
class Settings:
    batch_sizes: list[int]
    threads: list[int]
    iterations: int
    warmup: int
    seconds_per_measurement: float | None = None  # a slow target gets fewer timed calls (at least 20); None: all

    @classmethod
    def of(
        cls, batch_sizes, threads, iterations: int, warmup: int, seconds: float | None = None, min_iterations: int = 1
    ) -> Settings:
        """Validated settings: sorted unique batch sizes and threads (default: 1 and every usable CPU)."""
        limits = (("batch sizes", list(batch_sizes), MAX_BATCH), ("threads", list(threads or [1]), MAX_THREADS))
        for name, values, top in limits:
            if not values or any(not 1 <= v <= top for v in values):
                shown = ",".join(str(v)[:20] for v in values)
                raise ToolkitError(f"{name} must be from 1 to {top:,}, got {shown}")
        if iterations < min_iterations or warmup < 0:
            raise ToolkitError(
                f"--iterations must be at least {min_iterations} and --warmup at least 0, got {iterations} and {warmup}"
            )
        threads = sorted(set(threads or {1, usable_cpus()}))
        return cls(sorted(set(batch_sizes)), threads, iterations, warmup, seconds)


@dataclass
class BenchReport:
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    results: list[BenchRecord] = field(default_factory=list)
    harness_check: dict[str, Any] | None = None
    browser: dict[str, Any] | None = None  # name, user agent, isolation: for rows measured in a browser
    comparison: list[dict[str, Any]] | None = None  # best web against best native row, measured in this one run

    def to_dict(self) -> dict[str, Any]:
        out = {
            "machine": self.machine,
            "versions": self.versions,
            "settings": self.settings,
            "harness_check": self.harness_check,
            "results": [asdict(r) for r in self.results],
        }
        if self.browser:
            out["browser"] = self.browser
        if self.comparison:
            out["comparison"] = self.comparison
        return out


class Session(Protocol):
    """A backend, opened: what it measures and how."""

    targets: list[Target]

    def threads(self, settings: Settings) -> list[int]: ...  # the thread counts its targets run on

    def describe(self, target: Target, threads: int) -> str: ...

    def measure(self, target: Target, threads: int) -> list[BenchRecord]: ...

    def finish(self, report: BenchReport) -> None: ...


class Backend(Protocol):
    method: str  # how it measures, for the report

    def versions(self) -> dict[str, str]: ...

    def open(self, settings: Settings, say: Callable[[str], None]) -> contextlib.AbstractContextManager[Session]: ...


def derive(row: BenchRecord, flops_per_image: int | None, peak_gflops: float) -> BenchRecord:
    """The figures computed from a row's timing: images/s, GFLOP/s, its share of the machine's float32 peak, and
    how far its median call is from the compute floor (the call's FLOPs at that peak). Without the model's FLOPs
    (a file benchmarked outside any workspace) only images/s."""
    row.images_per_second = round(row.batch_size / (row.mean_ms / 1e3), 1)
    if flops_per_image is None:
        return row
    row.gflops_per_second = round(flops_per_image * row.images_per_second / 1e9, 3)
    row.peak_gflops_per_second = peak_gflops
    row.fraction_of_peak = round(row.gflops_per_second / peak_gflops, 4)
    row.floor_ms = round(row.batch_size * flops_per_image / (peak_gflops * 1e9) * 1e3, 5)
    row.ratio_to_floor = round(row.p50_ms / row.floor_ms, 3)
    return row


def model_flops(workspace: Path) -> int | None:
    """The FLOPs per image of the workspace's model: as its manifest records them at export, else counted from
    model.keras; None where there is neither (the rows then carry no GFLOP/s)."""
    model = manifest.read(workspace).get("model") if ws.manifest(workspace).is_file() else None
    recorded = model.get("flops_per_image") if isinstance(model, dict) else None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and 0 < recorded < 10**15:
        return recorded
    if ws.model(workspace).is_file():
        return flops_per_image(load_keras_model(ws.model(workspace)))
    return None


def run(
    backends: list[Backend],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
    machine: dict[str, Any] | None = None,
    flops: int | None = None,
) -> BenchReport:
    """Measure every target of each backend on every thread count, on this machine (`machine`: its
    `machine_info()`, if the caller has it already), into one report; `flops` is the model's work per image."""
    say = progress or (lambda msg: None)
    info = dict(machine or machine_info())
    with contextlib.ExitStack() as stack:  # plans every backend's targets first: a bad request fails at once
        sessions = [stack.enter_context(backend.open(settings, say)) for backend in backends]
        say("measuring this machine's float32 peak (numpy matrix product)")
        peaks = {t: round(measure_peak_gflops(t), 2) for t in settings.threads}
        info["peak_float32_gflops"] = {str(t): p for t, p in peaks.items()}
        report = BenchReport(
            machine=info,
            versions={k: v for b in backends for k, v in b.versions().items()},
            settings={
                "batch_sizes": settings.batch_sizes,
                "threads": settings.threads,
                "iterations_batch1": settings.iterations,
                "warmup": settings.warmup,
                "seconds_per_measurement": settings.seconds_per_measurement,
                "flops_per_image": flops,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "method": backends[0].method,
            },
        )
        for session in sessions:
            for target in session.targets:
                for t in session.threads(settings):
                    say(session.describe(target, t))
                    for row in session.measure(target, t):
                        report.results.append(derive(row, flops, peaks[t]) if row.status == "ok" else row)
            session.finish(report)
    return report


def compare_web_native(rows: list[BenchRecord]) -> list[dict[str, Any]]:
    """Per thread count, the best browser row's batch-1 p50 against the best native row's, both from one run
    (the machine's drift cancels only then), and each browser row's p99 against its own p50."""
    ok = [r for r in rows if r.status == "ok" and r.batch_size == 1 and not r.format == "keras"]
    out = []
    for t in sorted({r.threads for r in ok}):
        web = [r for r in ok if r.threads == t and kind_of(r.runtime) == BROWSER]
        native = [r for r in ok if r.threads == t and kind_of(r.runtime) == NATIVE]
        if not web or not native:
            continue
        w, n = min(web, key=lambda r: r.p50_ms), min(native, key=lambda r: r.p50_ms)
        out.append(
            {
                "threads": t,
                "best_web": f"{w.artifact} ({w.runtime})",
                "best_web_p50_ms": w.p50_ms,
                "best_native": f"{n.artifact} ({n.runtime})",
                "best_native_p50_ms": n.p50_ms,
                "web_over_native": round(w.p50_ms / n.p50_ms, 3),
                "web_p99_over_p50": {f"{r.artifact} ({r.runtime})": round(r.p99_ms / r.p50_ms, 2) for r in web},
                "best_web_fraction_of_page_peak": w.fraction_of_page_peak,
            }
        )
    return out


def earlier_results(previous: Path, machine: dict[str, Any]) -> dict[str, Any] | None:
    """The results.json already in a folder, if it is a readable one; ToolkitError if another machine made it
    (its results are never overwritten)."""
    try:
        prev = json.loads(Path(previous).read_text())
        same_machine = machine_slug(prev["machine"]) == machine_slug(machine)
        if not isinstance(prev["results"], list):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same_machine:
        raise ToolkitError(
            f"{previous}: results of another machine ({prev['machine'].get('cpu')}); they are kept: "
            "write this run elsewhere with --out"
        )
    return prev


def merge(report: dict[str, Any], previous: Path) -> dict[str, Any]:
    """Fold this run's rows into an earlier results.json of the same machine: a row of this run replaces the row
    with the same (artifact, runtime, threads, batch); the others stay, native rows before browser rows, unless they
    timed other bytes of a file this run measured. So a one-file run or a browser run adds to the results instead of
    wiping them, and a re-exported file leaves no row of its old self behind."""
    prev = earlier_results(previous, report["machine"])
    if prev is None:
        return report
    old_rows = [r for r in prev["results"] if isinstance(r, dict)]

    def key(r: dict[str, Any]) -> tuple:
        return (r.get("artifact"), r.get("runtime"), r.get("threads"), r.get("batch_size"))

    new_keys = {key(r) for r in report["results"]}
    measured = {r.get("artifact"): r.get("sha256") for r in report["results"]}
    # an earlier row of a file this run measured again with other bytes times a file that is gone: it goes too
    kept = [
        r
        for r in old_rows
        if key(r) not in new_keys and (r.get("artifact") not in measured or r.get("sha256") == measured[r["artifact"]])
    ]
    if not kept:
        return report
    rows = sorted([*kept, *report["results"]], key=lambda r: kind_of(str(r.get("runtime"))) == BROWSER)
    browser_run = all(kind_of(r["runtime"]) == BROWSER for r in report["results"]) and report["results"]
    if browser_run:  # the native run's machine, settings and harness check stay; the browser's come beside them
        return {
            **prev,
            "versions": {**prev.get("versions", {}), **report["versions"]},
            "browser": report.get("browser"),
            "browser_settings": report["settings"],
            "results": rows,
        }
    merged = {**report, "results": rows}
    for name in ("browser", "browser_settings", "comparison"):
        if prev.get(name) and not merged.get(name):
            merged[name] = prev[name]
    merged["versions"] = {
        **{k: v for k, v in prev.get("versions", {}).items() if k not in report["versions"]},
        **report["versions"],
    }
    return merged
