"""The quantizers behind the recipes: ai-edge-quantizer for LiteRT files, ONNX Runtime's MatMulNBits for ONNX files,
and the probe that runs what they made before anyone relies on it.

Recipes fail in two ways, both reported as `RecipeFailed` with the library's own message and never written: the
quantizer refuses the model, or the runtime cannot run what it made. Every file's `made_with` carries the accuracy
budget it is judged by (`made_with.accuracy_budget_pp`), which `toolkit verify` applies. The source is the
workspace's certified float32 file; calibration images, where a recipe needs them, come from the training split only.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio, manifest, runtimes
from toolkit.artifacts import LITERT, ONNXRUNTIME
from toolkit.errors import ToolkitError, first_line
from toolkit.export import Calibration
from toolkit.parity import RECIPE_BUDGET_PP
from toolkit.quantize.recipes import ALGORITHMS, GRANULARITIES, QUANTIZABLE_OPS, Layer, Recipe, largest_dense
from toolkit.workspace import Workspace


class RecipeFailed(ToolkitError):
    """A recipe that could not be made (`stage` "quantize") or that its runtime cannot run (`stage` "run")."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


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
    workspace = Workspace.of(workspace)
    if not workspace.has_manifest() or not Path(model_path).is_file():
        return {}
    if manifest.read(workspace).get("model", {}).get("sha256") != workspace.sha256(model_path):
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


def quantize_bytes(recipe: Recipe, source: Source, calibration: Calibration) -> bytes:
    """The quantized model's bytes; RecipeFailed("quantize", the quantizer's message) where the quantizer refuses."""
    if recipe.runtime == ONNXRUNTIME:
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
        raise RecipeFailed("quantize", first_line(e)) from None


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
        raise RecipeFailed("quantize", first_line(e)) from None


def probe(path: Path) -> None:
    """Run the file in its runtime on one image in a child process (a crash stays there), then here on a batch of
    two (Hadamard int4 runs one image but fails to resize); RecipeFailed("run", the runtime's own message)."""
    try:
        runtimes.load(path)
    except ToolkitError as e:  # "PATH: RuntimeError: the runtime's message" from the child process
        raise RecipeFailed("run", re.sub(r"^\w+Error: ", "", str(e).removeprefix(f"{path}: "))) from None
    try:
        runner = runtimes.load(path, probe=False)
        runner.run(np.zeros((2, *runtimes.image_shape(runner.input)), np.float32))
    except ToolkitError as e:  # "PATH: LiteRT failed to run it on a batch of 2 (the runtime's message)"
        raise RecipeFailed("run", str(e).removeprefix(f"{path}: ")) from None


def quantizer_name(recipe: Recipe) -> str:
    if recipe.runtime == ONNXRUNTIME:
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
    if recipe.runtime == LITERT:
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
