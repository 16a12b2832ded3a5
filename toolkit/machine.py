"""The machine a benchmark ran on: CPU model and ISA flags, usable cores, memory, GPUs, its measured float32 peak,
and peak memory of a process. Recorded with every result, so that figures are never read apart from their machine."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)


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
        return (
            "This CPU has AVX2 but no VNNI: an int8 dot product takes several instructions (vpmaddubsw, vpmaddwd, "
            "vpaddd) against one float32 FMA, and quantize/dequantize steps add work, so int8 gains little or "
            "runs slower than float32 here; it still saves 4x in size and memory."
        )
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
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cpus_usable": usable_cpus(),
        "cpus_total": os.cpu_count(),
        "isa": {f: (f in flags) for f in ISA_FLAGS if f in flags or not f.startswith(("asimd", "i8mm"))},
        "memory_gb": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu_info(),
        "int8_note": int8_note(flags),
    }


def machine_slug(info: dict[str, Any]) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-") or info["arch"]
    return f"{name}-{info['cpus_usable']}cpu"


def gpu_info() -> dict[str, Any]:
    """What GPU is visible, asked of nvidia-smi and ONNX Runtime (TensorFlow is not imported here)."""
    names = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
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


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory (VmHWM) of a process in MB. It belongs to that program's address space; getrusage's
    ru_maxrss would be wrong for a worker, since Linux carries it over from the parent across fork and exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")
