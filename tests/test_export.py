"""toolkit.export: every variant is written, described truthfully in the manifest and loads in its runtime; the
int8 files record how they were made, the C array holds the micro model byte for byte, and a re-export keeps the
other entries."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import EXPECTED_FILES
from tests.helpers import copy_workspace
from toolkit import artifacts, export, manifest, runtimes
from toolkit.micro.runtime import read_c_array

ESTIMATED = {"mnist_cnn.micro.ethos-u55-128.vela.tflite"}  # Vela-compiled files: they run on an Ethos-U only


def test_every_artifact_is_described_truthfully(exported_workspace):
    workspace, records = exported_workspace
    m = manifest.read(workspace)
    compiled = {f for f, a in m["artifacts"].items() if a["format"] == "vela"}
    assert ESTIMATED <= compiled  # every configuration Vela compiles: tests/test_micro.py
    assert {f for f, a in m["artifacts"].items() if a["format"] not in ("web", "vela")} == EXPECTED_FILES
    assert m["model"]["sha256"] == manifest.file_sha256(workspace / "model.keras")
    assert m["labels"] == [str(d) for d in range(10)]
    assert "pixel / 255" in m["preprocessing"]["scaling"]
    for key in ("toolkit", "tensorflow", "tf2onnx", "onnxruntime", "ai-edge-litert"):
        assert m["versions"][key] and m["versions"][key] != "not installed"
    for rec in manifest.records(workspace):
        path = workspace / rec.file
        assert path.stat().st_size == rec.bytes and manifest.file_sha256(path) == rec.sha256
        if artifacts.kind_of(rec.runtime) != artifacts.NATIVE:
            continue
        runner = runtimes.load(path)
        assert runner.runtime == rec.runtime
        assert [runner.input.name, runner.input.shape, runner.input.dtype] == [
            rec.input.name,
            rec.input.shape,
            rec.input.dtype,
        ]
        assert [runner.output.shape, runner.output.dtype] == [rec.output.shape, rec.output.dtype]
        batch = 1 if rec.format == "micro" else -1  # the microcontroller model has a fixed batch of 1
        assert rec.input.shape == [batch, 28, 28, 1] and rec.output.shape == [batch, 10]
        out = runner.run(np.zeros((3, 28, 28, 1), np.float32))
        assert out.shape == (3, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(1), 1.0, atol=0.02)


def test_int8_artifacts_record_how_they_were_made(exported_workspace):
    workspace, _ = exported_workspace
    arts = manifest.read(workspace)["artifacts"]
    tfl = arts["mnist_cnn.int8.tflite"]
    assert tfl["input"]["dtype"] == "int8" and tfl["output"]["dtype"] == "int8"
    assert tfl["input"]["quantization"]["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert tfl["input"]["quantization"]["zero_point"] == -128
    assert tfl["made_with"]["calibration"]["images"] == 200
    onnx_int8 = arts["mnist_cnn.int8.onnx"]["made_with"]
    assert onnx_int8["quant_format"] == "QDQ" and onnx_int8["per_channel"] and onnx_int8["reduce_range"]
    assert onnx_int8["opset"] >= 17
    import onnx

    model = onnx.load(str(workspace / "mnist_cnn.float32.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # dynamic batch
    ops = {n.op_type for n in onnx.load(str(workspace / "mnist_cnn.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_c_array_is_byte_identical(exported_workspace):
    """The full export's C array holds the micro model byte for byte (test_micro compiles it with gcc and g++)."""
    workspace, _ = exported_workspace
    tflite = (workspace / "mnist_cnn.micro.tflite").read_bytes()
    data = read_c_array(workspace / "mnist_cnn.micro.c")
    symbol = manifest.read(workspace)["artifacts"]["mnist_cnn.micro.c"]["made_with"]["symbol"]
    assert data == tflite
    assert f"const unsigned char {symbol}[]" in (workspace / "mnist_cnn.micro.c").read_text()


def test_reexport_keeps_other_entries(exported_workspace, mnist, tmp_path):
    ws = copy_workspace(exported_workspace[0], tmp_path)
    before = manifest.read(ws)["artifacts"]
    records = export.export(ws, mnist, "onnx", ["float32"])
    assert [r.file for r in records] == ["mnist_cnn.float32.onnx"]
    after = manifest.read(ws)["artifacts"]
    assert set(after) == set(before)
    assert after["mnist_cnn.int8.tflite"] == before["mnist_cnn.int8.tflite"]
    assert not list(ws.glob(".*tmp*"))
