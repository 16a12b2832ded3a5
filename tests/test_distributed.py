"""Data-parallel training on simulated devices: JAX on 4 host CPU devices, TensorFlow on 2 logical CPUs
(`TOOLKIT_CPU_DEVICES`). Each run is a `toolkit train` child process, since the split must be set before the
backend starts.

Parity with one device is checked on models whose steps are deterministic: the same images, seed and steps give
the same loss and weights within 1e-5. Two things are not the same by design, and are stated in docs/training.md:
Dropout draws other masks under a distribution, and TensorFlow's MirroredStrategy normalises each replica's share
of the batch on its own (JAX's DataParallel normalises the global batch: checked below with a BatchNormalization).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_toolkit
from toolkit.backend import keras as _keras

pytestmark = pytest.mark.slow

STEPS = ["--limit", "512", "--epochs", "1", "--batch-size", "64", "--no-augment"]  # 8 steps of 64 images
TOLERANCE = 1e-5


def _train(workspace: Path, backend: str, devices: int | None, *args: str, data_dir: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_CPU_DEVICES", "XLA_FLAGS")}
    env.update(KERAS_BACKEND=backend, TOOLKIT_DATA_DIR=str(data_dir))
    if devices:
        env["TOOLKIT_CPU_DEVICES"] = str(devices)
    return run_toolkit("train", *args, "--dir", str(workspace), timeout=600, env=env)


def _model_file(tmp_path: Path, batch_norm: bool) -> Path:
    """A small classifier: convolution, (global-batch) normalisation, no dropout, so every step is deterministic."""
    keras = _keras()
    layers = keras.layers
    body = (
        [layers.Conv2D(8, 3, use_bias=False), layers.BatchNormalization(), layers.ReLU()]
        if batch_norm
        else [layers.Conv2D(8, 3, activation="relu")]
    )
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), *body, layers.MaxPooling2D(), layers.Flatten(), layers.Dense(10, "softmax")],
        name="small_bn" if batch_norm else "small",
    )
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    return path


def _weights(workspace: Path) -> list[np.ndarray]:
    return _keras().saving.load_model(workspace / "checkpoint" / "last.keras").get_weights()


def _same_training(one: Path, many: Path) -> None:
    h1 = json.loads((one / "metrics.json").read_text())["history"]
    hn = json.loads((many / "metrics.json").read_text())["history"]
    for key in ("loss", "val_loss", "accuracy"):
        assert np.allclose(h1[key], hn[key], rtol=TOLERANCE, atol=0), (key, h1[key], hn[key])
    for a, b in zip(_weights(one), _weights(many), strict=True):
        assert np.abs(a - b).max() <= TOLERANCE


@pytest.mark.parametrize(("backend", "devices", "batch_norm"), [("jax", 4, True), ("tensorflow", 2, False)])
def test_n_replicas_train_as_one_device_does(backend, devices, batch_norm, tmp_path, mnist_dir):
    model = _model_file(tmp_path, batch_norm)
    runs = {}
    for n in (1, devices):
        ws = tmp_path / f"replicas-{n}"
        result = _train(ws, backend, None if n == 1 else n, *STEPS, "--model", str(model), data_dir=mnist_dir)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[n] = (ws, result.stdout)
    ws, out = runs[devices]
    assert f"Training on {devices} replicas, data parallel" in out and "simulated CPU devices" in out
    assert f"Global batch 64 = {devices} x {64 // devices}" in out
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["replicas"]["replicas"] == devices and len(metrics["replicas"]["devices"]) == devices
    assert metrics["efficiency"]["replicas"] == devices and metrics["device"].startswith(f"cpu x{devices}")
    assert "Training on 1 device" in runs[1][1]
    _same_training(runs[1][0], ws)
    # the N-replica checkpoint goes on on one device
    result = _train(ws, backend, None, "--resume", "--epochs", "2", data_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((ws / "metrics.json").read_text())
    assert resumed["epochs"] == 2 and resumed["replicas"]["replicas"] == 1


def test_the_reference_model_on_4_replicas_resumes_on_one_device_and_exports(tmp_path, mnist_dir, mnist):
    """517 images in batches of 64: the partial last batch (5 images) is left out each epoch, said once; the
    checkpoint of the 4-replica run goes on on one device; the model exports as any other."""
    ws = tmp_path / "ws"
    args = ["--limit", "517", "--epochs", "1", "--batch-size", "64", "--no-augment"]
    result = _train(ws, "jax", 4, *args, data_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("each epoch leaves out 5 images (its partial last batch)") == 1
    assert json.loads((ws / "metrics.json").read_text())["replicas"]["dropped_train_images_per_epoch"] == 5
    result = _train(ws, "jax", None, "--resume", "--epochs", "2", data_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["replicas"]["replicas"] == 1 and len(metrics["history"]["loss"]) == 2
    from toolkit import export

    (record,) = export.export(ws, mnist, "tflite", variants=["float32"], calibration_size=50)
    assert record.verification is None and (ws / record.file).stat().st_size > 1_000_000


@pytest.mark.parametrize(
    ("devices", "args", "message"),
    [
        (4, ["--batch-size", "66"], "--batch-size 66 does not split over 4 devices; use 64 or 68"),
        (4, ["--devices", "8"], "--devices 8: 4 CPU device(s) visible"),
        (None, ["--devices", "2"], "TOOLKIT_CPU_DEVICES=N simulates N devices"),
    ],
)
def test_a_split_that_cannot_be_made_is_one_line(devices, args, message, tmp_path, mnist_dir):
    result = _train(tmp_path / "ws", "jax", devices, "--limit", "64", *args, data_dir=mnist_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and message in line, line
    assert not (tmp_path / "ws" / "model.keras").exists()
