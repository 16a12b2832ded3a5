"""The native backend: every artifact in its desktop runtime (LiteRT, ONNX Runtime) and the Keras baseline, each
(artifact, runtime, threads) in a fresh worker process (`toolkit.bench.worker`), one at a time.

Batch-1 latency is timed call by call on real test images after a warm-up; larger batches give the throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, children, manifest
from toolkit import workspace as ws
from toolkit.artifacts import LITERT, ONNXRUNTIME, ONNXRUNTIME_CUDA, TENSORFLOW_GPU
from toolkit.bench.driver import BenchRecord, BenchReport, Settings, Target
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.machine import gpu_info
from toolkit.versions import package_versions
from toolkit.workspace import Workspace

METHOD = (
    "fresh process per artifact/runtime/threads; per-call perf_counter_ns around the runner's run(); "
    "inputs cycle through real test images; batch >1 runs the same number of images (>= 20 calls)"
)


def _runtimes_of(suffix: str, rec, cuda: bool) -> list[str]:
    """Every runtime a file is measured in: its own, ONNX Runtime's CUDA provider too where a GPU has it, and its
    second runtime (artifacts.second_runtime: LiteRT's CompiledModel for the phone's `.tflite` files)."""
    runtime = artifacts.NATIVE_BY_SUFFIX[suffix]
    names = [runtime]
    if runtime == ONNXRUNTIME and cuda:
        names.append(ONNXRUNTIME_CUDA)
    second = artifacts.second_runtime(runtime, rec.format if rec else None)
    return names + ([second] if second else [])


def plan_targets(
    workspace: Path, models: list[Path] | None = None, include_keras: bool = True, gpu: dict | None = None
) -> list[Target]:
    """The artifacts to measure: those named, or every natively runnable one in the manifest, plus Keras."""
    workspace = Path(workspace)
    recs = {r.file: r for r in manifest.records(workspace)} if ws.manifest(workspace).exists() else {}
    native = [r for r in recs.values() if artifacts.kind_of(r.runtime) == artifacts.NATIVE]
    chosen = [(Path(m), None) for m in models] if models else [(manifest.certified(workspace, r), r) for r in native]
    if not chosen and not ws.model(workspace).is_file():
        raise ToolkitError(f"{workspace}: nothing to benchmark; run `toolkit export` first or pass --model")
    targets: list[Target] = []
    cuda = bool(gpu and gpu["gpus"] and "CUDAExecutionProvider" in gpu["onnxruntime_providers"])
    for path, rec in chosen:
        if not path.is_file():
            raise ToolkitError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix == ".keras":
            continue  # the Keras baseline is added below
        if suffix not in artifacts.NATIVE_BY_SUFFIX:
            expected = ", ".join(artifacts.NATIVE_BY_SUFFIX)
            raise ToolkitError(f"{path}: cannot benchmark {suffix or 'this file'}; expected one of {expected}")
        rec = rec or manifest.record_of(path)  # refuses a certified file that changed; None: in no manifest
        variant = rec.variant if rec else path.name.split(".")[-2] if path.name.count(".") >= 2 else "?"
        accuracy = (rec.verification or {}).get("accuracy") if rec else None  # never a certificate of another file
        size, sha = path.stat().st_size, rec.sha256 if rec else manifest.file_sha256(path)
        for name in _runtimes_of(suffix, rec, cuda):
            targets.append(Target(path.name, path, suffix[1:], variant, name, size, accuracy, sha256=sha))
    keras_path = next((Path(m) for m in (models or []) if Path(m).suffix == ".keras"), None) or ws.model(workspace)
    if (include_keras and not models) or (models and any(Path(m).suffix == ".keras" for m in models)):
        if keras_path.is_file():
            ref = next((r.verification.get("reference_accuracy") for r in recs.values() if r.verification), None)
            size, sha = keras_path.stat().st_size, manifest.file_sha256(keras_path)
            for runtime in artifacts.KERAS_BASELINES:
                targets.append(Target(keras_path.name, keras_path, "keras", "float32", runtime, size, ref, sha256=sha))
    return targets


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # BLAS/OpenMP pools in the budget
        env[var] = str(spec["threads"])
    proc = subprocess.run(
        children.module("toolkit.bench.worker", json.dumps(spec)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    marker = proc.stdout.rfind("@@RESULT@@")
    if proc.returncode != 0 or marker < 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {tail[:300]}")
    return json.loads(proc.stdout[marker + len("@@RESULT@@") :])


class NativeBackend:
    method = METHOD

    def __init__(
        self,
        workspace: Path,
        dataset: Dataset,
        models: list[Path] | None = None,
        include_keras: bool = True,
        timeout: float = 1800.0,
    ):
        self.workspace, self.dataset, self.models = Path(workspace), dataset, models
        self.include_keras, self.timeout = include_keras, timeout

    def versions(self) -> dict[str, str]:
        return package_versions(("numpy", "ai-edge-litert", "onnxruntime", "tensorflow", "keras"))

    @contextlib.contextmanager
    def open(self, settings: Settings, say: Callable[[str], None]) -> Iterator[NativeSession]:
        gpu = gpu_info()
        targets = plan_targets(self.workspace, self.models, self.include_keras, gpu)
        with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
            images = Path(tmp) / "images.npy"
            contract = Workspace.of(self.workspace).input_contract()
            np.save(images, to_model_input(self.dataset.x_test[: max(settings.batch_sizes) * 4], contract))
            yield NativeSession(targets, settings, images, gpu, self.timeout, say)


class NativeSession:
    def __init__(self, targets, settings: Settings, images: Path, gpu: dict, timeout: float, say):
        self.targets, self.settings, self.images, self.gpu, self.timeout, self.say = (
            targets,
            settings,
            images,
            gpu,
            timeout,
            say,
        )

    def threads(self, settings: Settings) -> list[int]:
        return settings.threads

    def describe(self, target: Target, threads: int) -> str:
        return f"{target.artifact} on {target.runtime}, {threads} thread(s)"

    def measure(self, target: Target, threads: int) -> list[BenchRecord]:
        s = self.settings
        spec = {
            "path": str(target.path),
            "runtime": target.runtime,
            "threads": threads,
            "batch_sizes": s.batch_sizes,
            "iterations": s.iterations,
            "warmup": s.warmup,
            "seconds": s.seconds_per_measurement,
            "images": str(self.images),
        }
        try:
            out = run_worker(spec, self.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return [target.row(batch_size=s.batch_sizes[0], threads=threads, status="failed", note=str(e)[:300])]
        return [
            target.row(
                device=out["device"],
                threads=threads,
                load_ms=round(out["load_ms"], 2),
                import_ms=round(out["import_s"] * 1e3, 1),
                rss_before_load_mb=round(out["rss_before_load_mb"], 1),
                peak_rss_mb=None if out["peak_rss_mb"] is None else round(out["peak_rss_mb"], 1),
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
            )
            for row in out["rows"]
        ]

    def finish(self, report: BenchReport) -> None:
        report.results.extend(gpu_rows(self.gpu, report.results))
        report.harness_check = harness_check(report, self.targets, self.images, self.settings, self.timeout, self.say)


def gpu_rows(gpu: dict[str, Any], measured: list[BenchRecord]) -> list[BenchRecord]:
    """A row for each GPU runtime that was not measured, saying why (never an error)."""
    rows = []
    on_gpu = {r.runtime for r in measured if r.device == "gpu"}
    reasons = {
        ONNXRUNTIME_CUDA: "no GPU visible"
        if not gpu["gpus"]
        else "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)",
        TENSORFLOW_GPU: "no GPU visible" if not gpu["gpus"] else "TensorFlow sees no GPU (pip install -e .[gpu])",
    }
    keras_measured = any(r.format == "keras" for r in measured)
    for runtime, reason in reasons.items():
        if runtime == ONNXRUNTIME_CUDA and runtime in on_gpu:
            continue
        if runtime == TENSORFLOW_GPU and (set(artifacts.KERAS_BASELINES) & on_gpu or not keras_measured):
            continue
        rows.append(
            BenchRecord(
                artifact="-",
                format="-",
                variant="-",
                runtime=runtime,
                device="gpu",
                batch_size=1,
                threads=0,
                status="skipped",
                note=reason,
            )
        )
    return rows


def harness_check(
    report: BenchReport, targets: list[Target], images: Path, settings: Settings, timeout: float, say
) -> dict[str, Any] | None:
    """LiteRT float32, 1 thread, batch 1: the harness' p50 against a bare set_tensor/invoke/get_tensor loop,
    interleaved in one process (see toolkit.bench.worker.harness_check)."""
    ok = {r.artifact for r in report.results if r.runtime == LITERT and r.status == "ok"}
    target = next((t for t in targets if t.runtime == LITERT and t.variant == "float32" and t.artifact in ok), None)
    if target is None:
        return None
    say("harness check: the runner against a bare LiteRT loop, interleaved")
    spec = {
        "mode": "harness_check",
        "path": str(target.path),
        "threads": 1,
        "iterations": settings.iterations,
        "warmup": settings.warmup,
        "images": str(images),
        "rounds": 5,
    }
    try:
        out = run_worker(spec, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {"artifact": target.artifact, "error": str(e)[:300]}
    overhead = (out["harness_p50_ms"] - out["bare_loop_p50_ms"]) / out["bare_loop_p50_ms"]
    row = next((r for r in report.results if r.key == (target.artifact, LITERT, 1, 1) and r.status == "ok"), None)
    return {
        "artifact": target.artifact,
        "threads": 1,
        "batch_size": 1,
        "rounds": 5,
        "calls_per_round": settings.iterations,
        "harness_p50_ms": round(out["harness_p50_ms"], 4),
        "bare_loop_p50_ms": round(out["bare_loop_p50_ms"], 4),
        "harness_p50_ms_rounds": [round(v, 4) for v in out["harness_p50_ms_rounds"]],
        "bare_p50_ms_rounds": [round(v, 4) for v in out["bare_p50_ms_rounds"]],
        "overhead_fraction": round(overhead, 4),
        "within_10_percent": bool(abs(overhead) <= 0.10),
        "result_row_p50_ms": row.p50_ms if row else None,
    }
