"""Timing statistics shared by every benchmark backend: the timed loop, percentiles, and how many calls to time."""

from __future__ import annotations

import math
import time

import numpy as np


def stats_ms(samples_ns: np.ndarray) -> dict[str, float]:
    ms = samples_ns.astype(np.float64) / 1e6
    return {
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "min_ms": float(ms.min()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "runs": int(len(ms)),
    }


def time_calls(fn, batches: list[np.ndarray], warmup: int, runs: int) -> np.ndarray:
    """Per-call wall times in ns: `warmup` untimed calls, then `runs` timed ones, cycling through `batches`."""
    n = len(batches)
    for i in range(warmup):
        fn(batches[i % n])
    out = np.empty(runs, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(runs):
        x = batches[i % n]
        t0 = clock()
        fn(x)
        out[i] = clock() - t0
    return out


def runs_for(batch_size: int, iterations: int) -> int:
    """Batch 1 gets all `iterations`; larger batches the same number of images, but at least 20 calls."""
    return iterations if batch_size == 1 else max(20, math.ceil(iterations / batch_size))


def warmup_for(batch_size: int, warmup: int) -> int:
    """Batch 1 gets all `warmup` calls; larger batches about the same number of images, but at least 3 calls."""
    return warmup if batch_size == 1 else max(3, warmup // batch_size)
