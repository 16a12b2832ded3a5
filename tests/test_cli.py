"""The CLI: help for every command, clean one-line errors with the right exit codes, and a real train run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import one_line_error, run_toolkit
from toolkit.artifacts import FORMATS
from toolkit.cli import app

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_command_is_listed():
    assert set(COMMANDS) == {
        "data",
        "train",
        "export",
        "verify",
        "benchmark",
        "profile",
        "serve",
        "screenshot",
        "quantize",
        "predict",
        "report",
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"toolkit {command} [OPTIONS]" in result.output
    assert "--dir" in result.output or command == "data"  # data reads the dataset only


def test_format_help_comes_from_the_registry():
    result = runner.invoke(app, ["export", "--help"], terminal_width=400)
    text = " ".join(result.output.split())
    for name in FORMATS:
        assert f"{name}:" in text or f"{name} (or" in text, name
    assert "micro (or c)" in text and "recipes" in text


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


def test_missing_data_dir(tmp_path):
    result = runner.invoke(app, ["data", "--data-dir", str(tmp_path / "nowhere")])
    one_line_error(result, "nowhere", "not found")


def test_corrupt_data_exits_1(tmp_path, mnist_dir):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(mnist_dir, folder)
    f = folder / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])
    result = runner.invoke(app, ["train", "--data-dir", str(folder), "--dir", str(tmp_path / "ws")])
    one_line_error(result, "train-labels-idx1-ubyte.gz")
    assert not (tmp_path / "ws" / "model.keras").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--epochs", "0"],
        ["train", "--batch-size", "-3"],
        ["export", "--calibration-size", "0"],
        ["verify", "--limit", "0"],
    ],
)
def test_bad_options_exit_2(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_unknown_format_and_variant(tmp_path):
    one_line_error(
        runner.invoke(app, ["export", "--format", "tflight", "--dir", str(tmp_path)]),
        "unknown format 'tflight'",
        "tflite",
    )
    one_line_error(
        runner.invoke(app, ["export", "--format", "onnx", "--quantize", "float16", "--dir", str(tmp_path)]),
        "unknown variant 'float16'",
    )


def test_export_without_a_model(tmp_path, mnist_dir):
    result = runner.invoke(app, ["export", "--dir", str(tmp_path), "--data-dir", str(mnist_dir)])
    one_line_error(result, "model.keras", "toolkit train")


def test_verify_without_manifest(tmp_path, mnist_dir):
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--data-dir", str(mnist_dir)])
    one_line_error(result, "no artifacts to verify")


def test_data_report_json(mnist_dir, tmp_path):
    result = runner.invoke(app, ["data", "--data-dir", str(mnist_dir), "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "MNIST SHA-256 verified" in result.output
    report = json.loads((tmp_path / "d.json").read_text())
    assert [s["count"] for s in report["splits"]] == [48_000, 12_000, 10_000]


def test_train_command_prints_the_reference_table(mnist_dir, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--epochs",
            "1",
            "--limit",
            "3000",
            "--batch-size",
            "32",
            "--data-dir",
            str(mnist_dir),
            "--dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    acc = next(l for l in lines if l.startswith("Accuracy:  train: "))
    assert "valid: " in acc and "test: " in acc
    assert any(l.startswith("    Loss:  train: ") for l in lines)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"]["test"] > 0.5 and (tmp_path / "model.keras").is_file()


def test_unwritable_output_folder(tmp_path, mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run_toolkit(
        "train", "--epochs", "1", "--limit", "100", "--data-dir", str(mnist_dir), "--dir", str(blocker / "ws")
    )
    assert proc.returncode == 1 and "cannot create folder" in proc.stderr and "Traceback" not in proc.stderr


def test_file_names_are_text_never_markup_and_never_a_crash(tmp_path):
    from PIL import Image

    from toolkit.backend import keras as _keras

    keras = _keras()
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "m.keras")
    image = tmp_path / "[red]x[/blue].png"  # a folder "[red]x[" and a file "blue].png"
    image.parent.mkdir()
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
    result = runner.invoke(app, ["predict", str(image), "--model", str(tmp_path / "m.keras")], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "[red]x[/blue].png" in result.output
    # a folder name that is not UTF-8, printed to a strict UTF-8 stdout: escaped in one line, not a traceback
    odd = os.fsencode(str(tmp_path)) + b"/dir\xff\xfe"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "data", "--data-dir", odd], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and "\\xff" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_json_to_a_closed_stdout_is_one_line():
    code = "import os, sys; os.close(1); from toolkit.cli import main; sys.argv[1:] = ['data', '--json', '-']; main()"
    closed = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    assert closed.returncode == 1
    assert closed.stderr.strip() == "error: --json -: standard output is closed; pass --json FILE"


def test_json_never_overwrites_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"artifacts": {}}')
    result = runner.invoke(app, ["verify", "--dir", str(tmp_path), "--json", str(tmp_path / "manifest.json")])
    one_line_error(result, "that is the workspace's manifest")
    assert (tmp_path / "manifest.json").read_text() == '{"artifacts": {}}'
