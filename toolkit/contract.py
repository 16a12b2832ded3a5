"""The model's input contract: how the uint8 pixels an app has become the tensor the model takes.

`model input = (pixel[channel_order] - mean) / std`, per channel, with the pixel in 0-255. It is decided once per
workspace (the user's `--input-contract`, else what the model shows, else `unit`), recorded in the manifest and
`metrics.json`, and every place that makes model inputs goes through `InputContract.apply`: training,
calibration, verification, quantization, benchmarks, predict, report, the web page (from `models.json`), the
LiteRT metadata (`NormalizationOptions` is exactly this mean and std), ONNX `metadata_props` and the micro
header.

The presets are the modes of `keras.applications`: `raw` (0-255, for models that rescale inside themselves:
MobileNetV3, EfficientNet, EfficientNetV2, ConvNeXt), `unit` ([0, 1]: the reference CNN), `tf` ([-1, 1]:
MobileNet, MobileNetV2, ResNetV2, Inception, Xception), `torch` (ImageNet mean/std after / 255: DenseNet) and
`caffe` (RGB -> BGR, ImageNet means subtracted: ResNet50, VGG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# name -> (mean, std, channel order, what it is), mean and std in pixel units (0-255), per channel (RGB order of
# the model's channels; caffe's are the B, G, R means)
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...], str, str]] = {
    "raw": ((0.0,), (1.0,), "RGB", "0-255 pixels as they are (the model rescales inside itself)"),
    "unit": ((0.0,), (255.0,), "RGB", "pixel / 255, range [0, 1]"),
    "tf": ((127.5,), (127.5,), "RGB", "pixel / 127.5 - 1, range [-1, 1] (keras.applications mode 'tf')"),
    "torch": (
        tuple(255.0 * m for m in IMAGENET_MEAN),
        tuple(255.0 * s for s in IMAGENET_STD),
        "RGB",
        "pixel / 255, then ImageNet mean/std (keras.applications mode 'torch')",
    ),
    "caffe": (CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), "BGR", "RGB -> BGR, ImageNet means subtracted (mode 'caffe')"),
}
DEFAULT = "unit"
SOURCES = ("user", "model", "default")  # who decided: --input-contract, a leading layer of the model, the default
RESCALING_LAYERS = ("Rescaling", "Normalization")
HELP = (
    "how uint8 pixels become the model's input: raw (0-255), unit (/255), tf ([-1, 1]), torch (ImageNet mean/std), "
    "caffe (BGR, means subtracted), or scale=S,offset=O (x = pixel * S + O), or mean=M[:M:M],std=S[:S:S]; "
    "default: raw for a model that starts with Rescaling/Normalization, else unit"
)


@dataclass(frozen=True)
class InputContract:
    """`model input = (pixel - mean) / std` per channel (pixel 0-255, channels in `channel_order`)."""

    name: str  # a preset's name, or "custom"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"  # "RGB" or "BGR": the order of the model's three channels (grey models: one)
    source: str = "default"

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ToolkitError(f"input contract {self.name}: mean and std need 1 or 3 values each, alike")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or not all(s > 0 for s in self.std):
            raise ToolkitError(f"input contract {self.name}: mean must be finite and std positive")
        if self.channel_order not in ("RGB", "BGR"):
            raise ToolkitError(f"input contract {self.name}: channel order must be RGB or BGR")

    def for_channels(self, channels: int) -> InputContract:
        """The contract for a model of `channels` channels (a per-channel contract is refused for a grey model)."""
        if len(self.mean) == channels:
            return self
        if len(self.mean) == 1:
            return InputContract(self.name, self.mean * channels, self.std * channels, self.channel_order, self.source)
        raise ToolkitError(
            f"input contract {self.name} has {len(self.mean)} channels; the model takes {channels}"
            " (use raw, unit, tf or a one-value scale/offset for a grey model)"
        )

    def maps_like(self, other: InputContract, channels: int) -> bool:
        """Whether both turn every pixel into the same model input (whoever decided them, whatever their names)."""
        a, b = self.for_channels(channels), other.for_channels(channels)
        close = np.allclose((*a.mean, *a.std), (*b.mean, *b.std), rtol=1e-6, atol=1e-9)  # the same float32 inputs
        return bool(close) and (channels == 1 or a.channel_order == b.channel_order)

    @property
    def range(self) -> tuple[float, float]:
        """The smallest and largest model input a 0-255 pixel can become."""
        lows = [(0 - m) / s for m, s in zip(self.mean, self.std)]
        highs = [(255 - m) / s for m, s in zip(self.mean, self.std)]
        return float(min(lows)), float(max(highs))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels (N, H, W) or (N, H, W, C), uint8 or float in 0-255, RGB -> the model's input, float32 NHWC."""
        x = np.asarray(pixels, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., np.newaxis]
        c = x.shape[-1]
        contract = self.for_channels(c)
        if c == 3 and contract.channel_order == "BGR":
            x = x[..., ::-1]
        if contract.name == "raw":
            return np.ascontiguousarray(x)
        mean, std = np.asarray(contract.mean, np.float32), np.asarray(contract.std, np.float32)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def pixels(self, inputs: np.ndarray) -> np.ndarray:
        """The inverse of `apply`: model inputs -> the uint8 RGB pixels they came from (rounded)."""
        x = np.asarray(inputs, dtype=np.float64)
        contract = self.for_channels(x.shape[-1])
        p = x * np.asarray(contract.std) + np.asarray(contract.mean)
        if x.shape[-1] == 3 and contract.channel_order == "BGR":
            p = p[..., ::-1]
        return np.ascontiguousarray(np.clip(np.round(p), 0, 255).astype(np.uint8))

    def describe(self) -> str:
        """One line for the manifest and the files: what an app computes from a pixel."""
        if self.name in PRESETS:
            what = PRESETS[self.name][3]
        else:
            what = f"(pixel - {_values(self.mean)}) / {_values(self.std)}"
        lo, hi = self.range
        return f"float32 = {what}; input range [{lo:.4g}, {hi:.4g}]"

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.range
        return {
            "name": self.name,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "source": self.source,
            "formula": "model input = (pixel - mean) / std, pixel in 0-255, per channel in channel_order",
            "range": [lo, hi],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> InputContract:
        try:
            return cls(
                str(d["name"]),
                tuple(float(v) for v in d["mean"]),
                tuple(float(v) for v in d["std"]),
                str(d.get("channel_order", "RGB")),
                str(d.get("source", "default")),
            )
        except (KeyError, TypeError, ValueError, ToolkitError) as e:
            raise ToolkitError(f"{where}: 'input_contract' is not an input contract ({e})") from None


def _values(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def preset(name: str, source: str = "user") -> InputContract:
    mean, std, order, _ = PRESETS[name]
    return InputContract(name, mean, std, order, source)


UNIT = preset(DEFAULT, "default")


def parse(text: str) -> InputContract:
    """`--input-contract`: a preset's name, `scale=S,offset=O` or `mean=M[:M:M],std=S[:S:S]` (with `,bgr`)."""
    spec = text.strip().lower()
    if spec in PRESETS:
        return preset(spec)
    fields: dict[str, str] = {}
    order = "RGB"
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in ("bgr", "rgb"):
            order = part.upper()
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in ("scale", "offset", "mean", "std"):
            raise ToolkitError(f"--input-contract {text!r}: {HELP}")
        fields[key] = value
    try:
        numbers = {k: tuple(float(v) for v in value.split(":")) for k, value in fields.items()}
    except ValueError:
        raise ToolkitError(f"--input-contract {text!r}: the values must be numbers") from None
    if set(numbers) == {"scale", "offset"} or set(numbers) == {"scale"}:
        scale = numbers["scale"]
        offset = numbers.get("offset", (0.0,) * len(scale))
        if len(offset) != len(scale) or any(s <= 0 for s in scale):
            raise ToolkitError(f"--input-contract {text!r}: scale must be positive, with as many offsets")
        mean, std = tuple(-o / s for o, s in zip(offset, scale)), tuple(1 / s for s in scale)
    elif set(numbers) == {"mean", "std"}:
        mean, std = numbers["mean"], numbers["std"]
    else:
        raise ToolkitError(f"--input-contract {text!r}: give scale (and offset), or mean and std; {HELP}")
    return InputContract("custom", mean, std, order, "user")


def leading_rescaling(model: Any) -> str | None:
    """The name of the Rescaling or Normalization layer a Keras model starts with (inside a nested model too), or
    None: such a model takes raw 0-255 pixels (keras.applications' MobileNetV3, EfficientNet, ConvNeXt)."""
    for layer in getattr(model, "layers", []):
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind in RESCALING_LAYERS:
            return layer.name
        if hasattr(layer, "layers"):
            return leading_rescaling(layer)
        return None
    return None


def decide(model: Any, asked: InputContract | None, recorded: InputContract | None = None) -> InputContract:
    """The contract of a model: what the user asked for, else what was recorded before, else `raw` for a model
    that rescales inside itself, else `unit`."""
    if asked is not None:
        return asked
    if recorded is not None:
        return recorded
    if model is not None and leading_rescaling(model) is not None:
        return preset("raw", "model")
    return UNIT


def from_header(header: Any, where: str = "manifest") -> InputContract | None:
    """The contract a manifest (or metrics.json) records; a manifest written before contracts were recorded says
    `pixel / 255` in its preprocessing, which is `unit`. None where nothing is recorded."""
    if not isinstance(header, dict):
        return None
    if header.get("input_contract") is not None:
        return InputContract.from_dict(header["input_contract"], where)
    preprocessing = header.get("preprocessing")
    scaling = preprocessing.get("scaling") if isinstance(preprocessing, dict) else None
    if isinstance(scaling, str) and "uint8 pixel / 255" in scaling:
        return UNIT
    return None


def app_input(contract: InputContract, spec: Any) -> str:
    """What an app does to a 0-255 pixel before it gives it to a file whose input tensor is `spec` (a TensorSpec):
    the contract for a float input; for an integer input, the contract then the tensor's quantization, which
    collapses to an integer offset (no float maths on the device) where the quantization *is* the contract."""
    if spec.quantization is None:
        return contract.describe()
    c = contract.for_channels(int(spec.shape[-1]))
    scale, zero = spec.scale, spec.zero_point
    gains = [1 / (s * scale) for s in c.std]
    offsets = [zero - m / (s * scale) for m, s in zip(c.mean, c.std)]
    bgr = " (channels in BGR order)" if len(c.mean) == 3 and c.channel_order == "BGR" else ""
    if all(abs(g - 1) < 1e-4 for g in gains) and all(abs(o - round(o)) < 1e-3 for o in offsets):
        shift = {int(round(o)) for o in offsets}
        if len(shift) == 1:
            (k,) = shift
            if k == 0:
                return f"nothing: the {spec.dtype} input is the pixel itself{bgr} (its quantization is the contract)"
            sign = "+" if k > 0 else "-"
            return f"{spec.dtype}: q = pixel {sign} {abs(k)}{bgr}: its quantization is the contract, no float maths"
    return f"{spec.dtype}: q = clamp(round(x / {scale:.9g}) + {zero}) with x = the contract's (pixel - mean) / std{bgr}"
