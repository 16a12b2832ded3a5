"""The user's chain through the installed `toolkit` command: train -> export -> verify -> benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _toolkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("toolkit", path=str(Path(sys.executable).parent)) or "toolkit"
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_train_export_verify_benchmark(tmp_path, mnist_dir):
    data = ["--data-dir", str(mnist_dir)]
    p = _toolkit("train", "--epochs", "2", "--limit", "10000", "--batch-size", "32", *data, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Accuracy:  train:" in p.stdout
    ws = tmp_path / "exported"  # the default workspace
    assert (ws / "model.keras").is_file() and (ws / "metrics.json").is_file()

    # verified on the whole test split, as a user runs it: on a part, one image can exceed an accuracy criterion
    p = _toolkit("export", "--calibration-size", "100", *data, "--json", "export.json", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads((tmp_path / "export.json").read_text())
    # 10 native artifacts (the two .ort files, the micro .c in LiteRT for Microcontrollers), then 6 web models
    # verified in Chromium; the Vela-compiled files run on an Ethos-U only and are not run
    assert out["passed"] and len(out["results"]) == 16
    assert sum("Chromium" in r["where"] for r in out["results"]) == 6
    assert sum(r["runtime"] == "litert-micro" for r in out["results"]) == 1
    artifacts = json.loads((ws / "manifest.json").read_text())["artifacts"]
    native = {f for f, a in artifacts.items() if a["format"] not in ("web", "vela")}

    p = _toolkit("verify", *data, "--json", "-", cwd=tmp_path)
    assert p.returncode == 0
    verified = json.loads(p.stdout)  # with --json -, stdout holds the JSON alone
    assert verified["passed"] and {r["file"] for r in verified["results"]} == native

    # a changed artifact: verify refuses it and exits non-zero
    f = ws / "mnist_cnn.dynamic.tflite"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    p = _toolkit("verify", "--limit", "200", *data, cwd=tmp_path)
    assert p.returncode == 1 and "SHA-256 differs" in p.stdout

    p = _toolkit(
        "benchmark",
        "--model",
        str(ws / "mnist_cnn.float32.tflite"),
        "--model",
        str(ws / "model.keras"),
        "--iterations",
        "30",
        "--warmup",
        "3",
        "--batch-sizes",
        "1,8",
        "--threads",
        "1",
        *data,
        "--out",
        "bench",
        "--json",
        "bench.json",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    runtimes = {r["runtime"] for r in results if r["status"] == "ok"}
    assert runtimes == {"litert", "litert-compiled", "keras-predict", "keras-compiled"}
    assert {p.name for p in (tmp_path / "bench").iterdir()} == {"results.json", "SUMMARY.md", "benchmark.png"}
