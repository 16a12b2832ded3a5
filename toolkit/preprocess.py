"""Turn a photo or drawing of a digit into the model's input, the way MNIST's digits were made.

1. grey: colour becomes luminance (ITU-R 601 weights, as PIL's "L"); where the image has real transparency (at
   least 1% of its pixels), the alpha channel is the ink (a drawing on a transparent canvas); 16-bit images
   are scaled to 8 bits;
2. polarity: MNIST digits are white on black, so an image whose border is light is inverted;
3. crop to the ink's bounding box (pixels above 25% of the brightest), fit it into 20x20 keeping its aspect;
4. centre: place it in 28x28 so that its centre of mass is the centre of the image;
5. scale to [0, 1] float32 (pixels / 255), shape (28, 28, 1).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError, first_line

MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
INK_THRESHOLD = 0.25
OPAQUE_ALPHA = 250  # alpha below this is transparency
TRANSPARENT_SHARE = 0.01  # the alpha is the ink when at least this share of the pixels is transparent


# The decoders an image file may reach, for datasets and predict alike: no EPS or PDF (Pillow hands those to
# Ghostscript, an interpreter that would run on an untrusted file), no format a plugin decodes with another program
DECODERS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM")


def _bytes_of(source: str | Path | bytes, where: str | Path) -> bytes:
    if not isinstance(source, bytes):
        if not Path(source).is_file():
            raise ToolkitError(f"{where}: file not found")
        source = Path(source).read_bytes()
    if not source:
        raise ToolkitError(f"{where}: empty file, not an image")
    return source


@contextlib.contextmanager
def opened(source: str | Path | bytes, where: str | Path, decode: bool = True) -> Iterator[Any]:
    """The image in `source` (a path, or the file's bytes read from `where`) opened by one of DECODERS only, its
    size checked before any pixel is decoded (decompression bombs), then decoded and upright by its EXIF
    orientation (with `decode=False`, only its header is read). Whatever is wrong with the file is one line
    naming it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    blob = _bytes_of(source, where)
    Image.MAX_IMAGE_PIXELS = None  # opening reads only the header: the size is checked below, with its WxH
    try:
        with Image.open(io.BytesIO(blob), formats=DECODERS) as img:
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own check again for what decoding may meet (GIF frames)
            if img.width * img.height > MAX_PIXELS:
                raise ToolkitError(f"{where}: image is {img.width}x{img.height}, larger than {MAX_PIXELS:,} pixels")
            if img.width == 0 or img.height == 0:
                raise ToolkitError(f"{where}: image has no pixels")
            if not decode:
                yield img
                return
            img.load()
            yield ImageOps.exif_transpose(img)
    except ToolkitError:
        raise
    except UnidentifiedImageError:
        raise ToolkitError(f"{where}: not an image ({', '.join(DECODERS)}) or a damaged one") from None
    except Image.DecompressionBombError:
        raise ToolkitError(f"{where}: image is larger than {MAX_PIXELS:,} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ToolkitError(f"{where}: damaged image ({first_line(e) or type(e).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def pixels(img, channels: int) -> np.ndarray:
    """A decoded image -> float64 pixels in [0, 255], (H, W) grey or (H, W, 3) RGB: the one conversion datasets and
    predict share. 16-bit and float images are scaled (never clipped to 0/255), 1-bit and palette images expanded,
    CMYK converted, and a drawing on a transparent canvas has its alpha as the ink (see to_grey)."""
    if channels == 1:
        return to_grey(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.repeat(to_grey(img)[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def uint8_image(a: np.ndarray):
    """Float pixels in [0, 255] -> a PIL image of uint8 ("L" or "RGB"), rounded."""
    from PIL import Image

    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


def load_image(path: str | Path, convert=None) -> np.ndarray:
    """Decode an image file (through `opened`) into a float grey array in [0, 255] (or, with `convert`, what
    `convert(PIL image)` makes of it)."""
    with opened(path, path) as img:
        return (convert or to_grey)(img)


def to_grey(img) -> np.ndarray:
    """A PIL image -> float64 grey array in [0, 255] (ink polarity not yet fixed)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a / top * 255.0, 0, 255)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        return np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255)
    if "A" in img.getbands() or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3]
        # real transparency (a drawing on a transparent canvas): the strokes are where the alpha is; a few
        # semi-transparent pixels at the edge of an opaque picture are not
        if np.mean(alpha < OPAQUE_ALPHA) >= TRANSPARENT_SHARE:
            return alpha
        return np.asarray(img.convert("L"), dtype=np.float64)
    return np.asarray(img.convert("L"), dtype=np.float64)


def normalise(grey: np.ndarray, source: str = "image") -> np.ndarray:
    """Grey array (any size) -> model input float32 (28, 28, 1) in [0, 1], MNIST-style."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2 or grey.size == 0:
        raise ToolkitError(f"{source}: expected a 2-D grey image, got shape {grey.shape}")
    if not np.isfinite(grey).all():
        raise ToolkitError(f"{source}: image contains NaN or infinity")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # dark digit on a light background
        grey = 255.0 - grey
    grey = grey - np.median(border if np.median(border) <= 127 else 255.0 - border)
    grey = np.clip(grey, 0, None)
    peak = grey.max()
    if peak <= 0:
        raise ToolkitError(f"{source}: no digit found (the image is blank)")
    ink = grey > INK_THRESHOLD * peak
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] / peak * 255.0
    box = _fit(crop, 20)
    return _centre(box)[..., np.newaxis].astype(np.float32) / 255.0


def _fit(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = crop.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(img, dtype=np.float64), 0, 255)


def _centre(box: np.ndarray, size: int = 28) -> np.ndarray:
    """Place `box` in a size x size black image with its centre of mass at the centre."""
    h, w = box.shape
    total = box.sum()
    ys, xs = np.indices(box.shape)
    cy, cx = (ys * box).sum() / total, (xs * box).sum() / total
    # MNIST's digits have their centre of mass at pixel (14, 14) (measured: mean 13.99, 14.01 on the test split)
    top, left = int(round(size / 2 - cy)), int(round(size / 2 - cx))
    top, left = min(max(top, 0), size - h), min(max(left, 0), size - w)
    out = np.zeros((size, size))
    out[top : top + h, left : left + w] = box
    return out


def prepare(path: str | Path) -> np.ndarray:
    """An image file -> the model's input (28, 28, 1) float32."""
    return normalise(load_image(path), str(path))


def resized(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file -> a model input of `shape` (H, W, C): grey (C = 1) or RGB (C = 3), resized (bilinear, no
    cropping) and scaled to [0, 1], as a model trained on an image folder expects."""
    from PIL import Image

    h, w, c = shape

    def convert(img):
        img = uint8_image(pixels(img, c)).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32).reshape(h, w, c) / 255.0

    return load_image(path, convert)


def prepare_for(path: str | Path, shape: tuple[int, ...], preprocessing: dict | None) -> np.ndarray:
    """The preprocessing the manifest records for the model: MNIST's digit steps where it says so (or, without a
    manifest, for a 28x28 grey model), else a plain resize to the model's input."""
    digit = "digit_centering" in preprocessing if preprocessing else tuple(shape) == (28, 28, 1)
    return prepare(path) if digit else resized(path, tuple(shape))
