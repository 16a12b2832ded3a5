"""Arm Ethos-U NPU figures from Arm's Vela compiler (PyPI `ethos-u-vela`): a performance model's estimates, never
measurements.

Why: no Ethos-U hardware is at hand, but Vela compiles a full-integer int8 `.tflite` for a given NPU configuration and
reports what its performance model predicts (cycles, inference time, SRAM and flash, which operators stay on the
CPU). Those figures answer "would this model fit and run on that NPU" before anyone buys a board, as long as every
row says how it was obtained: each one carries `method` = "estimate: Arm Vela <version> performance model", and the
compiled model it describes, which runs only on an Ethos-U system.
"""

from __future__ import annotations

import contextlib
import csv
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from toolkit import fsio, manifest

DEFAULT_CONFIGS = ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256")
TIMEOUT_S = 300.0


def vela_version() -> str:
    try:
        return version("ethos-u-vela")
    except PackageNotFoundError:
        return "(not installed)"


def method() -> str:
    """How every figure of a row was obtained."""
    return f"estimate: Arm Vela {vela_version()} performance model"


def compiled_name(tflite_path: Path, config: str) -> str:
    """mnist_cnn.micro.tflite, ethos-u55-128 -> mnist_cnn.micro.ethos-u55-128.vela.tflite"""
    return f"{tflite_path.name.removesuffix('.tflite')}.{config}.vela.tflite"


def vela_estimates(
    tflite_path: str | Path, out_dir: str | Path, configs: tuple[str, ...] | list[str] = DEFAULT_CONFIGS
) -> list[dict[str, Any]]:
    """Compile `tflite_path` with Vela for each accelerator configuration (Vela's default system configuration and
    memory mode for it), write each compiled model to `out_dir`, and return one row per configuration.

    A configuration Vela refuses, or a compilation that fails, is a row with status "failed" and Vela's own message.
    """
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    fsio.ensure_dir(out_dir)
    rows = []
    for config in configs:
        with tempfile.TemporaryDirectory(prefix="vela-") as tmp:
            rows.append(_compile(tflite_path, out_dir, config, Path(tmp)))
    return rows


def _compile(tflite_path: Path, out_dir: Path, config: str, tmp: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"accelerator": config, "status": "failed", "method": method()}
    command = [
        sys.executable,
        "-m",
        "ethosu.vela",
        "--accelerator-config",
        config,
        "--output-dir",
        str(tmp),
        str(tflite_path),
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"Vela did not finish within {TIMEOUT_S:.0f} s"}
    log = proc.stdout + proc.stderr
    summaries, compiled = sorted(tmp.glob("*_summary_*.csv")), sorted(tmp.glob("*_vela.tflite"))
    if proc.returncode != 0 or len(summaries) != 1 or len(compiled) != 1:
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        return {**row, "error": lines[-1] if lines else f"Vela exited with code {proc.returncode} and no message"}
    with open(summaries[0], newline="") as f:
        s = next(csv.DictReader(f))
    target = fsio.write_bytes(out_dir / compiled_name(tflite_path, config), compiled[0].read_bytes())
    kib = 1024

    def count(kind: str) -> int | None:  # the operator counts are printed, not in the CSV
        m = re.search(rf"^{kind} operators = (\d+)", log, re.M)
        return int(m.group(1)) if m else None

    return {
        **row,
        "status": "ok",
        "accelerator_configuration": s["accelerator_configuration"],
        "system_config": s["system_config"],
        "memory_mode": s["memory_mode"],
        "clock_mhz": float(s["core_clock"]) / 1e6,
        "npu_ops": count("NPU"),
        "cpu_ops": count("CPU"),
        "sram_bytes": round(float(s["sram_memory_used"]) * kib),
        "flash_bytes": round((float(s["off_chip_flash_memory_used"]) + float(s["on_chip_flash_memory_used"])) * kib),
        "dram_bytes": round(float(s["dram_memory_used"]) * kib),
        "weights_storage": s["weights_storage_area"],
        "cycles": round(float(s["cycles_total"])),
        "inference_ms": float(s["inference_time"]) * 1e3,
        "inferences_per_second": float(s["inferences_per_second"]),
        "macs": round(float(s["nn_macs"])),
        "path": str(target),
        "bytes": target.stat().st_size,
        "sha256": manifest.file_sha256(target),
    }


class EstimateBackend:
    """Rows for targets this machine cannot time as they will run: the microcontroller artifact (its RAM and flash,
    measured by allocating in LiteRT for Microcontrollers) and the Vela-compiled Ethos-U models (Vela's estimates,
    recorded at export). Their rows carry no latency of this machine; the driver keeps them apart from timed rows."""

    method = "sizes measured at export in LiteRT for Microcontrollers; NPU figures: Arm Vela's performance model"

    def __init__(self, workspace: Path, models: list[Path] | None = None):
        self.workspace, self.models = Path(workspace), models

    def versions(self) -> dict[str, str]:
        from toolkit.versions import package_versions

        return package_versions(("tflite-micro", "ethos-u-vela"))

    @contextlib.contextmanager
    def open(self, settings, say) -> Iterator[EstimateSession]:
        from toolkit import artifacts
        from toolkit import workspace as ws
        from toolkit.bench.driver import Target

        records = manifest.records(self.workspace) if ws.manifest(self.workspace).exists() else []
        kinds = (artifacts.MICRO, artifacts.ESTIMATE)
        chosen = [r for r in records if artifacts.kind_of(r.runtime) in kinds]
        if self.models:  # with --model: only the estimates of the models named
            named = {Path(m).resolve() for m in self.models}
            chosen = [
                r
                for r in chosen
                if (self.workspace / r.file).resolve() in named
                or (self.workspace / str(r.made_with.get("source", ""))).resolve() in named
            ]
        yield EstimateSession([Target.of(self.workspace, r, {"made_with": r.made_with}) for r in chosen])


class EstimateSession:
    def __init__(self, targets):
        self.targets = targets

    def threads(self, settings) -> list[int]:
        return [0]  # no host threads: the figures belong to the device

    def describe(self, target, threads: int) -> str:
        return f"{target.artifact}: {target.runtime} figures recorded at export"

    def measure(self, target, threads: int):
        made = target.entry["made_with"]
        if "estimates" in made:
            e = made["estimates"]
            return [
                target.row(
                    device=e.get("accelerator", target.variant),
                    batch_size=1,
                    threads=0,
                    status="estimate",
                    method=e.get("method", method()),
                    ram_bytes=e.get("sram_bytes"),
                    flash_bytes=e.get("flash_bytes") or e.get("dram_bytes"),
                    estimate=e,
                    note=f"{e.get('inference_ms', 0):.3f} ms, {e.get('inferences_per_second', 0):,.0f} "
                    f"inferences/s at {e.get('clock_mhz', 0):g} MHz ({e.get('weights_storage', '')})",
                )
            ]
        return [
            target.row(
                device="microcontroller",
                batch_size=1,
                threads=0,
                status="sized",
                method=f"arena measured by allocation in {made.get('arena_measured_with', 'tflite-micro')}",
                ram_bytes=made.get("arena_bytes_min"),
                flash_bytes=made.get("flash_bytes"),
                note=f"tensor arena >= {made.get('arena_bytes_min', 0):,} B ({made.get('arena_kernels')} "
                f"kernels; reserve {made.get('arena_bytes_recommended', 0):,} B), model "
                f"{made.get('flash_bytes', 0):,} B in flash",
            )
        ]

    def finish(self, report) -> None:
        return None
