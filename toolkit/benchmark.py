"""Latency, throughput, cold start, size and memory of every artifact in its runtime, plus the Keras baseline.

Each (artifact, runtime, thread count) is measured in a fresh process (`toolkit.bench_worker`), one at a
time. Batch-1 latency is timed call by call on real test images after a warm-up; larger batches give the
throughput. Work per image (FLOPs of the model) turns images/s into GFLOP/s, shown next to this machine's
own float32 peak, measured as a numpy matrix product on the same number of threads.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit import manifest
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.versions import package_versions

KERAS_RUNTIMES = ("keras-predict", "keras-compiled")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm")


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
    peak_rss_mb: float | None = None  # peak resident memory of the process that ran it
    rss_before_load_mb: float | None = None  # its memory with the runtime imported, before the model was loaded
    gflops_per_second: float | None = None
    peak_gflops_per_second: float | None = None
    fraction_of_peak: float | None = None
    accuracy: float | None = None
    status: str = "ok"  # ok, skipped, failed
    note: str = ""


@dataclass
class Target:
    path: Path
    format: str
    variant: str
    runtime: str
    bytes: int
    accuracy: float | None = None


@dataclass
class BenchReport:
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    results: list[BenchRecord] = field(default_factory=list)
    harness_check: dict[str, Any] | None = None
    browser: dict[str, Any] | None = None  # name, user agent, isolation: for rows measured in a browser

    def to_dict(self) -> dict[str, Any]:
        out = {"machine": self.machine, "versions": self.versions, "settings": self.settings,
               "harness_check": self.harness_check, "results": [asdict(r) for r in self.results]}
        if self.browser:
            out["browser"] = self.browser
        return out


# ------------------------------------------------------------------------------------------- machine


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", text, re.M)
    return set(m.group(2).split()) if m else set()


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def int8_note(flags: set[str]) -> str:
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        return "This CPU has VNNI/AMX int8 dot-product instructions: int8 kernels can outrun float32."
    if "asimddp" in flags or "i8mm" in flags:
        return "This Arm CPU has int8 dot-product instructions (SDOT/I8MM): int8 kernels can outrun float32."
    if "avx2" in flags:
        return ("This CPU has AVX2 but no VNNI: an int8 dot product takes several instructions (vpmaddubsw, vpmaddwd, "
                "vpaddd) against one float32 FMA, and quantize/dequantize steps add work, so int8 gains little or "
                "runs slower than float32 here; it still saves 4x in size and memory.")
    return "No SIMD int8 dot-product instructions detected: expect int8 to run no faster than float32."


def machine_info() -> dict[str, Any]:
    flags = cpu_flags()
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    return {
        "cpu": cpu_model(), "arch": platform.machine(), "cpus_usable": usable_cpus(), "cpus_total": os.cpu_count(),
        "isa": {f: (f in flags) for f in ISA_FLAGS if f in flags or not f.startswith(("asimd", "i8mm"))},
        "memory_gb": mem, "os": platform.platform(), "python": platform.python_version(),
        "gpu": gpu_info(), "int8_note": int8_note(flags),
    }


def machine_slug(info: dict[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-") or info["arch"]
    return f"{name}-{info['cpus_usable']}cpu"


def gpu_info() -> dict[str, Any]:
    """What GPU is visible, asked of nvidia-smi and ONNX Runtime (TensorFlow is not imported here)."""
    names = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            names = [l.strip() for l in out.stdout.splitlines() if l.strip()] if out.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            names = []
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    return {"gpus": names, "onnxruntime_providers": providers}


def measure_peak_gflops(threads: int, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 1.0) -> float:
    """This machine's float32 matrix-product rate on `threads` threads (numpy's BLAS): the best call over
    `seconds` of repeated products at each size. On this project's machine it measured above the nominal
    clock's AVX2 FMA peak (2.45 GHz x 32 FLOP/cycle = 78 GFLOP/s per core), so it is the ceiling that counts."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    best_rate = 0.0
    with threadpool_limits(limits=threads):
        for n in sizes:
            a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
            a @ b
            best = float("inf")
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t0)
            best_rate = max(best_rate, 2 * n**3 / best / 1e9)
    return best_rate


# ------------------------------------------------------------------------------------------- targets


def plan_targets(workspace: Path, models: list[Path] | None = None, include_keras: bool = True, gpu: dict | None = None) -> list[Target]:
    """The artifacts to measure: those named, or every runnable one in the manifest, plus the Keras baseline."""
    workspace = Path(workspace)
    recs = {r.file: r for r in manifest.records(workspace)} if (workspace / manifest.MANIFEST_FILE).exists() else {}
    targets: list[Target] = []
    chosen = [Path(m) for m in models] if models else [workspace / r.file for r in recs.values() if r.format not in ("c", "web")]
    if not chosen and not (workspace / "model.keras").is_file():
        raise ToolkitError(f"{workspace}: nothing to benchmark; run `toolkit export` first or pass --model")
    for path in chosen:
        if not path.is_file():
            raise ToolkitError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix == ".keras":
            continue  # the Keras baseline is added below
        if suffix not in (".tflite", ".onnx"):
            raise ToolkitError(f"{path}: cannot benchmark {suffix or 'this file'}; expected .tflite, .onnx or .keras")
        rec = recs.get(path.name)
        variant = rec.variant if rec else path.name.split(".")[-2] if path.name.count(".") >= 2 else "?"
        accuracy = (rec.verification or {}).get("accuracy") if rec else None
        runtime = "litert" if suffix == ".tflite" else "onnxruntime"
        targets.append(Target(path, suffix[1:], variant, runtime, path.stat().st_size, accuracy))
        if runtime == "onnxruntime" and gpu and gpu["gpus"] and "CUDAExecutionProvider" in gpu["onnxruntime_providers"]:
            targets.append(Target(path, "onnx", variant, "onnxruntime-cuda", path.stat().st_size, accuracy))
    keras_path = next((m for m in (models or []) if Path(m).suffix == ".keras"), None) or workspace / "model.keras"
    if (include_keras and not models) or (models and any(Path(m).suffix == ".keras" for m in models)):
        if Path(keras_path).is_file():
            ref = next((r.verification.get("reference_accuracy") for r in recs.values() if r.verification), None)
            for runtime in KERAS_RUNTIMES:
                targets.append(Target(Path(keras_path), "keras", "float32", runtime, Path(keras_path).stat().st_size, ref))
    return targets


# --------------------------------------------------------------------------------------------- runs


def _run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    # keep BLAS and OpenMP pools inside the thread budget of this run
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.bench_worker", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {tail[:300]}")
    return json.loads(proc.stdout[marker + len("@@RESULT@@"):])


def benchmark(
    workspace: str | Path,
    dataset: Dataset,
    batch_sizes: list[int] = (1, 32, 256),
    threads: list[int] | None = None,
    iterations: int = 1000,
    warmup: int = 100,
    models: list[Path] | None = None,
    include_keras: bool = True,
    progress: Callable[[str], None] | None = None,
    timeout: float = 1800.0,
) -> BenchReport:
    say = progress or (lambda msg: None)
    for name, values in (("batch sizes", batch_sizes), ("threads", threads or [1])):
        if any(v < 1 for v in values):
            raise ToolkitError(f"{name} must be at least 1, got {','.join(map(str, values))}")
    if iterations < 1 or warmup < 0:
        raise ToolkitError(f"--iterations must be at least 1 and --warmup at least 0, got {iterations} and {warmup}")
    batch_sizes = sorted(set(batch_sizes))
    threads = sorted(set(threads or sorted({1, usable_cpus()})))
    info = machine_info()
    targets = plan_targets(Path(workspace), models, include_keras, info["gpu"])
    from toolkit.model import build_model, flops_per_image

    flops = flops_per_image(build_model())
    say("measuring this machine's float32 peak (numpy matrix product)")
    peaks = {t: round(measure_peak_gflops(t), 2) for t in threads}
    info["peak_float32_gflops"] = {str(t): p for t, p in peaks.items()}
    report = BenchReport(
        machine=info, versions=package_versions(("numpy", "ai-edge-litert", "onnxruntime", "tensorflow", "keras")),
        settings={"batch_sizes": batch_sizes, "threads": threads, "iterations_batch1": iterations, "warmup": warmup,
                  "flops_per_image": flops, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "method": "fresh process per artifact/runtime/threads; per-call perf_counter_ns around the runner's run(); "
                            "inputs cycle through real test images; batch >1 runs the same number of images (>= 20 calls)"},
    )
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
        images_path = Path(tmp) / "images.npy"
        np.save(images_path, to_model_input(dataset.x_test[: max(batch_sizes) * 4]))
        for target in targets:
            for t in threads:
                say(f"{target.path.name} on {target.runtime}, {t} thread(s)")
                spec = {"path": str(target.path), "runtime": target.runtime, "threads": t, "batch_sizes": batch_sizes,
                        "iterations": iterations, "warmup": warmup, "images": str(images_path)}
                base = dict(artifact=target.path.name, format=target.format, variant=target.variant, runtime=target.runtime,
                            device="cpu", threads=t, bytes=target.bytes, accuracy=target.accuracy)
                try:
                    out = _run_worker(spec, timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    report.results.append(BenchRecord(**base, batch_size=batch_sizes[0], status="failed", note=str(e)[:300]))
                    continue
                for row in out["rows"]:
                    base["device"] = out["device"]
                    rec = BenchRecord(**base, batch_size=row["batch_size"], load_ms=round(out["load_ms"], 2),
                                      import_ms=round(out["import_s"] * 1e3, 1), rss_before_load_mb=round(out["rss_before_load_mb"], 1),
                                      peak_rss_mb=round(out["peak_rss_mb"], 1), runs=row["runs"],
                                      images_per_second=round(row["images_per_second"], 1),
                                      **{k: round(row[k], 4) for k in ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")})
                    rec.gflops_per_second = round(flops * row["images_per_second"] / 1e9, 3)
                    rec.peak_gflops_per_second = peaks[t]
                    rec.fraction_of_peak = round(rec.gflops_per_second / peaks[t], 4)
                    report.results.append(rec)
        report.results.extend(gpu_rows(info["gpu"], report.results))
        report.harness_check = harness_check(report, targets, images_path, iterations, warmup, timeout, say)
    return report


def gpu_rows(gpu: dict[str, Any], measured: list[BenchRecord]) -> list[BenchRecord]:
    """A row for each GPU runtime that was not measured, saying why (never an error)."""
    rows = []
    on_gpu = {r.runtime for r in measured if r.device == "gpu"}
    reasons = {
        "onnxruntime-cuda": "no GPU visible" if not gpu["gpus"] else
        "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)",
        "tensorflow-gpu": "no GPU visible" if not gpu["gpus"] else "TensorFlow sees no GPU (pip install -e .[gpu])",
    }
    for runtime, reason in reasons.items():
        if runtime == "onnxruntime-cuda" and runtime in on_gpu:
            continue
        if runtime == "tensorflow-gpu" and ({"keras-predict", "keras-compiled"} & on_gpu or not any(r.format == "keras" for r in measured)):
            continue
        rows.append(BenchRecord(artifact="-", format="-", variant="-", runtime=runtime, device="gpu", batch_size=1,
                                threads=0, status="skipped", note=reason))
    return rows


def harness_check(report, targets, images_path, iterations, warmup, timeout, say) -> dict[str, Any] | None:
    """LiteRT float32, 1 thread, batch 1: the harness' p50 against a bare set_tensor/invoke/get_tensor loop,
    interleaved in one process (see bench_worker.harness_check)."""
    ok = {r.artifact for r in report.results if r.runtime == "litert" and r.status == "ok"}
    target = next((t for t in targets if t.runtime == "litert" and t.variant == "float32" and t.path.name in ok), None)
    if target is None:
        return None
    say("harness check: the runner against a bare LiteRT loop, interleaved")
    try:
        out = _run_worker({"mode": "harness_check", "path": str(target.path), "threads": 1, "iterations": iterations,
                           "warmup": warmup, "images": str(images_path), "rounds": 5}, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {"artifact": target.path.name, "error": str(e)[:300]}
    overhead = (out["harness_p50_ms"] - out["bare_loop_p50_ms"]) / out["bare_loop_p50_ms"]
    row = next((r for r in report.results if r.artifact == target.path.name and r.runtime == "litert"
                and r.threads == 1 and r.batch_size == 1 and r.status == "ok"), None)
    return {"artifact": target.path.name, "threads": 1, "batch_size": 1, "rounds": 5, "calls_per_round": iterations,
            "harness_p50_ms": round(out["harness_p50_ms"], 4), "bare_loop_p50_ms": round(out["bare_loop_p50_ms"], 4),
            "harness_p50_ms_rounds": [round(v, 4) for v in out["harness_p50_ms_rounds"]],
            "bare_p50_ms_rounds": [round(v, 4) for v in out["bare_p50_ms_rounds"]],
            "overhead_fraction": round(overhead, 4), "within_10_percent": bool(abs(overhead) <= 0.10),
            "result_row_p50_ms": row.p50_ms if row else None}
