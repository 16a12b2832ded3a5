"""MNIST's IDX layout and Keras' mnist.npz: decode, check and fingerprint the four arrays. Numpy only, so the
package can import it whatever the source.

Every file is checked: IDX magic number, dimensions, counts, file length (a gzip is inflated no further than its
header declares), and for MNIST the SHA-256 of its decompressed content. A bad file stops with a `ToolkitError`
that names it. An .npz is fingerprinted as the IDX encoding of its arrays, so the same data has one SHA-256
whatever its container.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit import fsio
from toolkit.errors import ToolkitError

IMAGE_SHAPE = (28, 28)  # MNIST's
NUM_CLASSES = 10  # MNIST's
MIN_SIDE, MAX_SIDE = 8, 256  # the image sides any dataset may have (image folders too)

# role -> file name of the original distribution (without .gz)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the decompressed IDX content (header + data) of the original MNIST files.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_IDX_UBYTE = 0x08


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding (header + data) of a uint8 array: what the original files hold, decompressed."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


MAX_IDX_BYTES = 1 << 31  # 2 GiB: far above any dataset of 8-256 pixel images this toolkit trains on


def _declared_size(head: bytes) -> int | None:
    """The byte count an IDX header declares (header included), once enough of it is known."""
    if len(head) < 4:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    items = 1
    for i in range(ndim):
        items *= int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big")
    return 4 + 4 * ndim + items


def _read_maybe_gzip(path: Path) -> bytes:
    """The IDX content of a file, inflated if gzipped: never more than its header declares (plus one byte, to tell
    that there is more), nor more than MAX_IDX_BYTES, so a gzip that inflates to gigabytes is stopped early."""
    raw = fsio.read_bytes(path)
    if raw[:2] != b"\x1f\x8b":
        return raw
    inflater, out, data = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), bytearray(), raw
    try:
        while not inflater.eof:
            declared = _declared_size(bytes(out[:1028]))
            limit = min(MAX_IDX_BYTES, declared + 1 if declared is not None else 1028)
            chunk = inflater.decompress(data, max(1, min(1 << 22, limit - len(out))))
            data = inflater.unconsumed_tail
            out += chunk
            if len(out) >= limit and declared is not None:
                raise ToolkitError(
                    f"{path}: inflates to more than the {declared:,} bytes its IDX header declares"
                    if declared < MAX_IDX_BYTES
                    else f"{path}: inflates to more than {MAX_IDX_BYTES:,} bytes"
                )
            if not chunk and not data:
                raise ToolkitError(f"{path}: truncated gzip file (ends before the end of its stream)")
    except zlib.error as e:
        raise ToolkitError(f"{path}: corrupt gzip file ({e})") from None
    return bytes(out)


def parse_idx(content: bytes, path: Path | str, ndim: int) -> np.ndarray:
    """Check and decode IDX content; `ndim` is 3 for images, 1 for labels."""
    if len(content) < 4:
        raise ToolkitError(f"{path}: too short for an IDX file ({len(content)} bytes)")
    magic = int.from_bytes(content[:4], "big")
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if magic != expected_magic:
        what = "images" if ndim == 3 else "labels"
        raise ToolkitError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX {what}, unsigned bytes)"
        )
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise ToolkitError(f"{path}: truncated IDX header ({len(content)} of {header_len} bytes)")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(content) < expected:
        raise ToolkitError(
            f"{path}: truncated: the header announces {dims[0]} items ({expected} bytes), "
            f"the file has {len(content)} bytes"
        )
    if len(content) > expected:
        raise ToolkitError(f"{path}: {len(content) - expected} unexpected bytes after the {dims[0]} items it announces")
    if ndim == 3 and not all(MIN_SIDE <= d <= MAX_SIDE for d in dims[1:]):
        raise ToolkitError(
            f"{path}: images are {dims[1]}x{dims[2]}, not between {MIN_SIDE} and {MAX_SIDE} pixels a side"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_len).reshape(dims)


def _check_pair(
    images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str, classes: int = NUM_CLASSES
) -> None:
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ToolkitError(f"{images_name}: images have shape {images.shape[1:]}, not (height, width[, 3])")
    if labels.ndim != 1:
        raise ToolkitError(f"{labels_name}: labels must be one-dimensional, got shape {labels.shape}")
    if len(images) != len(labels):
        raise ToolkitError(f"{labels_name}: {len(labels)} labels for {len(images)} images in {images_name}")
    if len(labels) == 0:
        raise ToolkitError(f"{labels_name}: holds no labels")
    if labels.max() >= classes:
        bad = int(np.argmax(labels >= classes))
        raise ToolkitError(f"{labels_name}: label {int(labels[bad])} at index {bad} is outside 0-{classes - 1}")


def _check_splits(arrays: dict[str, np.ndarray], names: dict[str, str], dataset: str) -> None:
    """Both splits well formed and alike: MNIST's 28x28 and 10 classes, or for another dataset the training
    images' size and classes (at least 2) in the test split too."""
    train, test = arrays["train_images"], arrays["test_images"]
    if dataset == "mnist" and train.shape[1:] != IMAGE_SHAPE:
        raise ToolkitError(f"{names['train_images']}: images are {train.shape[1]}x{train.shape[2]}, expected 28x28")
    _check_pair(train, arrays["train_labels"], names["train_images"], names["train_labels"], 256)
    if len(train) < 2:
        raise ToolkitError(f"{names['train_images']}: {len(train)} training image(s); a classifier needs more")
    classes = NUM_CLASSES if dataset == "mnist" else int(arrays["train_labels"].max()) + 1
    if classes < 2:
        raise ToolkitError(f"{names['train_labels']}: one class only (label 0); a classifier needs at least 2")
    if test.shape[1:] != train.shape[1:]:
        raise ToolkitError(
            f"{names['test_images']}: images are {'x'.join(map(str, test.shape[1:]))}, the training images "
            f"{'x'.join(map(str, train.shape[1:]))}"
        )
    _check_pair(test, arrays["test_labels"], names["test_images"], names["test_labels"], classes)


def _check_mnist(file_sha256: dict[str, str], where: Callable[[str], str]) -> None:
    for name, digest in file_sha256.items():
        if digest != MNIST_SHA256[name]:
            raise ToolkitError(
                f"{where(name)}: SHA-256 of the content is {digest[:16]}..., not MNIST's {MNIST_SHA256[name][:16]}... "
                "(corrupt or another dataset; for another dataset in IDX layout pass --dataset idx)"
            )


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file under one of the names MNIST's files go by; what is there (a folder too) is checked on reading."""
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        if (folder / candidate).exists():
            return folder / candidate
    return None


def load_idx_folder(folder: Path, dataset: str = "mnist") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, digests = {}, {}
    paths = {}
    for role, name in FILES.items():
        path = find_idx_file(folder, name)
        if path is None:
            raise ToolkitError(f"{folder / name}: file not found (looked for {name} and {name}.gz)")
        content = _read_maybe_gzip(path)
        digests[name] = hashlib.sha256(content).hexdigest()
        arrays[role] = parse_idx(content, path, ndim=3 if role.endswith("images") else 1)
        paths[name] = path
    if dataset == "mnist":
        _check_mnist(digests, lambda name: str(paths[name]))
    _check_splits(arrays, {role: str(paths[name]) for role, name in FILES.items()}, dataset)
    return arrays, digests


def load_npz(path: Path, dataset: str = "mnist") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A Keras-style mnist.npz (x_train, y_train, x_test, y_test); never unpickles."""
    keys = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys.values() if k not in npz.files]
            if missing:
                raise ToolkitError(
                    f"{path}: missing arrays {', '.join(missing)} (expected x_train, y_train, x_test, y_test)"
                )
            for role, key in keys.items():
                arr = npz[key]
                if arr.dtype != np.uint8:
                    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
                        raise ToolkitError(f"{path}: array {key} has dtype {arr.dtype}, expected uint8")
                    arr = arr.astype(np.uint8)
                arrays[role] = arr
    except FileNotFoundError:
        raise ToolkitError(f"{path}: file not found") from None
    except ToolkitError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ToolkitError(f"{path}: not a readable .npz archive ({reason})") from None
    _check_splits(arrays, {role: f"{path}[{key}]" for role, key in keys.items()}, dataset)
    # the same fingerprint as the IDX files: SHA-256 of the IDX encoding of each array
    digests = {FILES[role]: hashlib.sha256(idx_bytes(arr)).hexdigest() for role, arr in arrays.items()}
    if dataset == "mnist":
        _check_mnist(digests, lambda name: f"{path}[{keys[next(r for r, n in FILES.items() if n == name)]}]")
    return arrays, digests


def load_folder_or_npz(path: Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A folder with the four IDX files (or with mnist.npz), or an .npz file."""
    if path.is_file():
        if path.suffix == ".npz":
            return load_npz(path, dataset)
        raise ToolkitError(f"{path}: expected a folder with the four IDX files or a .npz file")
    if not path.exists():
        raise ToolkitError(f"{path}: data folder not found")
    if find_idx_file(path, FILES["train_images"]) is None and (path / "mnist.npz").is_file():
        return load_npz(path / "mnist.npz", dataset)
    return load_idx_folder(path, dataset)
