"""Training across processes on this machine: images per second with 1 and with 2 processes, and the time a step
spends on the gradient all-reduce, measured by timing the same per-process step with and without it.

Three runs of the reference CNN per backend, each `toolkit train` on the first 6,400 training images without
validation (`--all-data --limit 6400`, no shifts), three epochs, the first (compilation) left out:
- one process, one device, global batch 128;
- two processes (`--processes 2`, one device each), global batch 128: each process computes 64 images a step,
  then the gradients are all-reduced (gloo on JAX, gRPC collectives on TensorFlow);
- one process, one device, batch 64, on one core (`taskset`): the step each of the two processes computes, without
  the all-reduce. The difference of the step times is the all-reduce and the waiting for the slower process.
On a 2-core machine the two processes share the cores: this measures the mechanism, not a speed-up.

Run: `.venv/bin/python benchmarks/processes.py` (about 5 minutes); writes
`benchmarks/results/<machine>/processes.json` and `processes.md`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from toolkit.machine import machine_info, machine_slug
from toolkit.tables import markdown_table

IMAGES, EPOCHS = 6400, 3
RUNS = {  # name: (processes, batch, one core)
    "1 process, batch 128": (1, 128, False),
    "2 processes, batch 128 (64 each)": (2, 128, False),
    "1 process, batch 64, one core (a process's step without the all-reduce)": (1, 64, True),
}


def _train(backend: str, processes: int, batch: int, one_core: bool, workspace: Path) -> dict:
    args = ["--all-data", "--limit", str(IMAGES), "--epochs", str(EPOCHS), "--batch-size", str(batch)]
    command = [sys.executable, "-m", "toolkit", "train", *args, "--no-augment", "--dir", str(workspace)]
    if processes > 1:
        command += ["--processes", str(processes)]
    if one_core:
        command = ["taskset", "-c", "0", *command]
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_CPU_DEVICES", "XLA_FLAGS", "TF_CONFIG")}
    subprocess.run(command, env={**env, "KERAS_BACKEND": backend}, check=True, capture_output=True, text=True)
    return json.loads((workspace / "metrics.json").read_text())


def _gradient_bytes(model_path: Path) -> int:
    """The gradients of every trainable weight of the trained model, in its dtype: what is reduced once a step."""
    from toolkit.backend import keras

    model = keras().saving.load_model(model_path, compile=False)
    return sum(int(w.numpy().nbytes) for w in model.trainable_weights)


def measure(backend: str) -> dict:
    rows, reduced = {}, 0
    with tempfile.TemporaryDirectory() as scratch:
        for name, (processes, batch, one_core) in RUNS.items():
            workspace = Path(scratch) / name.split(",")[0].replace(" ", "-")
            metrics = _train(backend, processes, batch, one_core, workspace)
            seconds = statistics.median(metrics["epoch_seconds"][1:])  # epoch 1 compiles
            steps = IMAGES // batch
            rows[name] = {
                "processes": processes,
                "global_batch": batch,
                "images_per_s": round(IMAGES / seconds, 1),
                "step_ms": round(1000 * seconds / steps, 2),
                "epoch_seconds": metrics["epoch_seconds"],
            }
            reduced = _gradient_bytes(workspace / "model.keras")
            shutil.rmtree(workspace)
    two, alone = rows[list(RUNS)[1]], rows[list(RUNS)[2]]
    return {
        "runs": rows,
        "allreduce_ms_per_step": round(two["step_ms"] - alone["step_ms"], 2),
        "bytes_reduced_per_step": reduced,
    }


def main() -> None:
    info = machine_info()
    results = {"machine": info, "images": IMAGES, "epochs": EPOCHS}
    results["backends"] = {backend: measure(backend) for backend in ("jax", "tensorflow")}
    out = Path(__file__).parent / "results" / machine_slug(info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "processes.json").write_text(json.dumps(results, indent=2) + "\n")
    isa = ", ".join(f for f, present in info["isa"].items() if present)
    lines = [f"# Training across processes on {info['cpu']} ({info['cpus_usable']} CPUs; {isa})", ""]
    for backend, r in results["backends"].items():
        table = [[name, f"{v['images_per_s']:.1f}", f"{v['step_ms']:.1f}"] for name, v in r["runs"].items()]
        lines += [f"## {backend}", "", *markdown_table(["run", "images/s", "ms per step"], table), ""]
        lines += [
            f"All-reduce and waiting per step: {r['allreduce_ms_per_step']:.1f} ms, for "
            f"{r['bytes_reduced_per_step']:,} bytes of float32 gradients a step.",
            "",
        ]
    (out / "processes.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
