"""The browser's preprocessing (toolkit/web/site/preprocess.mjs) gives the same model input as toolkit.preprocess.

Drawings like a user's (thick round-jointed strokes, several canvas sizes, both polarities, transparent canvases,
anti-aliased grey strokes, noisy backgrounds) and real MNIST digits are preprocessed by ONE node process and
compared with `normalise(to_grey(Image.fromarray(rgba, "RGBA")))`. Node is required: the tests fail without it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from toolkit.errors import ToolkitError
from toolkit.preprocess import normalise, to_grey

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "toolkit" / "web" / "site" / "preprocess.mjs"
TOLERANCE = 1e-5

# Values fed to roundHalfEven, and Python's answers: the ties are where Math.round would differ.
ROUNDING = [
    0.5,
    1.5,
    2.5,
    3.5,
    6.5,
    7.5,
    10.5,
    12.5,
    -0.5,
    -1.5,
    -2.5,
    2.4999999999999996,
    0.49999999999999994,
    13.0,
    4.2,
    5.8,
]

# A node script: for each image, toGrey and preprocessRGBA (or the error's message), all written back at once.
NODE_SCRIPT = """
import { readFileSync, writeFileSync } from "node:fs";
import { toGrey, preprocessRGBA, roundHalfEven } from %(module)s;
const dir = %(dir)s;
const { images, rounding } = JSON.parse(readFileSync(dir + "/images.json", "utf8"));
const pixels = readFileSync(dir + "/images.bin");
const outs = [], greys = [], errors = [];
for (const { width, height, offset } of images) {
  const rgba = new Uint8Array(pixels.buffer, pixels.byteOffset + offset, width * height * 4);
  greys.push(Buffer.from(toGrey(rgba, width, height).buffer));
  try {
    outs.push(Buffer.from(preprocessRGBA(rgba, width, height).buffer));
    errors.push(null);
  } catch (e) {
    outs.push(Buffer.alloc(784 * 4));
    errors.push(String(e.message));
  }
}
writeFileSync(dir + "/out.bin", Buffer.concat(outs));
writeFileSync(dir + "/grey.bin", Buffer.concat(greys));
writeFileSync(dir + "/results.json", JSON.stringify({ errors, rounding: rounding.map(roundHalfEven) }));
"""


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the project needs node (v20+) to test its browser preprocessing")
    return node


def _strokes(rng, width: int, height: int, scale: int = 1) -> list[tuple[list[tuple[float, float]], int]]:
    """1-3 random polylines of 2-5 points, like a digit drawn with a thick round brush (width 8-30 at 280 px)."""
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(2, 6))
        margin = 0.15
        xs = rng.uniform(margin, 1 - margin, n) * width * scale
        ys = rng.uniform(margin, 1 - margin, n) * height * scale
        brush = max(2, round(int(rng.integers(8, 31)) * min(width, height) / 280)) * scale
        strokes.append((list(zip(xs.tolist(), ys.tolist())), brush))
    return strokes


def _draw(img: Image.Image, strokes, fill) -> Image.Image:
    draw = ImageDraw.Draw(img)
    for points, brush in strokes:
        draw.line(points, fill=fill, width=brush, joint="curve")
        for x, y in (points[0], points[-1]):  # round caps
            r = brush / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    return img


def _rgba(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()


def _drawings() -> dict[str, np.ndarray]:
    images = {}
    sizes = [(280, 280), (200, 320), (64, 64), (28, 28), (500, 120)]
    for seed in range(2):
        for w, h in sizes:
            rng = np.random.default_rng(1000 * seed + w + h)
            tag = f"{w}x{h}-s{seed}"
            strokes = _strokes(rng, w, h)
            # (a) white on an opaque black canvas
            images[f"white-on-black-{tag}"] = _rgba(
                _draw(Image.new("RGBA", (w, h), (0, 0, 0, 255)), strokes, (255, 255, 255, 255))
            )
            # (b) black on an opaque white canvas: inverted
            images[f"black-on-white-{tag}"] = _rgba(
                _draw(Image.new("RGBA", (w, h), (255, 255, 255, 255)), _strokes(rng, w, h), (0, 0, 0, 255))
            )
            # (c) coloured opaque strokes on a transparent canvas: the alpha is the ink
            colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
            images[f"transparent-{tag}"] = _rgba(
                _draw(Image.new("RGBA", (w, h), (0, 0, 0, 0)), _strokes(rng, w, h), colour)
            )
            # (d) anti-aliased grey strokes: drawn at 4x, reduced (edges get intermediate greys)
            level = int(rng.integers(120, 256))
            big = _draw(Image.new("L", (4 * w, 4 * h), 0), _strokes(rng, w, h, scale=4), level)
            grey = np.asarray(big.resize((w, h), Image.Resampling.BOX), dtype=np.uint8)
            images[f"antialiased-grey-{tag}"] = _rgba(Image.fromarray(grey, "L"))
            # noisy light background with dark coloured strokes: background median subtracted, inverted
            noisy = _draw(
                Image.new("RGB", (4 * w, 4 * h), (235, 225, 210)), _strokes(rng, w, h, scale=4), (40, 30, 120)
            )
            arr = np.asarray(noisy.resize((w, h), Image.Resampling.LANCZOS), dtype=np.int16)
            arr = np.clip(arr + rng.integers(-20, 21, arr.shape), 0, 255).astype(np.uint8)
            images[f"noisy-light-{tag}"] = _rgba(Image.fromarray(arr, "RGB"))
    # opaque (alpha 250-255) but not 255, and one stray alpha of 249 (under 1% of the pixels): both the luminance path
    base = images["white-on-black-280x280-s0"].copy()
    base[..., 3] = np.random.default_rng(5).integers(250, 256, base.shape[:2])
    images["alpha-250-255"] = base
    edge = images["black-on-white-64x64-s0"].copy()
    edge[..., 3] = 255
    edge[0, 0, 3] = 249
    images["alpha-one-249"] = edge
    # every kind of colour, for the luminance formula (also a noisy image to normalise)
    images["random-colours"] = np.random.default_rng(7).integers(0, 256, (256, 256, 4), dtype=np.uint8) | np.array(
        [0, 0, 0, 255], np.uint8
    )
    # real MNIST digits (28x28 PGM)
    for path in sorted((REPO / "examples" / "digits").glob("*.pgm")):
        with Image.open(path) as img:
            images[f"mnist-{path.stem}"] = _rgba(img)
    return images


# Filled white rectangles (w x h) on black whose fitted size hits x.5 in Python's round (ties to even),
# where JavaScript's Math.round would round up: 5x8 -> 12.5x20 -> 12 (not 13), 13x40 -> 6.5x20 -> 6 (not 7).
RECTANGLES = {
    "5x8": (5, 8),
    "13x40": (13, 40),
    "21x40": (21, 40),
    "3x8": (3, 8),
    "8x5": (8, 5),
    "1x8": (1, 8),
    "40x13": (40, 13),
}


def _rectangles() -> dict[str, np.ndarray]:
    images = {}
    for name, (w, h) in RECTANGLES.items():
        canvas = np.zeros((64, 64, 4), np.uint8)
        canvas[..., 3] = 255
        canvas[10 : 10 + h, 7 : 7 + w, :3] = 255
        images[f"tie-{name}"] = canvas
    return images


BLANK = {
    "blank-black": np.tile(np.array([0, 0, 0, 255], np.uint8), (40, 30, 1)),
    "blank-white": np.tile(np.array([255, 255, 255, 255], np.uint8), (30, 40, 1)),
    "blank-transparent": np.zeros((28, 28, 4), np.uint8),
    "blank-grey": np.tile(np.array([128, 128, 128, 255], np.uint8), (20, 20, 1)),
}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """Every image, and what preprocess.mjs made of it (one node process for all)."""
    node = _node()
    assert MODULE.is_file(), f"{MODULE} is missing"
    images = {**_drawings(), **_rectangles(), **BLANK}
    folder = tmp_path_factory.mktemp("web-preprocess")
    manifest, offset = [], 0
    with open(folder / "images.bin", "wb") as f:
        for name, rgba in images.items():
            assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4, name
            f.write(np.ascontiguousarray(rgba).tobytes())
            manifest.append({"name": name, "width": rgba.shape[1], "height": rgba.shape[0], "offset": offset})
            offset += rgba.size
    (folder / "images.json").write_text(json.dumps({"images": manifest, "rounding": ROUNDING}))
    script = folder / "run.mjs"
    script.write_text(NODE_SCRIPT % {"module": json.dumps(MODULE.as_uri()), "dir": json.dumps(str(folder))})
    proc = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"node failed ({proc.returncode}):\n{proc.stderr}"
    results = json.loads((folder / "results.json").read_text())
    outs = np.fromfile(folder / "out.bin", dtype="<f4").reshape(len(images), 28, 28)
    greys_flat = np.fromfile(folder / "grey.bin", dtype="<f8")
    greys, start = {}, 0
    for item in manifest:
        n = item["width"] * item["height"]
        greys[item["name"]] = greys_flat[start : start + n].reshape(item["height"], item["width"])
        start += n
    assert start == greys_flat.size
    js = {name: (outs[i], results["errors"][i]) for i, name in enumerate(images)}
    return images, js, greys, results["rounding"]


def _python(rgba: np.ndarray) -> np.ndarray:
    return normalise(to_grey(Image.fromarray(rgba, "RGBA")))[..., 0]


def test_matches_python_preprocessing(web):
    images, js, _, _ = web
    diffs = {}
    for name, rgba in images.items():
        if name in BLANK:
            continue
        out, error = js[name]
        assert error is None, f"{name}: preprocess.mjs threw {error!r}"
        diffs[name] = float(np.abs(out.astype(np.float64) - _python(rgba)).max())
    worst = max(diffs, key=diffs.get)
    print(f"\n{len(diffs)} images, worst max|JS - Python| = {diffs[worst]:.3g} ({worst})")
    assert len(diffs) >= 40
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    assert not bad, f"preprocess.mjs differs from toolkit.preprocess by more than {TOLERANCE}: {bad}"


def test_grey_matches_to_grey_exactly(web):
    images, _, greys, _ = web
    paths = set()
    for name, rgba in images.items():
        expected = to_grey(Image.fromarray(rgba, "RGBA"))
        assert greys[name].shape == expected.shape, name
        assert np.array_equal(greys[name], expected), f"{name}: toGrey differs from to_grey"
        paths.add("alpha" if (rgba[..., 3] < 250).mean() >= 0.01 else "luminance")
    assert paths == {"alpha", "luminance"}  # both branches were exercised


def test_blank_images_are_refused(web):
    images, js, _, _ = web
    for name in BLANK:
        _, error = js[name]
        assert error is not None and "no digit found" in error, f"{name}: expected 'no digit found', got {error!r}"
        with pytest.raises(ToolkitError, match="no digit found"):
            _python(images[name])


def test_round_half_to_even(web):
    _, js, _, rounding = web
    assert rounding == [round(x) for x in ROUNDING]
    half_up_differs = 0
    for name, (w, h) in RECTANGLES.items():
        scale = 20 / max(w, h)
        short = min(w, h) * scale
        assert short % 1 == 0.5, f"{name}: not a tie ({short})"  # the test is about ties
        expected = round(short)
        half_up_differs += expected != math.floor(short + 0.5)
        out, error = js[f"tie-{name}"]
        assert error is None, error
        # a constant rectangle stays constant when resized: the ink is exactly the fitted box
        rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
        fitted = (len(rows), len(cols)) if w < h else (len(cols), len(rows))
        assert fitted == (20, expected), f"{name}: fitted to {fitted}, Python's round gives {expected}"
        python = _python(_rectangles()[f"tie-{name}"])
        assert np.abs(out - python).max() <= TOLERANCE, name
    assert half_up_differs >= 4  # where Math.round would have given another size
