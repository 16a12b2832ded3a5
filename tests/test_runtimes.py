"""toolkit.runtimes, the loaders that run every artifact: damaged, mislabelled, unsafe or wrongly shaped files
and bad input end in one clean error, a runtime that crashes is contained, and loading needs no TensorFlow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import run_toolkit
from toolkit import runtimes
from toolkit.errors import ToolkitError
from toolkit.model import load_keras_model


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
        proc = run_toolkit("predict", str(image), "--model", str(bad))
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
    inputs = keras.Input((32, 32, 4))  # any image classifier runs; four channels are not an image
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "other.keras")
    with pytest.raises(ToolkitError, match=r"other.keras: input has 4 channels; the toolkit takes 1 \(grayscale\)"):
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


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((1, 28, 28, 1), np.nan, np.float32), "NaN or infinity"),
        (np.zeros((2, 32, 32, 1), np.float32), "shape"),
        (np.zeros((2, 28, 28, 1), np.uint8), "apply the input contract"),
        (np.zeros((0, 28, 28, 1), np.float32), "no images"),
    ],
)
def test_runner_rejects_bad_input(exported_workspace, bad, message):
    runner = runtimes.load(exported_workspace[0] / "mnist_cnn.int8.tflite")
    with pytest.raises(ToolkitError, match=message):
        runner.run(bad)


@pytest.mark.parametrize("suffix", [".tflite", ".onnx", ".keras"])
def test_garbage_files_give_clean_errors(tmp_path, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ToolkitError, match=f"random{suffix}"):
        runtimes.load(path)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ToolkitError, match="empty file"):
        runtimes.load(empty)


def test_runtimes_do_not_import_tensorflow():
    code = "import sys, toolkit.runtimes; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)


def test_children_never_import_from_the_current_folder(tmp_path, monkeypatch):
    import subprocess

    from toolkit import children
    from toolkit.backend import keras as _keras
    from toolkit.export.tflite import convert

    keras = _keras()
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = tmp_path / "tiny.float32.tflite"
    path.write_bytes(convert(model, "float32"))
    planted, marker = tmp_path / "cwd", tmp_path / "planted-numpy-ran"
    planted.mkdir()
    (planted / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.chdir(planted)  # where a user runs a command
    monkeypatch.setenv("PYTHONPATH", str(planted))
    runtimes.probe_in_child(path)  # the test load that predict, report and benchmark make: it ran, with numpy
    proc = subprocess.run(children.module("toolkit.bench.worker", "{}"), capture_output=True, text=True)
    assert "numpy.py" not in proc.stderr  # the worker started (and refused the empty spec) without the planted file
    shown = subprocess.run(children.python("import numpy; print(numpy.__file__)"), capture_output=True, text=True)
    assert shown.returncode == 0 and str(planted) not in shown.stdout
    assert not marker.exists()
