"""The reference CNN (the architecture is fixed: docs/training.md) and its work per image in FLOPs."""

from __future__ import annotations

import zipfile
from pathlib import Path

from toolkit.backend import keras as _keras
from toolkit.errors import ToolkitError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
LABELS = [str(d) for d in range(NUM_CLASSES)]
MODEL_NAME = "mnist_cnn"


def build_model(batch_size: int | None = None, output_dtype: str | None = None):
    """Build the reference CNN: 471,914 parameters (471,786 trainable).

    `batch_size` fixes the batch dimension (a web runtime that cannot resize needs 1); `output_dtype`
    keeps the softmax in float32 under a mixed-precision policy.
    """
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=INPUT_SHAPE, batch_size=batch_size, name="image")
    x = layers.Conv2D(32, 3, activation="relu", padding="valid", name="conv1")(inputs)
    x = layers.Conv2D(32, 3, activation="relu", padding="valid", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Dropout(0.25, name="dropout")(x)
    x = layers.Conv2D(32, 3, activation="relu", padding="valid", name="conv3")(x)
    x = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv4")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="dense1")(x)
    x = layers.Dense(64, activation="relu", name="dense2")(x)
    x = layers.BatchNormalization(name="batchnorm")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities", dtype=output_dtype)(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def with_fixed_batch(model, batch_size: int = 1):
    """The same network and weights on an input with a fixed batch (runtimes that cannot resize a batch need it:
    LiteRT.js, and microcontrollers, where a dynamic batch adds SHAPE/STRIDED_SLICE/PACK operators)."""
    copy = build_model(batch_size=batch_size)
    copy.set_weights(model.get_weights())
    return copy


def count_params(model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.trainable_weights)
    non_trainable = sum(
        int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.non_trainable_weights
    )
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def flops_per_image(model) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts as 2), from the layer shapes."""
    return sum(flops_by_layer(model).values())


def flops_by_layer(model) -> dict[str, int]:
    """Each layer's floating-point operations in one forward pass (a multiply-add counts as 2).

    Convolutions and dense layers (the multiply-adds that dominate), plus bias adds, activations, pooling
    comparisons and batch-norm scale/shift; dropout and flatten cost nothing at inference.
    """
    flops = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        out_size = 1
        for d in layer.output.shape[1:]:
            out_size *= int(d)
        total = 0
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            cin = int(layer.input.shape[-1])
            total += 2 * kh * kw * cin * out_size + out_size  # multiply-adds + bias
            total += out_size if layer.activation.__name__ != "linear" else 0
        elif kind == "Dense":
            cin = int(layer.input.shape[-1])
            total += 2 * cin * out_size + out_size
            if layer.activation.__name__ == "softmax":
                total += 3 * out_size  # exp, sum, divide
            elif layer.activation.__name__ != "linear":
                total += out_size
        elif kind == "MaxPooling2D":
            ph, pw = layer.pool_size
            total += (ph * pw - 1) * out_size
        elif kind == "BatchNormalization":
            total += 2 * out_size  # folded into a scale and a shift at inference
        flops[layer.name] = total
    return flops


def load_keras_model(path: str | Path):
    """Load a `.keras` file in safe mode (no code from the file runs), with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: model file not found; run `toolkit train` first or pass --model")
    if path.stat().st_size == 0:
        raise ToolkitError(f"{path}: empty file, not a Keras model")
    if not zipfile.is_zipfile(path):
        raise ToolkitError(f"{path}: not a Keras .keras archive (not a zip file)")
    keras = _keras()
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for malformed archives
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ToolkitError(f"{path}: cannot load as a Keras model ({msg[:200]})") from None
