"""The embedding examples run without this toolkit and without TensorFlow: each in a clean virtual
environment holding only its runtime and numpy, on the committed release in exported/."""

from __future__ import annotations

import json
import re
import subprocess
import venv
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.network]
DIGITS = sorted((REPO / "examples" / "digits").glob("*.pgm"))


def _clean_env(tmp_path: Path, packages: list[str]) -> Path:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages], check=True, timeout=600
    )
    return py


@pytest.mark.parametrize(
    "app, runtime, model",
    [
        ("litert_app.py", "ai-edge-litert", "mnist_cnn.int8.tflite"),
        ("onnx_app.py", "onnxruntime", "mnist_cnn.int8.onnx"),
        ("onnx_app.py", "onnxruntime", "mnist_cnn.float32.onnx"),
        ("onnx_app.py", "onnxruntime", "mnist_cnn.int8.ort"),
    ],
)
def test_example_app_in_a_clean_environment(tmp_path, app, runtime, model):
    manifest = REPO / "exported" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("no release in exported/")
    py = _clean_env(tmp_path, [f"{runtime}=={version(runtime)}", f"numpy=={version('numpy')}"])
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    assert "tensorflow" not in listed.lower() and "toolkit" not in listed.lower()
    proc = subprocess.run(
        [str(py), str(REPO / "examples" / app), str(manifest), model, *map(str, DIGITS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "self-check: 10 images as expected" in proc.stderr, proc.stderr
    got = dict(re.findall(r"label(\d)\.pgm: (\d) ", proc.stdout))
    assert len(got) == 10 and all(k == v for k, v in got.items()), proc.stdout
    # a self-check vector changed (here: the expected top class of one image) makes the app refuse the model
    m = json.loads(manifest.read_text())
    expected = m["artifacts"][model]["verification"]["self_check"]["expected"]
    expected[3] = expected[3][1:] + expected[3][:1]
    changed = tmp_path / "release"
    changed.mkdir()
    (changed / "manifest.json").write_text(json.dumps(m))
    (changed / model).symlink_to(REPO / "exported" / model)
    proc = subprocess.run(
        [str(py), str(REPO / "examples" / app), str(changed / "manifest.json"), model, str(DIGITS[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "self-check failed on test image" in proc.stderr, proc.stderr
    assert "refusing " + model in proc.stderr and "label" not in proc.stdout
