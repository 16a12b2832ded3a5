"""Bad input of every kind ends in one clean line and a non-zero exit, in a process that survives."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit import runtimes
from toolkit.errors import ToolkitError
from toolkit.model import load_keras_model


def _toolkit(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _damaged(src: Path, tmp_path: Path) -> list[Path]:
    data = src.read_bytes()
    rng = np.random.default_rng(1)
    flipped = bytearray(data)
    for i in rng.integers(64, len(data) - 64, 200):
        flipped[i] ^= 0xFF
    variants = {
        "half": data[: len(data) // 2],
        "head": data[:10],
        "flipped": bytes(flipped),
        "random": rng.integers(0, 256, len(data) // 4, dtype=np.uint8).tobytes(),
    }
    out = []
    for name, content in variants.items():
        path = tmp_path / f"{name}{''.join(src.suffixes[-2:])}"
        path.write_bytes(content)
        out.append(path)
    return out


@pytest.mark.parametrize(
    "artifact", ["mnist_cnn.float32.tflite", "mnist_cnn.int8.tflite", "mnist_cnn.int8.onnx", "model.keras"]
)
def test_truncated_flipped_and_random_bytes_to_every_loader(exported_workspace, tmp_path, artifact):
    """Each damaged file goes through `toolkit predict --model`: a clean error line, exit 1, no crash."""
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
    for bad in _damaged(exported_workspace[0] / artifact, tmp_path):
        proc = _toolkit("predict", str(image), "--model", str(bad))
        assert proc.returncode in (0, 1), (
            bad.name,
            proc.returncode,
            proc.stderr[-500:],
        )  # negative = killed by a signal
        if proc.returncode == 1:
            err = proc.stderr.strip().splitlines()
            assert err[-1].startswith("error: ") and bad.name in err[-1] and "Traceback" not in proc.stderr, (
                proc.stderr[-500:]
            )


def test_a_crashing_runtime_is_contained(exported_workspace, monkeypatch):
    """The probe runs the file in a child first: a crash there (here forced with SIGSEGV) is an error here."""
    path = exported_workspace[0] / "mnist_cnn.float32.tflite"
    monkeypatch.setattr(runtimes, "PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(runtimes, "_probed", set())
    with pytest.raises(ToolkitError, match=r"malformed model: it crashed LiteRT \(SIGSEGV\)"):
        runtimes.load(path)


def test_keras_files_load_in_safe_mode(tmp_path):
    """A .keras file with a Lambda layer (arbitrary code) is refused, not run."""
    from toolkit.backend import keras as _keras

    keras = _keras()
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2)(keras.layers.Flatten()(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ToolkitError, match="lambda.keras: cannot load as a Keras model .*(unsafe|safe_mode|Lambda)"):
        load_keras_model(path)


def test_wrong_input_shape_model_is_refused(tmp_path):
    from toolkit.backend import keras as _keras

    keras = _keras()
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "other.keras")
    with pytest.raises(ToolkitError, match=r"other.keras: input shape \[-1, 32, 32, 3\] is not \(N, 28, 28, 1\)"):
        runtimes.load(tmp_path / "other.keras")


def test_a_file_of_one_format_named_as_another(exported_workspace, tmp_path):
    onnx_as_tflite = tmp_path / "model.tflite"
    onnx_as_tflite.write_bytes((exported_workspace[0] / "mnist_cnn.float32.onnx").read_bytes())
    with pytest.raises(ToolkitError, match="not a TFLite flatbuffer"):
        runtimes.load(onnx_as_tflite)
    tflite_as_onnx = tmp_path / "model.onnx"
    tflite_as_onnx.write_bytes((exported_workspace[0] / "mnist_cnn.float32.tflite").read_bytes())
    with pytest.raises(ToolkitError, match="model.onnx"):
        runtimes.load(tflite_as_onnx)


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=50),
    scale=st.floats(1e-4, 0.05),
    zero_point=st.integers(-128, 127),
)
def test_quantize_dequantize_round_trip(x, scale, zero_point):
    x = np.array(x, np.float32)
    q = runtimes.quantize(x, scale, zero_point)
    assert q.dtype == np.int8
    back = runtimes.dequantize(q, scale, zero_point)
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale  # what int8 can represent
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(back[inside] - x[inside]) <= scale / 2 * (1 + 1e-3) + 1e-7)
    np.testing.assert_allclose(back[~inside], np.where(x[~inside] < lo, lo, hi), rtol=1e-5)  # saturates at the ends
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(q[order].astype(int)) >= 0)  # monotonic


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_pixels_are_refused(exported_workspace, bad):
    x = np.zeros((2, 28, 28, 1), np.float32)
    x[1, 3, 4, 0] = bad
    for name in ("mnist_cnn.float32.onnx", "mnist_cnn.float16.tflite"):
        with pytest.raises(ToolkitError, match="NaN or infinity"):
            runtimes.load(exported_workspace[0] / name).run(x)


def test_unwritable_output_folder(tmp_path, mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = _toolkit(
        "train", "--epochs", "1", "--limit", "100", "--data-dir", str(mnist_dir), "--dir", str(blocker / "ws")
    )
    assert proc.returncode == 1 and "cannot create folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_last_epoch_and_resume_finishes(tmp_path, mnist_dir):
    ws = tmp_path / "ws"
    args = ["train", "--limit", "1500", "--batch-size", "32", "--data-dir", str(mnist_dir), "--dir", str(ws)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args, "--epochs", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = ws / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert state.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-800:]
    assert "toolkit train --resume" in err and "Traceback" not in err
    assert not [p for p in ws.rglob("*") if ".tmp-" in p.name]  # nothing half-written
    done = load_keras_model(ws / "checkpoint" / "last.keras")  # the last good checkpoint loads
    assert done.count_params() == 471_914
    import json

    assert 1 <= json.loads(state.read_text())["epoch"] < 4
    proc = _toolkit(*args, "--resume")  # the checkpoint's own plan (4 epochs) is carried on
    assert proc.returncode == 0, proc.stderr[-800:]
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and len(metrics["history"]["val_accuracy"]) == 4
