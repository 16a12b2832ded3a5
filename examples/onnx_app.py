"""A minimal edge app: classify digits with an .onnx model using only onnxruntime and numpy.

    pip install onnxruntime numpy
    python onnx_app.py ../exported/manifest.json mnist_cnn.int8.onnx digits/*.pgm

The input and output names and the preprocessing come from the manifest. The ONNX models take float32
pixels / 255 (the int8 model quantizes inside the graph). Images: 28x28 grey PGM, white digit on black.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def read_pgm(path):
    """A binary (P5) 8-bit PGM file -> uint8 array (height, width). (Repeated in the other example on
    purpose: each example stands alone with only its runtime and numpy.)"""
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
    if fields[0] != b"P5" or int(fields[3]) > 255:
        raise ValueError(f"{path}: not an 8-bit binary PGM")
    width, height = int(fields[1]), int(fields[2])
    return np.frombuffer(data, dtype=np.uint8, count=width * height, offset=pos + 1).reshape(height, width)


def main(manifest_path, model_name, images):
    manifest = json.loads(Path(manifest_path).read_text())
    entry = manifest["artifacts"][model_name]
    labels = manifest["labels"]
    session = ort.InferenceSession(str(Path(manifest_path).parent / entry["file"]), providers=["CPUExecutionProvider"])
    batch = np.stack([read_pgm(p).astype(np.float32) / 255.0 for p in images])[..., np.newaxis]  # NHWC, pixels / 255
    (probabilities,) = session.run([entry["output"]["name"]], {entry["input"]["name"]: batch})
    for path, y in zip(images, probabilities):
        best = int(np.argmax(y))
        print(f"{path}: {labels[best]} ({y[best]:.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: onnx_app.py MANIFEST MODEL_FILE IMAGE.pgm...")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
