"""The embedding examples run without this toolkit and without TensorFlow: each in a clean virtual
environment holding only its runtime and numpy, on the committed release in exported/."""

from __future__ import annotations

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
    got = dict(re.findall(r"label(\d)\.pgm: (\d) ", proc.stdout))
    assert len(got) == 10 and all(k == v for k, v in got.items()), proc.stdout
