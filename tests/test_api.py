"""The Python API (end-to-end tier): one `toolkit export --format all` reads the manifest at most twice, writes it
once per step, loads the model once and hashes each file once; a Keras model object goes through export ->
verify -> benchmark -> predict; and the example notebook runs as it is committed."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit import api, fsio, manifest
from toolkit.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_one_export_reads_loads_and_hashes_each_thing_once(trained_workspace, mnist_dir, tmp_path, monkeypatch):
    import keras

    source, _ = trained_workspace
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(source / "model.keras", ws / "model.keras")
    reads, writes, hashes, loads = Counter(), Counter(), Counter(), Counter()
    real_read, real_write, real_hash = fsio.read_json, fsio.write_json, fsio.file_sha256

    def hashing(path):
        hashes[str(Path(path).resolve())] += 1
        return real_hash(path)

    real_load = keras.saving.load_model
    monkeypatch.setattr(fsio, "read_json", lambda path: reads.update([Path(path).name]) or real_read(path))
    monkeypatch.setattr(fsio, "write_json", lambda path, o: writes.update([Path(path).name]) or real_write(path, o))
    monkeypatch.setattr(fsio, "file_sha256", hashing)
    monkeypatch.setattr(manifest, "file_sha256", hashing)
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: loads.update(["model"]) or real_load(*a, **k))
    args = ["export", "--format", "all", "--limit", "300", "--calibration-size", "200", "--data-dir", str(mnist_dir)]
    result = CliRunner().invoke(app, [*args, "--dir", str(ws)])
    assert result.exit_code == 0, result.output
    formats = {r["format"] for r in manifest.read(ws)["artifacts"].values()} - {"vela"}  # vela lands with micro
    assert reads["manifest.json"] <= 2, reads
    assert writes["manifest.json"] <= len(formats) + 1, writes  # each format as it lands, then the verification
    assert loads["model"] == 1, loads
    assert hashes and max(hashes.values()) == 1, [p for p, n in hashes.items() if n > 1]
    assert str((ws / "mnist_cnn.micro.c").resolve()) in hashes  # what was counted is what was certified


def test_a_keras_model_object_goes_through_the_api(trained_workspace, mnist_dir, tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(mnist_dir))
    model = keras.saving.load_model(trained_workspace[0] / "model.keras")
    ws = tmp_path / "ws"
    exported = api.export(model, ws, formats="tflite", variants=["float32", "int8"], limit=300, calibration_size=200)
    assert exported.passed and {r.file for r in exported.artifacts} == {
        "mnist_cnn.float32.tflite",
        "mnist_cnn.int8.tflite",
    }
    assert "mnist_cnn.int8.tflite" in exported._repr_html_()  # what Jupyter shows: the CLI's tables
    verification = api.verify(ws, limit=300)  # no data given: the workspace's own
    assert verification.passed and len(verification.results) == 2
    run = api.benchmark(
        ws, iterations=20, warmup=5, batch_sizes=[1], threads=[1], include_keras=False, out=tmp_path / "bench"
    )
    measured = [r for r in run.report.results if r.status == "ok"]
    assert {r.artifact for r in measured} >= {"mnist_cnn.float32.tflite", "mnist_cnn.int8.tflite"}
    assert "Benchmark on" in run._repr_html_() and "int8" in run._repr_html_()
    digit = REPO / "examples" / "digits"
    picture = sorted(digit.glob("*.pgm"))[0]
    assert api.predict(picture, ws)[0].label == picture.stem[-1]  # test00000_label7.pgm


@pytest.mark.slow
def test_the_example_notebook_runs(mnist_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("TOOLKIT_DATA_DIR", str(mnist_dir))
    notebook = nbformat.read(REPO / "examples" / "python_api.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "ws" / "manifest.json").is_file()
    shown = " ".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "small_cnn.float32.tflite" in shown  # the export's record, shown as its table
