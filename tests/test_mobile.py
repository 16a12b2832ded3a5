"""What a phone app embeds: metadata inside every `.tflite` and `.onnx` (read back by readers other than the
writer), and ONNX Runtime Mobile's `.ort` files with the operator config for a reduced build."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import copy_workspace
from toolkit import manifest, runtimes
from toolkit.errors import ToolkitError
from toolkit.export.metadata import read_tflite_metadata


def _metadata_names(data: bytes) -> dict[str, bytes]:
    """The model's metadata entries, name -> bytes, read with TensorFlow's own copy of the .tflite schema (not the
    writer's library)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    out = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        buffer = model.Buffers(entry.Buffer())
        out[entry.Name().decode()] = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return out


def test_every_tflite_and_onnx_carries_its_labels_and_normalisation(exported_workspace):
    workspace, _ = exported_workspace
    m = json.loads((workspace / "manifest.json").read_text())
    labels = m["labels"]
    checked = {"tflite": 0, "onnx": 0}
    for record in manifest.records(workspace):
        path = workspace / record.file
        if path.suffix == ".tflite" and record.format in ("tflite", "web"):
            data = path.read_bytes()
            names = _metadata_names(data)
            assert names["TFLITE_METADATA"][4:8] == b"M001", names.keys()  # the metadata schema's identifier
            assert zipfile.ZipFile(path).read("labels.txt").decode().split() == labels  # what Android unpacks
            read = read_tflite_metadata(data)  # and the writer's own displayer
            meta = read["metadata"]
            assert meta["name"].startswith("mnist_cnn (") and meta["version"].startswith("edge toolkit")
            (unit,) = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"]
            assert unit["options"] == {"mean": [0.0], "std": [255.0]}
            assert read["files"]["labels.txt"].decode().split() == labels
            assert "LiteRT metadata schema" in record.made_with["metadata"]
            checked["tflite"] += 1
        elif path.suffix in (".onnx", ".ort"):
            session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
            props = session.get_modelmeta().custom_metadata_map
            assert json.loads(props["labels"]) == labels and json.loads(props["normalization"])["std"] == [255.0]
            checked["onnx"] += 1
    assert checked["tflite"] >= 8 and checked["onnx"] >= 6, checked  # native and web files


def test_ort_files_are_verified_and_come_with_a_reduced_build_config(exported_workspace):
    workspace, _ = exported_workspace
    records = {r.file: r for r in manifest.records(workspace)}
    for variant in ("float32", "int8"):
        record = records[f"mnist_cnn.{variant}.ort"]
        assert record.runtime == "onnxruntime" and record.format == "ort"
        assert record.verification["images"] > 0 and record.verification["passed"] in (True, False)
        onnx_record = records[f"mnist_cnn.{variant}.onnx"]
        assert abs(record.verification["accuracy"] - onnx_record.verification["accuracy"]) <= 0.003
        config = workspace / record.made_with["reduced_build_config"]["file"]
        assert manifest.file_sha256(config) == record.made_with["reduced_build_config"]["sha256"]
    text = (workspace / "mnist_cnn.required_operators_and_types.config").read_text()
    assert "ai.onnx;" in text and "Conv" in text and "QuantizeLinear" in text  # both models' operators, with types
    session = ort.InferenceSession(str(workspace / "mnist_cnn.int8.ort"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 28, 28, 1), np.float32)})[0]
    assert out.shape == (3, 10) and np.allclose(out.sum(axis=1), 1, atol=0.05)


def test_an_ort_file_that_is_not_one_is_refused(tmp_path):
    bad = tmp_path / "x.ort"
    bad.write_bytes(b"\x18\x00\x00\x00NOPE" + bytes(64))
    with pytest.raises(ToolkitError, match="not an ONNX Runtime .ort flatbuffer"):
        runtimes.load(bad)


def test_every_verified_artifact_carries_self_check_vectors(exported_workspace, mnist, tmp_path):
    """The manifest holds the self-check images (one confident test image per class) and, for each artifact
    verified on the whole split, its own outputs on them: what an app runs at start-up."""
    import base64

    from toolkit import verify

    workspace = copy_workspace(exported_workspace[0], tmp_path)
    files = ["mnist_cnn.float32.onnx", "mnist_cnn.int8.onnx", "mnist_cnn.float32.ort", "mnist_cnn.int8.ort"]
    verify.check(workspace, mnist, files=files)  # the whole test split: what writes the self-check vectors
    m = json.loads((workspace / "manifest.json").read_text())
    images = m["self_check"]
    assert len(images["test_images"]) == 10 and images["shape"] == [10, 28, 28, 1]
    pixels = np.frombuffer(base64.b64decode(images["pixels_uint8_base64"]), np.uint8).reshape(images["shape"])
    checked = 0
    for record in manifest.records(workspace):
        expected = (record.verification or {}).get("self_check")
        if expected is None or record.runtime != "onnxruntime":
            continue
        session = ort.InferenceSession((workspace / record.file).read_bytes(), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: (pixels / 255.0).astype(np.float32)})[0]
        want = np.asarray(expected["expected"])
        assert (got.argmax(1) == want.argmax(1)).all() and np.abs(got - want).max() <= expected["tolerance"]
        assert sorted(want.argmax(1).tolist()) == list(range(10))  # one image of each class
        checked += 1
    assert checked == 4  # float32 and int8, .onnx and .ort


def test_litert_compiled_model_is_verified_and_benchmarked_beside_the_interpreter(exported_workspace, mnist):
    from toolkit.bench import benchmark as bench

    workspace, _ = exported_workspace
    for record in manifest.records(workspace):
        if record.format == "tflite":
            cross = record.verification["cross_check"]
            assert cross["runtime"] == "litert-compiled" and cross["agreement"] == 1.0, record.file
            assert cross["max_abs_diff"] <= 1e-6
    target = workspace / "mnist_cnn.int8.tflite"
    result = bench.measure(workspace, mnist, batch_sizes=[1], threads=[1], iterations=20, warmup=2, models=[target])
    rows = {r.runtime: r for r in result.results if r.artifact == target.name}
    assert set(rows) == {"litert", "litert-compiled"}, rows
    assert all(r.status == "ok" and r.p50_ms > 0 for r in rows.values())
    compiled = runtimes.load(target, runtime_name="litert-compiled")
    plain = runtimes.load(target)
    x = mnist.splits().test[0][:5, ..., None].astype(np.float32) / 255
    assert np.array_equal(compiled.run(x), plain.run(x))
    with pytest.raises(ToolkitError, match="does not run .tflite"):
        runtimes.load(target, runtime_name="onnxruntime")
