"""A minimal edge app: classify digits with the int8 .tflite using only ai-edge-litert and numpy.

    pip install ai-edge-litert numpy
    python litert_app.py ../exported/manifest.json mnist_cnn.int8.tflite digits/*.pgm

Everything the app needs comes from the manifest: the file, the input and output tensors, their int8
scale and zero point, and the preprocessing. The images here are 28x28 grey PGM files, already white on
black and centred as MNIST's are (see MODEL_CARD.md for preparing photos and drawings).
"""

import json
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def read_pgm(path):
    """A binary (P5) 8-bit PGM file -> uint8 array (height, width). (Repeated in the other example on
    purpose: each example stands alone with only its runtime and numpy.)"""
    data = Path(path).read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:  # magic, width, height, maxval, with comments skipped
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
    interpreter = Interpreter(model_path=str(Path(manifest_path).parent / entry["file"]))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [1, 28, 28, 1])
    interpreter.allocate_tensors()
    q_in, q_out = entry["input"]["quantization"], entry["output"]["quantization"]
    for path in images:
        x = (read_pgm(path).astype(np.float32) / 255.0).reshape(1, 28, 28, 1)  # preprocessing: pixels / 255, NHWC
        if q_in:  # int8 input: q = round(x / scale) + zero_point
            x = np.clip(np.round(x / q_in["scale"]) + q_in["zero_point"], -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if q_out:  # int8 output: probability = (q - zero_point) * scale
            y = (y.astype(np.float32) - q_out["zero_point"]) * q_out["scale"]
        best = int(np.argmax(y))
        print(f"{path}: {labels[best]} ({y[best]:.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: litert_app.py MANIFEST MODEL_FILE IMAGE.pgm...")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
