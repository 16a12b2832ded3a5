"""A minimal edge app: classify images (here: digits) with an .onnx model using only onnxruntime and numpy.

    pip install onnxruntime numpy
    python onnx_app.py ../exported/manifest.json mnist_cnn.int8.onnx digits/*.pgm

The input and output names, the input's size and channels, the labels and the preprocessing come from the
manifest. The ONNX models take float32 inputs made from pixels by the manifest's `input_contract` (pixel / 255 for
the reference model; the int8 model quantizes inside the graph). Images: PGM (grey) or PPM (RGB), resized to the
model's input where they differ; the digits here are 28x28 grey PGM files, white on black. At start-up the app
runs the manifest's self-check images and refuses a model whose answers differ from the ones the toolkit recorded
for that file.
"""

import base64
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def read_pgm(path):
    """A binary 8-bit PGM (P5, grey) or PPM (P6, RGB) file -> uint8 array (height, width[, 3]). (Repeated in the
    other example on purpose: each example stands alone with only its runtime and numpy.)"""
    data = Path(path).read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] not in (b"P5", b"P6") or int(fields[3]) > 255:
        raise ValueError(f"{path}: not an 8-bit binary PGM or PPM")
    width, height, depth = int(fields[1]), int(fields[2]), 3 if fields[0] == b"P6" else 1
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height * depth, offset=pos + 1)
    return pixels.reshape(height, width, 3) if depth == 3 else pixels.reshape(height, width)


def scaled(x, contract):
    """Pixels (..., C), 0-255 -> the model's input by the manifest's input contract: (pixel - mean) / std per
    channel, in the model's channel order (pixel / 255 for a manifest that records none)."""
    c = contract or {"mean": [0.0], "std": [255.0], "channel_order": "RGB"}
    if x.shape[-1] == 3 and c.get("channel_order") == "BGR":
        x = x[..., ::-1]
    return ((x - np.asarray(c["mean"], np.float32)) / np.asarray(c["std"], np.float32)).astype(np.float32)


def to_input(pixels, shape, contract=None):
    """uint8 pixels -> the model's input (1, H, W, C) as the manifest's preprocessing says: channels made the
    model's (grey <-> RGB), a bilinear resize to H x W where the size differs, then the input contract."""
    height, width, channels = shape
    x = pixels.astype(np.float32)
    if x.ndim == 2 and channels == 3:
        x = np.repeat(x[..., None], 3, axis=2)
    elif x.ndim == 3 and channels == 1:
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = x.reshape(x.shape[0], x.shape[1], channels)
    if x.shape[:2] != (height, width):
        ys = np.clip((np.arange(height) + 0.5) * x.shape[0] / height - 0.5, 0, x.shape[0] - 1)
        xs = np.clip((np.arange(width) + 0.5) * x.shape[1] / width - 0.5, 0, x.shape[1] - 1)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, x.shape[0] - 1), np.minimum(x0 + 1, x.shape[1] - 1)
        wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
        bottom = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
        x = top * (1 - wy) + bottom * wy
    return scaled(x, contract)[None]


def self_check(manifest, entry, probabilities_of):
    """Before any real input: run the manifest's self-check images and refuse the model if an answer differs from
    what the toolkit measured for this very file (a damaged download, a wrong runtime build, a changed file).
    `probabilities_of(pixels)` takes uint8 images (N, H, W, C) at the model's size."""
    images, expected = manifest.get("self_check"), (entry.get("verification") or {}).get("self_check")
    if not images or not expected:
        print("note: no self-check vectors in the manifest (run `toolkit verify`); not checked", file=sys.stderr)
        return
    pixels = np.frombuffer(base64.b64decode(images["pixels_uint8_base64"]), np.uint8).reshape(images["shape"])
    got, want = probabilities_of(pixels), np.asarray(expected["expected"], np.float32)
    for i, (g, w) in enumerate(zip(got, want)):
        if int(np.argmax(g)) != int(np.argmax(w)) or float(np.max(np.abs(g - w))) > expected["tolerance"]:
            sys.exit(
                f"self-check failed on test image {images['test_images'][i]}: class {int(np.argmax(g))} "
                f"p={float(np.max(g)):.4f}, expected class {int(np.argmax(w))} p={float(np.max(w)):.4f} "
                f"(tolerance {expected['tolerance']}); refusing {entry['file']}"
            )
    print(f"self-check: {len(want)} images as expected", file=sys.stderr)


def main(manifest_path, model_name, images):
    manifest = json.loads(Path(manifest_path).read_text())
    entry = manifest["artifacts"][model_name]
    labels = manifest["labels"]
    session = ort.InferenceSession(str(Path(manifest_path).parent / entry["file"]), providers=["CPUExecutionProvider"])
    shape = entry["input"]["shape"][1:]  # (H, W, C) of this model
    feed, fetch = entry["input"]["name"], entry["output"]["name"]
    contract = manifest.get("input_contract")
    self_check(manifest, entry, lambda px: session.run([fetch], {feed: scaled(px.astype(np.float32), contract)})[0])
    batch = np.concatenate([to_input(read_pgm(p), shape, contract) for p in images])  # NHWC, the model's size
    (probabilities,) = session.run([fetch], {feed: batch})
    for path, y in zip(images, probabilities):
        best = int(np.argmax(y))
        print(f"{path}: {labels[best]} ({y[best]:.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: onnx_app.py MANIFEST MODEL_FILE IMAGE.pgm...")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
