"""Arm Ethos-U NPU figures from Arm's Vela compiler (PyPI `ethos-u-vela`): a performance model's estimates, never
measurements.

Why: no Ethos-U hardware is at hand, but Vela compiles a full-integer int8 `.tflite` for a given NPU configuration and
reports what its performance model predicts (cycles, inference time, SRAM and flash, which operators stay on the
CPU). Those figures answer "would this model fit and run on that NPU" before anyone buys a board, as long as every
row says how it was obtained: each one carries `method` = "estimate: Arm Vela <version> performance model", and the
compiled model it describes, which runs only on an Ethos-U system.
"""

from __future__ import annotations

import csv
import re
import subprocess
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from toolkit import children, fsio
from toolkit.artifacts import ETHOS_U, VELA_FORMAT
from toolkit.manifest import ArtifactRecord

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
    command = children.module("ethosu.vela", "--accelerator-config", config, "--output-dir", str(tmp), str(tflite_path))
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
        "sha256": fsio.file_sha256(target),  # written here, hashed once
    }


def vela_records(tflite: ArtifactRecord, out_dir: Path, say) -> list[ArtifactRecord]:
    """Compile the microcontroller model for each Ethos-U configuration and record each compiled file, with Vela's
    estimates in its made_with; a configuration Vela refuses is reported through `say` and skipped."""
    records = []
    for row in vela_estimates(out_dir / tflite.file, out_dir):
        if row["status"] != "ok":
            say(f"vela {row['accelerator']}: failed ({row['error']})")
            continue
        path = Path(row["path"])
        records.append(
            ArtifactRecord(
                file=path.name,
                format=VELA_FORMAT,
                variant=row["accelerator"],
                runtime=ETHOS_U,
                bytes=row["bytes"],
                sha256=row["sha256"],
                input=tflite.input,
                output=tflite.output,
                made_with={
                    "compiler": f"Arm Vela {vela_version()} (ethos-u-vela)",
                    "source": tflite.file,
                    "source_sha256": tflite.sha256,
                    "runs_on": "an Arm Ethos-U system only: the NPU work is one ethos-u custom operator, which LiteRT "
                    "and LiteRT for Microcontrollers on a CPU cannot run",
                    "estimates": {k: v for k, v in row.items() if k not in ("path", "bytes", "sha256", "status")},
                },
            )
        )
    return records
