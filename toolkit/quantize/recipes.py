"""The quantization recipes: named ways to make a smaller file from the float32 model, as data.

Why: the fixed TFLite variants answer "int8 or not", but the question edge users bring is how small the model can get
before it hurts, and which layer hurts. A recipe is one answer: Google's ai-edge-quantizer rewrites the float32
`.tflite` (int8, int4 per channel or in blocks, int2, weight-only, OCTAV, GPTQ, Hadamard rotation, int16
activations, or a different width per layer), and ONNX Runtime's MatMulNBits quantizer gives the ONNX file int4
dense layers. This module is only the table (rules per layer, the ladder the per-layer fallback widens along);
`backends` makes files from it, `search` looks for the smallest one within a budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from toolkit.artifacts import LITERT, ONNXRUNTIME
from toolkit.errors import ToolkitError

LADDER = ("int2", "int4", "int8", "float")  # weight types, narrowest first: the per-layer fallback widens along it

QUANTIZABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")  # the ops that carry weights here

ALGORITHMS = {  # our name -> ai_edge_quantizer.AlgorithmName member
    "min-max": "MIN_MAX_UNIFORM_QUANT",
    "octav": "OCTAV",
    "gptq": "GPTQ",
    "hadamard": "DECOMPOSED_HADAMARD_ROTATION",
}

GRANULARITIES = {"channelwise": "CHANNELWISE", "blockwise-32": "BLOCKWISE_32", "blockwise-64": "BLOCKWISE_64"}


@dataclass(frozen=True)
class Rule:
    """One line of a recipe: how the weights (and, for `static`, the activations) of some layers are quantized.
    Later rules override earlier ones for the layers they match."""

    kind: str  # "dynamic" (int weights, float activations quantized on the fly), "weight-only", "static", "float",
    # or "matmulnbits" (ONNX Runtime)
    bits: int = 8  # weight bits
    activation_bits: int | None = None  # static recipes only
    granularity: str = "channelwise"  # or "blockwise-32", "blockwise-64" (ONNX: "blockwise-128")
    algorithm: str = "min-max"  # or "octav", "gptq", "hadamard"
    layers: str = "all"  # "all", "largest-dense" (the dense layer with the most weights) or one layer's name
    op: str = "*"  # only this TFLite op ("FULLY_CONNECTED"), or any

    @property
    def type(self) -> str:
        """What a layer under this rule holds: a weight type of LADDER, with int16 activations noted."""
        if self.kind == "float":
            return "float"
        return f"int{self.bits}" + (f"/a{self.activation_bits}" if self.activation_bits else "")


@dataclass(frozen=True)
class Layer:
    """A layer with weights in the `.tflite`: its Keras name, TFLite op, the quantizer's scope, weight shape."""

    name: str
    op: str
    scope: str  # the op's output tensor names, as ai-edge-quantizer matches its regular expressions against
    shape: tuple[int, ...]

    @property
    def params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def regex(self) -> str:
        return "^" + re.escape(self.scope) + "$"


@dataclass(frozen=True)
class Recipe:
    base: str
    summary: str
    rules: tuple[Rule, ...]
    runtime: str = LITERT
    aeq: str | None = None  # the ai_edge_quantizer.recipe function this recipe equals, if one does
    overrides: tuple[tuple[str, str], ...] = ()  # per-layer fallback: (layer, type of LADDER), in the order taken

    @property
    def name(self) -> str:
        return self.base + "".join(f"+{layer}-{kind}" for layer, kind in self.overrides)

    @property
    def description(self) -> str:
        return self.summary + "".join(
            f"; then {layer} at {kind} (per-layer fallback)" for layer, kind in self.overrides
        )

    @property
    def suffix(self) -> str:
        return ".onnx" if self.runtime == ONNXRUNTIME else ".tflite"

    @property
    def widenable(self) -> bool:
        """Whether the per-layer fallback applies: LiteRT recipes of weight types only (no static activations)."""
        return self.runtime == LITERT and all(r.kind in ("dynamic", "weight-only", "float") for r in self.rules)

    def all_rules(self) -> tuple[Rule, ...]:
        kind = next((r.kind for r in self.rules if r.kind != "float"), "dynamic")
        extra = tuple(
            Rule("float", layers=layer) if t == "float" else Rule(kind, int(t[3:]), layers=layer)
            for layer, t in self.overrides
        )
        return self.rules + extra

    def rule_for(self, layer: Layer, layers: list[Layer]) -> Rule | None:
        """The rule that decides `layer` (the last that matches it), or None: the layer stays float."""
        chosen = None
        for rule in self.all_rules():
            if _matches(rule, layer, layers):
                chosen = rule
        return chosen

    def type_of(self, layer: Layer, layers: list[Layer]) -> str:
        rule = self.rule_for(layer, layers)
        return "float" if rule is None else rule.type

    def widened(self, layer: str, kind: str) -> Recipe:
        """This recipe with `layer` re-quantized at the wider type `kind` (a later override of a layer replaces its
        earlier one)."""
        kept = tuple((name, t) for name, t in self.overrides if name != layer)
        return replace(self, overrides=(*kept, (layer, kind)))

    def alone(self, layer: Layer, layers: list[Layer]) -> Recipe | None:
        """Only `layer` quantized as this recipe quantizes it, every other layer float (for per-layer errors)."""
        rule = self.rule_for(layer, layers)
        if rule is None or rule.kind == "float":
            return None
        return Recipe(f"{self.name}@{layer.name}", self.summary, (replace(rule, layers=layer.name, op="*"),))


def _matches(rule: Rule, layer: Layer, layers: list[Layer]) -> bool:
    if rule.op != "*" and rule.op != layer.op:
        return False
    if rule.layers == "all":
        return True
    if rule.layers == "largest-dense":
        return layer == largest_dense(layers)
    return rule.layers == layer.name


def largest_dense(layers: list[Layer]) -> Layer | None:
    dense = [layer for layer in layers if layer.op == "FULLY_CONNECTED"]
    return max(dense, key=lambda layer: layer.params) if dense else None


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "int8-dynamic",
        "int8 weights per channel; float activations, quantized on the fly",
        (Rule("dynamic", 8),),
        aeq="dynamic_wi8_afp32",
    ),
    Recipe(
        "int8-static",
        "int8 weights and activations (calibrated), float32 input and output",
        (Rule("static", 8, activation_bits=8),),
        aeq="static_wi8_ai8",
    ),
    Recipe(
        "int16x8",
        "int8 weights, int16 activations (calibrated)",
        (Rule("static", 8, activation_bits=16),),
        aeq="static_wi8_ai16",
    ),
    Recipe(
        "int4-block32",
        "int4 weights in blocks of 32, float activations",
        (Rule("dynamic", 4, granularity="blockwise-32"),),
        aeq="dynamic_wi4b32_afp32",
    ),
    Recipe(
        "int4-block64",
        "int4 weights in blocks of 64, float activations",
        (Rule("dynamic", 4, granularity="blockwise-64"),),
        aeq="dynamic_wi4b64_afp32",
    ),
    Recipe(
        "int4-dense",
        "int4 on the largest dense layer, int8 on every other",
        (Rule("dynamic", 8), Rule("dynamic", 4, layers="largest-dense")),
    ),
    Recipe("int4", "int4 weights per channel on every layer", (Rule("dynamic", 4),), aeq="dynamic_wi4_afp32"),
    Recipe(
        "int4-weight-only",
        "int4 weights, dequantized to float before each operator",
        (Rule("weight-only", 4),),
        aeq="weight_only_wi4_afp32",
    ),
    Recipe("int4-octav", "int4 weights, clipping chosen by OCTAV", (Rule("dynamic", 4, algorithm="octav"),)),
    Recipe(
        "int4-gptq",
        "int4 weights; the dense layers rounded by GPTQ (calibrated)",
        (Rule("dynamic", 4), Rule("dynamic", 4, algorithm="gptq", op="FULLY_CONNECTED")),
    ),
    Recipe(
        "int4-hadamard",
        "int4 weights after a Hadamard rotation",
        (Rule("dynamic", 4, algorithm="hadamard"),),
        aeq="dynamic_wi4c_hr_afp32",
    ),
    Recipe(
        "int2-dense",
        "int2 on the largest dense layer, int8 on every other",
        (Rule("dynamic", 8), Rule("dynamic", 2, layers="largest-dense")),
    ),
    Recipe("int2", "int2 weights per channel on every layer", (Rule("dynamic", 2),), aeq="dynamic_wi2c_afp32"),
    Recipe(
        "int2-block32",
        "int2 weights in blocks of 32",
        (Rule("dynamic", 2, granularity="blockwise-32"),),
        aeq="dynamic_wi2b32_afp32",
    ),
    Recipe(
        "int4-matmulnbits",
        "ONNX: int4 MatMulNBits dense layers (blocks of 128, symmetric); convolutions stay float",
        (Rule("matmulnbits", 4, granularity="blockwise-128", op="MatMul"),),
        runtime=ONNXRUNTIME,
    ),
)

VARIANTS = tuple(r.base for r in RECIPES)

BY_NAME = {r.base: r for r in RECIPES}


def recipe_named(name: str) -> Recipe:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ToolkitError(f"unknown recipe {name!r}; choose from: {', '.join(VARIANTS)}") from None
