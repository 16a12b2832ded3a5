"""Keras models: the reference CNN (its architecture is fixed: docs/training.md), the interface every image
classifier must have to go through the toolkit (checked before any conversion, one line when it does not), the
same network on a fixed batch, and the work per image in FLOPs counted from the model's own layers."""

from __future__ import annotations

import json
import re
import unicodedata
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Interface:
    """What the toolkit needs to know of an image classifier, read from the model itself."""

    name: str  # the model's name, made a safe file-name stem
    input_shape: tuple[int, int, int]  # height, width, channels
    classes: int
    output: str  # PROBABILITIES, or LOGITS (exports then end in an added softmax)

    @property
    def channels(self) -> int:
        return self.input_shape[2]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape)}


PROBABILITIES, LOGITS = "probabilities", "logits"
NO_LAYER = "(no layer: layout, shapes)"  # a converted node that belongs to no Keras layer
MIN_SIDE, MAX_SIDE = 8, 256  # image sides the toolkit accepts (microcontroller arenas and web pads beyond)
CHANNELS = (1, 3)  # grayscale or RGB


def file_stem(name: str) -> str:
    """A model name as a file-name stem and C identifier part: ASCII letters, digits and underscores (accents are
    dropped, other scripts too), so that every tool reads the files back and every compiler takes the symbols."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    return stem or "model"


def title_of(path: str | Path) -> str | None:
    """The model's own name as its `.keras` file writes it (config.json), which may be one TensorFlow refuses and
    every load renames (`with_runnable_names`): the name the manifest and card show the user. None where the file
    does not say."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = json.loads(archive.read("config.json")).get("config", {}).get("name")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _output_kind(model, where: str) -> str:
    """Whether the model ends in a softmax (probabilities) or in logits (a linear last layer)."""
    last = model.layers[-1]
    kind = type(last).__name__
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if kind == "Softmax" or activation == "softmax":
        return PROBABILITIES
    if kind == "Activation" and activation != "linear" or activation not in (None, "linear"):
        raise ToolkitError(
            f"{where}: its last layer {last.name!r} ends in {activation}, not softmax: the toolkit needs class "
            "probabilities (softmax) or logits (a linear last layer)"
        )
    return LOGITS


def interface_of(model, where: str | Path = "model", logits: str = "wrap") -> Interface:
    """Check that `model` is an image classifier the toolkit can take, and describe it; a one-line ToolkitError
    naming `where` otherwise. With `logits="refuse"`, a model ending in logits is refused instead of wrapped."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ToolkitError(
            f"{where}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); an image "
            "classifier has one image input and one class output"
        )
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ToolkitError(f"{where}: input shape {shape} is not an image batch (batch, height, width, channels)")
    h, w, c = shape[1:]
    if c not in CHANNELS:
        raise ToolkitError(f"{where}: input has {c} channels; the toolkit takes 1 (grayscale) or 3 (RGB)")
    if not all(isinstance(s, int) and MIN_SIDE <= s <= MAX_SIDE for s in (h, w)):
        raise ToolkitError(f"{where}: input size {h}x{w} is not fixed between {MIN_SIDE} and {MAX_SIDE} pixels")
    out = tuple(model.outputs[0].shape)
    if len(out) != 2 or not isinstance(out[1], int) or out[1] < 2:
        raise ToolkitError(
            f"{where}: output shape {out} is not (batch, classes) with at least 2 classes: not a classifier "
            "(a regression or a one-unit head?)"
        )
    kind = _output_kind(model, where)
    if kind == LOGITS and logits == "refuse":
        raise ToolkitError(
            f"{where}: its last layer {model.layers[-1].name!r} outputs logits, not probabilities (pass "
            "--logits wrap to add a softmax to every export)"
        )
    return Interface(file_stem(model.name), (h, w, c), out[1], kind)


def check_fits(interface: Interface, image_shape: tuple, classes: int, data: str, where: str | Path) -> None:
    """The data's images and classes are the model's (checked before any conversion or training)."""
    if tuple(image_shape) != interface.input_shape:
        raise ToolkitError(
            f"{where}: the model takes {'x'.join(map(str, interface.input_shape))} images, the data ({data}) has "
            f"{'x'.join(map(str, image_shape))}; pass --image-size or data of the model's size"
        )
    if classes != interface.classes:
        raise ToolkitError(f"{where}: the model has {interface.classes} classes, the data ({data}) {classes}")


def with_probabilities(model):
    """The model with a softmax after its logits, so that every export gives probabilities."""
    keras = _keras()
    outputs = keras.layers.Softmax(name="added_softmax")(model.outputs[0])
    return keras.Model(model.inputs[0], outputs, name=model.name)


def with_fixed_batch(model, batch_size: int = 1):
    """The same graph and weights on an input with a fixed batch (runtimes that cannot resize a batch need it:
    LiteRT.js, and microcontrollers, where a dynamic batch adds SHAPE/STRIDED_SLICE/PACK operators). Keras clones
    the user's own functional or sequential graph onto the new input."""
    keras = _keras()
    name = model.inputs[0].name
    shape = (batch_size, *model.inputs[0].shape[1:])
    inputs = keras.Input(batch_shape=shape, name="image" if name.startswith("keras_tensor") else name)
    sequential = type(model).__name__ == "Sequential"  # a Sequential built in memory has no `input` until called
    structured = [inputs] if not sequential and isinstance(model.input, list) else inputs  # the model's structure
    copy = keras.models.clone_model(model, input_tensors=structured)
    copy.set_weights(model.get_weights())
    return copy


def _links(model) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each top-level layer's producers and consumers, by name, from the model's config (a Sequential model in
    its order): what the graph rewrite below needs to know that a tensor feeds one layer only."""
    names = [l.name for l in model.layers]
    producers: dict[str, list[str]] = {n: [] for n in names}
    if type(model).__name__ == "Sequential":
        producers.update({b: [a] for a, b in zip(names, names[1:])})
    else:

        def histories(node) -> list[str]:
            if isinstance(node, dict):
                found = [node["keras_history"][0]] if "keras_history" in node else []
                return found + [h for v in node.values() for h in histories(v)]
            return [h for v in node for h in histories(v)] if isinstance(node, (list, tuple)) else []

        for layer in model.get_config()["layers"]:
            if layer["name"] in producers:
                producers[layer["name"]] = [n for n in histories(layer.get("inbound_nodes", [])) if n in producers]
    consumers: dict[str, list[str]] = {n: [] for n in names}
    for name, sources in producers.items():
        for source in sources:
            consumers[source].append(name)
    return producers, consumers


def _activation(layer) -> str | None:
    """'relu' or 'linear' for a layer whose output is its weights' output passed through that, else None."""
    keras = _keras()
    if isinstance(layer, keras.layers.ReLU):
        plain = layer.max_value is None and not layer.negative_slope and not layer.threshold
        return "relu" if plain else None
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in ("relu", "linear") else None


def _around(norm, by_name: dict, producers: dict, consumers: dict):
    """(the Dense or Conv2D before, the one after) when `norm` is a BatchNormalization that equalization can move
    gain across: the layer before feeds it alone, through exactly one ReLU (its own activation or a ReLU layer),
    with matching channels; else None."""
    keras = _keras()
    weighted = (keras.layers.Dense, keras.layers.Conv2D)
    if not (isinstance(norm, keras.layers.BatchNormalization) and norm.scale and norm.center):
        return None
    chain = [norm.name]
    while len(producers[chain[0]]) == 1 and len(chain) < 3:
        before = by_name[producers[chain[0]][0]]
        if consumers[before.name] != [chain[0]]:
            break
        chain.insert(0, before.name)
        if isinstance(before, weighted):
            break
    first, after = by_name[chain[0]], [by_name[n] for n in consumers[norm.name]]
    acts = [_activation(by_name[n]) for n in chain[:-1]]
    if not (isinstance(first, weighted) and None not in acts and sorted(acts) in (["relu"], ["linear", "relu"])):
        return None
    if len(after) != 1 or not isinstance(after[0], weighted):
        return None
    channels = norm.weights[0].shape[0]
    if first.kernel.shape[-1] != channels or after[0].kernel.shape[-2] != channels:
        return None
    return first, after[0]


def equalize_batchnorm_scales(model) -> list[dict[str, Any]]:
    """Cross-layer equalization (Nagel et al., 2019, "Data-free quantization") around a BatchNormalization between
    ReLU units and the next layer, in place and exact: a Dense or Conv2D with ReLU (or followed by one), then
    BatchNormalization, then a Dense or Conv2D. Converters fold the normalisation's per-channel gain into the next
    layer's weights, where a unit that rarely or never fires has the largest gain (its variance is about 0, its
    gain up to 1/sqrt(epsilon)) and sets the int8 scale of every output channel. Since relu(a z) = a relu(z) for
    a > 0, part of each gain moves into the layer before: each channel's weight ranges in the two layers become
    equal (the geometric mean of both). Measured on reference CNNs trained with `--all-data`: their full-integer
    files lost 1.23 and 0.25 pp (LiteRT) and 4.51 and 1.54 pp (ONNX Runtime) before, at most 0.06 pp after.
    Returns what was changed, per normalisation layer."""
    import numpy as np

    try:
        producers, consumers = _links(model)
    except (AttributeError, KeyError, TypeError, ValueError):  # a subclassed model has no graph to read
        return []
    by_name = {l.name: l for l in model.layers}
    changed = []
    for norm in model.layers:
        ends = _around(norm, by_name, producers, consumers)
        if ends is None:
            continue
        first, after = ends
        kernel, *bias = (w.numpy() for w in first.weights[: 2 if first.use_bias else 1])
        gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in norm.weights[:4])
        gain = gamma / np.sqrt(var + norm.epsilon)
        nxt = np.moveaxis(np.abs(after.kernel.numpy()), -2, 0).reshape(len(gain), -1).max(1)
        r1, r2 = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0), nxt * np.abs(gain)
        a = np.where((r1 > 0) & (r2 > 0), np.sqrt(r2 / np.where(r1 > 0, r1, 1)), 1.0)
        first.kernel.assign((kernel * a).astype(kernel.dtype))
        if bias:
            first.bias.assign((bias[0] * a).astype(bias[0].dtype))
        for w, value in zip(norm.weights[:4], (gain / a, beta - gain * mean, 0 * mean, 0 * var + 1 - norm.epsilon)):
            w.assign(value.astype("float32"))
        changed.append({"layer": norm.name, "before": first.name, "after": after.name, "channels": len(gain)})
    return changed


def count_params(model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.trainable_weights)
    non_trainable = sum(
        int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.non_trainable_weights
    )
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def flops_per_image(model) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts as 2), from the layer shapes."""
    return sum(flops_by_layer(model).values())


def _size(shape) -> int:
    size = 1
    for d in shape[1:]:
        size *= int(d)
    return size


def _activation_flops(layer, out_size: int) -> int:
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return 3 * out_size if name == "softmax" else 0 if name == "linear" else out_size


def _layer_flops(layer) -> int:  # noqa: C901 (one branch per layer kind reads better than a table of lambdas)
    """One layer's floating-point operations per image (a multiply-add counts as 2)."""
    kind = type(layer).__name__
    out_size = _size(layer.output.shape)
    if kind in ("Conv2D", "Dense"):
        per_output = int(layer.input.shape[-1]) * (
            layer.kernel_size[0] * layer.kernel_size[1] if kind == "Conv2D" else 1
        )
        per_output //= getattr(layer, "groups", 1)
        return 2 * per_output * out_size + out_size * layer.use_bias + _activation_flops(layer, out_size)
    if kind == "DepthwiseConv2D":
        kh, kw = layer.kernel_size
        return 2 * kh * kw * out_size + out_size * layer.use_bias + _activation_flops(layer, out_size)
    if kind == "SeparableConv2D":
        kh, kw = layer.kernel_size
        cin, multiplier = int(layer.input.shape[-1]), layer.depth_multiplier
        spatial = out_size // int(layer.output.shape[-1])
        depthwise = 2 * kh * kw * cin * multiplier * spatial
        pointwise = 2 * cin * multiplier * out_size
        return depthwise + pointwise + out_size * layer.use_bias + _activation_flops(layer, out_size)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        ph, pw = layer.pool_size
        return (ph * pw - 1) * out_size + (out_size if kind == "AveragePooling2D" else 0)
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return _size(layer.input.shape) + (out_size if kind == "GlobalAveragePooling2D" else 0)
    if kind in ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"):
        return (len(layer.input) - 1) * out_size
    if kind in ("BatchNormalization", "Rescaling", "LayerNormalization"):
        return 2 * out_size  # a scale and a shift at inference
    if kind == "Softmax":
        return 3 * out_size  # exp, sum, divide
    if kind in ("Activation", "ReLU", "LeakyReLU", "ELU", "PReLU"):
        return _activation_flops(layer, out_size) if kind == "Activation" else out_size
    return 0  # Input, Flatten, Reshape, Dropout, Concatenate, ...: no arithmetic at inference


def flops_by_layer(model) -> dict[str, int]:
    """Each layer's floating-point operations in one forward pass (a multiply-add counts as 2), from the model's own
    layers and shapes: convolutions (plain, depthwise, separable) and dense layers (the multiply-adds that dominate),
    bias adds, activations, pooling, element-wise merges, normalisation; a nested model counts its own layers."""
    flops: dict[str, int] = {}
    for layer in model.layers:
        if hasattr(layer, "layers") and type(layer).__name__ in ("Functional", "Sequential", "Model"):
            flops.update(flops_by_layer(layer))
        elif type(layer).__name__ != "InputLayer":
            flops[layer.name] = _layer_flops(layer)
    return flops


def layer_of(node: str, layers: list[str]) -> str:
    """The Keras layer a node came from (`mnist_cnn_1/conv2_1/Relu:0_nchwc` -> conv2), or NO_LAYER."""
    ordered = sorted(layers, key=len, reverse=True)
    # Keras traces a layer under its name plus a call suffix (conv2 -> conv2_1): that form first, so that the node
    # `dense_1/MatMul` is the layer `dense` and `dense_1_1/MatMul` the layer `dense_1`; then the bare name
    for pattern in (r"_\d+/", "/"):
        for name in ordered:
            if re.search(rf"(?:^|[/ ]){re.escape(name)}{pattern}", node):
                return name
    return NO_LAYER


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
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for malformed archives
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        custom = re.search(r"Could not locate class '([^']+)'", str(e))
        if custom:  # safe mode runs no code from the file, so a layer written in Python cannot be rebuilt
            raise ToolkitError(
                f"{path}: the custom layer {custom.group(1)!r} cannot be rebuilt without its Python code; the toolkit "
                "takes models made of Keras' built-in layers"
            ) from None
        raise ToolkitError(f"{path}: cannot load as a Keras model ({msg[:200]})") from None
    return with_runnable_names(model)


# TensorFlow runs each layer in a name scope of its name, and refuses names outside this pattern: a model named
# "my model" or with a layer "conv ü" cannot even be called on the TensorFlow backend, let alone converted
SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def _scope_name(name: str, used: set[str]) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()  # ü -> u, as file_stem
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ascii_name)
    safe = safe if re.match(r"[A-Za-z0-9.]", safe) else f"m{safe}"
    unique, k = safe, 1
    while unique in used:
        unique, k = f"{safe}_{k}", k + 1
    used.add(unique)
    return unique


def with_runnable_names(model):
    """The model itself, or where a name of it (the model, a layer, an input) is one TensorFlow refuses as a name
    scope, the same layers and weights rebuilt under names it takes (spaces, accents, `<>`, newlines become `_`).
    The user's file keeps its names; every load makes the same renamed model, so files and checks agree."""
    names = [model.name, *(layer.name for layer in model.layers), *(t.name for t in model.inputs)]
    if all(SCOPE_NAME.match(n) for n in names):
        return model
    keras, used = _keras(), set()

    def renamed(layer):
        return layer.__class__.from_config({**layer.get_config(), "name": _scope_name(layer.name, used)})

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=_scope_name(t.name, used)) for t in model.inputs]
    name = _scope_name(model.name, used)
    if isinstance(model, keras.Sequential):
        clone = keras.Sequential([inputs[0], *(renamed(layer) for layer in model.layers)], name=name)
    else:
        graph = keras.models.clone_model(
            model, input_tensors=inputs if isinstance(model.input, list | tuple) else inputs[0], clone_function=renamed
        )
        clone = keras.Model(graph.inputs, graph.outputs, name=name)
    clone.set_weights(model.get_weights())
    return clone
