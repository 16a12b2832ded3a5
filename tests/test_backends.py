"""Every Keras backend trains the reference model, and what it saves is the same model for TensorFlow's exporters.

The GPU machines this project may be lent carry JAX with CUDA and no TensorFlow, so a model trained there must
load, export and verify here like one trained with TensorFlow. Keras fixes its backend when it is
first imported, so each training runs in a subprocess; the check runs in this (TensorFlow) process.

The exports are verified on the whole test split, as `toolkit verify` does: on a few hundred images one image is
0.3 pp, more than the int8 criterion allows, and numerics differ between AVX2 and AVX-512 machines.
PyTorch is installed only where a local CPU build exists (`make setup`); elsewhere its case is skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from toolkit import export, verify
from toolkit.backend import keras
from toolkit.data import to_model_input
from toolkit.model import load_keras_model


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_model_trained_on_another_backend_loads_exports_and_verifies(backend, tmp_path, mnist_dir, mnist):
    if backend == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed: `make setup` installs it only from a local CPU build (PyPI's is CUDA)")
    assert importlib.util.find_spec(backend), f"{backend} is missing; it is in the test extra: pip install -e '.[test]'"
    assert keras().config.backend() == "tensorflow", "the check must run where the exporters run: TensorFlow"
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "train",
            "--epochs",
            "1",
            "--limit",
            "6000",
            "--batch-size",
            "32",
            "--data-dir",
            str(mnist_dir),
            "--dir",
            str(ws),
        ],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["train_images"] == 6000
    assert metrics["accuracy"]["test"] > 0.8  # it learned (chance: 0.10): the parity below compares a real model

    model = load_keras_model(ws / "model.keras")
    x, y = mnist.x_test, mnist.y_test
    here = float(np.mean(np.argmax(model.predict(to_model_input(x), batch_size=500, verbose=0), axis=1) == y))
    assert abs(here - metrics["accuracy"]["test"]) <= 0.002  # the same weights mean the same model here

    records = export.export(ws, mnist, "tflite", ["float32", "int8"], calibration_size=200)
    assert sorted(r.file for r in records) == ["mnist_cnn.float32.tflite", "mnist_cnn.int8.tflite"]
    results = verify.run_parity(ws, mnist)
    assert len(results) == 2 and all(r.passed for r in results), [(r.file, r.problems) for r in results]
