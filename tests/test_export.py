"""Export: every variant loads in its runtime as the manifest says, verification passes, and fails when it should."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import VERIFY_IMAGES
from toolkit import artifacts, export, manifest, runtimes, verify
from toolkit.errors import ToolkitError
from toolkit.micro.runtime import read_c_array

EXPECTED_FILES = {
    "mnist_cnn.float32.tflite",
    "mnist_cnn.float16.tflite",
    "mnist_cnn.dynamic.tflite",
    "mnist_cnn.int8.tflite",
    "mnist_cnn.float32.onnx",
    "mnist_cnn.int8.onnx",
    "mnist_cnn.micro.tflite",
    "mnist_cnn.micro.c",
}
ESTIMATED = {"mnist_cnn.micro.ethos-u55-128.vela.tflite"}  # Vela-compiled files: they run on an Ethos-U only


def _copy(workspace: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ws"
    shutil.copytree(workspace, target)
    return target


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


def test_verification_passes(exported_workspace, mnist):
    workspace, _ = exported_workspace
    ws = workspace
    results = {r.file: r for r in verify.run_parity(ws, mnist, limit=VERIFY_IMAGES)}
    assert set(results) == EXPECTED_FILES
    for name in ("mnist_cnn.float32.tflite", "mnist_cnn.float32.onnx"):
        assert results[name].passed and results[name].max_abs_diff < 1e-5 and results[name].agreement == 1.0
    assert results["mnist_cnn.float16.tflite"].passed
    for r in results.values():
        assert r.images == VERIFY_IMAGES and r.accuracy > 0.8
    micro = results["mnist_cnn.micro.c"]
    assert micro.runtime == "litert-micro" and micro.accuracy == results["mnist_cnn.micro.tflite"].accuracy
    assert micro.cross_check["runtime"] == "litert" and micro.cross_check["agreement"] == 1.0
    stored = manifest.read(ws)["artifacts"]["mnist_cnn.float32.tflite"]["verification"]
    assert stored["passed"] and stored["images"] == VERIFY_IMAGES


def test_changed_file_is_not_certified(exported_workspace, mnist, tmp_path):
    ws = _copy(exported_workspace[0], tmp_path)
    f = ws / "mnist_cnn.float16.tflite"
    f.write_bytes(f.read_bytes() + b"\0")
    (result,) = verify.run_parity(ws, mnist, files=[f.name], limit=50)
    assert not result.passed and "SHA-256 differs from the manifest" in result.problems[0]
    assert manifest.read(ws)["artifacts"][f.name]["verification"]["passed"] is False


def test_altered_weights_fail_parity(exported_workspace, mnist, tmp_path):
    """A model whose weights changed (with a manifest that agrees) must fail on its numbers."""
    import onnx
    from onnx import numpy_helper

    ws = _copy(exported_workspace[0], tmp_path)
    path = ws / "mnist_cnn.float32.onnx"
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(biggest).copy()
    w *= 1.05
    biggest.CopyFrom(numpy_helper.from_array(w, biggest.name))
    onnx.save(model, str(path))
    manifest.update(ws, lambda m: m["artifacts"][path.name].update(sha256=manifest.file_sha256(path)))
    (result,) = verify.run_parity(ws, mnist, files=[path.name], limit=200)
    assert not result.passed
    assert any("max |diff|" in p for p in result.problems)


def test_c_array_is_byte_identical(exported_workspace):
    """The full export's C array holds the micro model byte for byte (test_micro compiles it with gcc and g++)."""
    workspace, _ = exported_workspace
    tflite = (workspace / "mnist_cnn.micro.tflite").read_bytes()
    data = read_c_array(workspace / "mnist_cnn.micro.c")
    symbol = manifest.read(workspace)["artifacts"]["mnist_cnn.micro.c"]["made_with"]["symbol"]
    assert data == tflite
    assert f"const unsigned char {symbol}[]" in (workspace / "mnist_cnn.micro.c").read_text()


def test_verify_runs_the_micro_tflite_once(exported_workspace, mnist, tmp_path, monkeypatch):
    """The micro .tflite is an artifact of its own and the C array's cross-check: one desktop run serves both."""
    ws = _copy(exported_workspace[0], tmp_path)
    loaded = []
    real_load = runtimes.load
    monkeypatch.setattr(
        runtimes, "load", lambda path, *a, **k: loaded.append(Path(path).name) or real_load(path, *a, **k)
    )
    files = ["mnist_cnn.micro.tflite", "mnist_cnn.micro.c"]
    results = {r.file: r for r in verify.run_parity(ws, mnist, files=files, limit=50, write=False)}
    assert all(r.passed for r in results.values()), results
    assert results["mnist_cnn.micro.c"].cross_check["file"] == "mnist_cnn.micro.tflite"
    assert loaded.count("mnist_cnn.micro.tflite") == 1


def test_c_array_mismatch_fails(exported_workspace, mnist, tmp_path):
    ws = _copy(exported_workspace[0], tmp_path)
    c = ws / "mnist_cnn.micro.c"
    c.write_text(c.read_text().replace("0x", "0X", 1).replace("0X54, 0x46, 0x4c, 0x33", "0x54, 0x46, 0x4c, 0x34", 1))
    manifest.update(ws, lambda m: m["artifacts"][c.name].update(sha256=manifest.file_sha256(c)))
    (result,) = verify.run_parity(ws, mnist, files=[c.name], limit=50)
    assert not result.passed and any("differs from mnist_cnn.micro.tflite at byte" in p for p in result.problems)


def test_reexport_keeps_other_entries(exported_workspace, mnist, tmp_path):
    ws = _copy(exported_workspace[0], tmp_path)
    before = manifest.read(ws)["artifacts"]
    records = export.export(ws, mnist, "onnx", ["float32"])
    assert [r.file for r in records] == ["mnist_cnn.float32.onnx"]
    after = manifest.read(ws)["artifacts"]
    assert set(after) == set(before)
    assert after["mnist_cnn.int8.tflite"] == before["mnist_cnn.int8.tflite"]
    assert not list(ws.glob(".*tmp*"))


def _add_entries(args):
    workspace, prefix = args
    from toolkit import manifest as m

    for i in range(15):
        m.update(Path(workspace), lambda d, i=i: d["artifacts"].__setitem__(f"{prefix}{i}", {"n": i}))


def test_concurrent_manifest_writers_lose_nothing(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_add_entries, [(str(tmp_path), "a"), (str(tmp_path), "b")])
    arts = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert len(arts) == 30


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((1, 28, 28, 1), np.nan, np.float32), "NaN or infinity"),
        (np.zeros((2, 32, 32, 1), np.float32), "shape"),
        (np.zeros((2, 28, 28, 1), np.uint8), "divide uint8 images by 255"),
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
