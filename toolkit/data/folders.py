"""A folder of images per class: DIR/train/<class>/*.png|jpg (and DIR/test/<class>/..., else a seeded,
class-balanced fifth of the training images is the test split). Class names are the folder names, in sorted
order; images are grayscale when every file is, RGB otherwise; all of one size unless `image_size` resizes them
(bilinear). Pillow is imported only when images are decoded, so importing the package stays light.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit import fsio
from toolkit.data.idx import MAX_SIDE, MIN_SIDE
from toolkit.errors import ToolkitError
from toolkit.preprocess import opened, pixels, uint8_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_TEST_SHARE = 0.2  # of each class, for a folder dataset without test/


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
    """One image of the dataset as uint8 pixels, decoded as `predict` decodes a file (toolkit.preprocess)."""
    from PIL import Image

    with opened(blob, path) as img:
        img = uint8_image(pixels(img, 3 if rgb else 1))
        if size is not None and (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _is_colour(path: Path, blob: bytes) -> bool:
    with opened(blob, path, decode=False) as img:
        return img.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")


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
