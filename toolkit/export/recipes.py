"""Quantization recipes: smaller files made from the float32 model, each a named variant of the format `recipes`.

Why: the fixed TFLite variants answer "int8 or not", but the question edge users bring is how small the model can get
before it hurts, and which layer hurts. A recipe is one answer: Google's ai-edge-quantizer rewrites the float32
`.tflite` (int8, int4 per channel or in blocks, int2, weight-only, OCTAV, GPTQ, Hadamard rotation, int16
activations, or a different width per layer), and ONNX Runtime's MatMulNBits quantizer gives the ONNX file int4
dense layers. `toolkit quantize` (toolkit/quantize.py) searches them; `toolkit export --format recipes` writes them
all. The source is the workspace's certified float32 file, or a fresh conversion of the Keras model where there is
none. Calibration images, where a recipe needs them, come from the training split only.

Recipes fail in two ways, both reported as `RecipeFailed` with the library's own message and never written: the
quantizer refuses the model, or the runtime cannot run what it made. Every record carries the accuracy budget it is
judged by (`made_with.accuracy_budget_pp`), which `toolkit verify` applies.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio, manifest, runtimes
from toolkit.errors import ToolkitError
from toolkit.export import Calibration, ExportContext, describe_artifact
from toolkit.manifest import ArtifactRecord
from toolkit.model import INPUT_SHAPE, MODEL_NAME
from toolkit.verify import RECIPE_BUDGET_PP, RECIPE_FORMAT

FORMAT = RECIPE_FORMAT
LADDER = ("int2", "int4", "int8", "float")  # weight types, narrowest first: the per-layer fallback widens along it
QUANTIZABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")  # the ops that carry weights here
ALGORITHMS = {  # our name -> ai_edge_quantizer.AlgorithmName member
    "min-max": "MIN_MAX_UNIFORM_QUANT",
    "octav": "OCTAV",
    "gptq": "GPTQ",
    "hadamard": "DECOMPOSED_HADAMARD_ROTATION",
}
GRANULARITIES = {"channelwise": "CHANNELWISE", "blockwise-32": "BLOCKWISE_32", "blockwise-64": "BLOCKWISE_64"}


class RecipeFailed(ToolkitError):
    """A recipe that could not be made (`stage` "quantize") or that its runtime cannot run (`stage` "run")."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


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
    runtime: str = "litert"
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
        return ".onnx" if self.runtime == "onnxruntime" else ".tflite"

    @property
    def widenable(self) -> bool:
        """Whether the per-layer fallback applies: LiteRT recipes of weight types only (no static activations)."""
        return self.runtime == "litert" and all(r.kind in ("dynamic", "weight-only", "float") for r in self.rules)

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
        runtime="onnxruntime",
    ),
)
VARIANTS = tuple(r.base for r in RECIPES)
BY_NAME = {r.base: r for r in RECIPES}


def recipe_named(name: str) -> Recipe:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ToolkitError(f"unknown recipe {name!r}; choose from: {', '.join(VARIANTS)}") from None


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """The float32 model a recipe starts from."""

    file: str
    data: bytes
    sha256: str
    origin: str  # how it was obtained, for made_with


def workspace_sources(workspace: Path, model_path: Path) -> dict[str, Source]:
    """The workspace's float32 `.tflite` and `.onnx` (by suffix), where the manifest certifies them and lists
    `model_path` as the model they were exported from."""
    workspace = Path(workspace)
    if not (workspace / manifest.MANIFEST_FILE).is_file() or not Path(model_path).is_file():
        return {}
    if manifest.read(workspace).get("model", {}).get("sha256") != manifest.file_sha256(model_path):
        return {}
    found = {}
    for record in manifest.records(workspace):
        suffix = Path(record.file).suffix
        if record.format in ("tflite", "onnx") and record.variant == "float32" and suffix in (".tflite", ".onnx"):
            try:
                path = manifest.certified(workspace, record)
            except ToolkitError:  # missing or changed since export: not a source (the caller says what is missing)
                continue
            origin = f"the workspace's {record.file}, certified by the manifest"
            found[suffix] = Source(record.file, path.read_bytes(), record.sha256, origin)
    return found


def _converted(ctx: ExportContext, suffix: str) -> Source:
    """A float32 model converted from the Keras model in this run (where the workspace has no certified one)."""
    from toolkit.export import onnx, tflite

    ctx.progress(f"recipes: converting the Keras model to a float32 {suffix} to quantize")
    data = tflite.convert(ctx.model, "float32") if suffix == ".tflite" else onnx.to_onnx_bytes(ctx.model)
    digest = hashlib.sha256(data).hexdigest()
    return Source(f"{MODEL_NAME}.float32{suffix}", data, digest, f"converted from {ctx.model_path.name} in this run")


# ------------------------------------------------------------------------------------------ the model


def model_layers(data: bytes) -> list[Layer]:
    """The layers with constant weights in a `.tflite`, in graph order, named after their Keras layers."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(data)
    graph = model.subgraphs[0]
    layers = []
    for op in graph.operators:
        code = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        name = getattr(code, "value", code)  # a TFLOperationName (a str enum) or None
        if name not in QUANTIZABLE_OPS or len(op.inputs) < 2:
            continue
        weights = graph.tensors[op.inputs[1]]
        buffer = model.buffers[weights.buffer] if weights.buffer > 0 else None
        if buffer is None or (buffer.data is None and not buffer.offset):  # weights computed at run time
            continue
        outputs = [graph.tensors[i].name.decode() for i in op.outputs if i != -1]
        scope = ";".join(outputs) + ";"  # as ai-edge-quantizer writes an op's scope
        layers.append(Layer(_keras_name(outputs[0]), name, scope, tuple(int(d) for d in weights.shape)))
    return layers


def _keras_name(tensor: str) -> str:
    """'mnist_cnn_1/batchnorm_1/...;mnist_cnn_1/probabilities_1/BiasAdd1' -> 'probabilities' (the last name's layer)."""
    parts = tensor.split(";")[-1].split("/")
    return re.sub(r"_\d+$", "", parts[1] if len(parts) > 1 else parts[0])


# ------------------------------------------------------------------------------------------- quantize


def _aeq_recipe(recipe: Recipe, layers: list[Layer]) -> list[dict[str, Any]]:
    """The recipe as ai-edge-quantizer's recipe list (regular expressions over the layers' scopes)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    for rule in recipe.all_rules():
        if rule.layers == "all":
            regex = ".*"
        else:
            target = (
                largest_dense(layers)
                if rule.layers == "largest-dense"
                else next((layer for layer in layers if layer.name == rule.layers), None)
            )
            if target is None:
                missing = "dense layer" if rule.layers == "largest-dense" else f"layer {rule.layers!r}"
                raise RecipeFailed("quantize", f"no {missing} in this model")
            regex = target.regex
        op = qtyping.TFLOperationName.ALL_SUPPORTED if rule.op == "*" else qtyping.TFLOperationName(rule.op)
        algorithm = AlgorithmName[ALGORITHMS[rule.algorithm]]
        granularity = qtyping.QuantGranularity[GRANULARITIES[rule.granularity]]
        if rule.kind == "float":
            manager.add_quantization_config(regex, op, None, AlgorithmName.NO_QUANTIZE)
        elif rule.kind == "static":
            manager.add_static_config(regex, op, rule.activation_bits, rule.bits, granularity, algorithm)
        elif rule.kind == "weight-only":
            manager.add_weight_only_config(regex, op, rule.bits, granularity, algorithm)
        else:
            manager.add_dynamic_config(regex, op, rule.bits, granularity, algorithm)
    return manager.get_quantization_recipe()


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:300]


def quantize_bytes(recipe: Recipe, source: Source, calibration: Calibration) -> bytes:
    """The quantized model's bytes; RecipeFailed("quantize", the quantizer's message) where the quantizer refuses."""
    if recipe.runtime == "onnxruntime":
        return _matmulnbits(recipe, source)
    from ai_edge_quantizer import quantizer

    layers = model_layers(source.data)
    aeq = _aeq_recipe(recipe, layers)
    try:
        with fsio.captured_output():  # its size report, progress bars and absl warnings
            qt = quantizer.Quantizer(bytearray(source.data), aeq)
            calibrated = None
            if qt.need_calibration:
                samples = signature_samples(source.data, calibration.images)
                calibrated = qt.calibrate(samples, num_threads=os.cpu_count() or 1)
            return bytes(qt.quantize(calibrated, enable_progress_report=False).quantized_model)
    except Exception as e:  # the quantizer raises ValueError, RuntimeError, KeyError...: each is its refusal
        raise RecipeFailed("quantize", _first_line(e)) from None


def signature_samples(data: bytes, images: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    """Images as ai-edge-quantizer takes them: per signature of the model, one {input name: batch of 1} each."""
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    with fsio.captured_output():  # LiteRT's delegate and preserve-all-tensors notices
        signatures = tfl_interpreter_utils.create_tfl_interpreter(bytearray(data)).get_signature_list()
    return {key: [{sig["inputs"][0]: image[None]} for image in images] for key, sig in signatures.items()}


def _matmulnbits(recipe: Recipe, source: Source) -> bytes:
    """ONNX Runtime's weight-only int4 quantizer: every MatMul with constant weights becomes MatMulNBits."""
    import onnx

    (rule,) = recipe.rules
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        with fsio.captured_output():
            q = MatMulNBitsQuantizer(
                onnx.load_from_string(source.data),
                bits=rule.bits,
                block_size=int(rule.granularity.rsplit("-", 1)[1]),
                is_symmetric=True,
            )
            q.process()
        return q.model.model.SerializeToString()
    except Exception as e:  # ImportError (onnx-ir missing), or the quantizer's refusal
        raise RecipeFailed("quantize", _first_line(e)) from None


def probe(path: Path) -> None:
    """Run the file in its runtime on one image in a child process (a crash stays there), then here on a batch of
    two (Hadamard int4 runs one image but fails to resize); RecipeFailed("run", the runtime's own message)."""
    try:
        runtimes.load(path)
    except ToolkitError as e:  # "PATH: RuntimeError: the runtime's message" from the child process
        raise RecipeFailed("run", re.sub(r"^\w+Error: ", "", str(e).removeprefix(f"{path}: "))) from None
    try:
        runtimes.load(path, probe=False).run(np.zeros((2, *INPUT_SHAPE), np.float32))
    except ToolkitError as e:  # "PATH: LiteRT failed to run it on a batch of 2 (the runtime's message)"
        raise RecipeFailed("run", str(e).removeprefix(f"{path}: ")) from None


def quantizer_name(recipe: Recipe) -> str:
    if recipe.runtime == "onnxruntime":
        return f"onnxruntime.quantization.MatMulNBitsQuantizer (onnxruntime {version('onnxruntime')})"
    return f"ai-edge-quantizer {version('ai-edge-quantizer')}"


def made_with(
    recipe: Recipe, source: Source, calibration: Calibration, budget: float = RECIPE_BUDGET_PP
) -> dict[str, Any]:
    """How a recipe artifact was made, and the accuracy budget it is judged by."""
    out: dict[str, Any] = {
        "quantizer": quantizer_name(recipe),
        "recipe": recipe.name,
        "summary": recipe.description,
        "rules": [{k: v for k, v in asdict(rule).items() if v is not None} for rule in recipe.rules],
    }
    if recipe.aeq:
        out["ai_edge_quantizer_recipe"] = f"ai_edge_quantizer.recipe.{recipe.aeq}()"
    if recipe.overrides:
        out["per_layer_fallback"] = [{"layer": layer, "type": kind} for layer, kind in recipe.overrides]
    if recipe.runtime == "litert":
        layers = model_layers(source.data)
        out["layers"] = {layer.name: recipe.type_of(layer, layers) for layer in layers}
        if any(r.kind == "static" or r.algorithm == "gptq" for r in recipe.rules):
            out["calibration"] = calibration.describe()
    out.update(source=source.file, source_sha256=source.sha256, source_origin=source.origin, accuracy_budget_pp=budget)
    return out


def build(recipe: Recipe, source: Source, calibration: Calibration, target: Path) -> Path:
    """Quantize and write `target` atomically, then run it once in its runtime; on RecipeFailed nothing is left."""
    fsio.write_bytes(target, quantize_bytes(recipe, source, calibration))
    try:
        probe(target)
    except RecipeFailed:
        target.unlink()
        raise
    return target


def export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]:
    """Write each recipe's file and return its record (judged by the default budget); a recipe that fails is reported
    through `ctx.progress` with the library's message and skipped."""
    found = workspace_sources(ctx.out_dir, ctx.model_path)
    sources: dict[str, Source] = {}
    records = []
    with tempfile.TemporaryDirectory(dir=fsio.ensure_dir(ctx.out_dir), prefix=".recipes-") as scratch:
        for recipe in (recipe_named(v) for v in variants):
            if recipe.suffix not in sources:
                sources[recipe.suffix] = found.get(recipe.suffix) or _converted(ctx, recipe.suffix)
            source = sources[recipe.suffix]
            ctx.progress(f"recipes {recipe.name}: quantizing {source.file} ({recipe.description})")
            name = f"{MODEL_NAME}.{recipe.name}{recipe.suffix}"
            try:
                built = build(recipe, source, ctx.calibration, Path(scratch) / name)
            except RecipeFailed as e:
                where = "fails to quantize" if e.stage == "quantize" else f"fails in {recipe.runtime}"
                ctx.progress(f"recipes {recipe.name}: skipped, {where}: {e}")
                continue
            path = fsio.write_bytes(ctx.out_dir / name, built.read_bytes())
            records.append(describe_artifact(path, FORMAT, recipe.name, made_with(recipe, source, ctx.calibration)))
    return records
