"""`toolkit quantize --explain`: which layer costs accuracy in one recipe, on calibration images (training split; no
test image is read): each layer quantized alone, and each layer's output error in the whole recipe."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from toolkit import fsio
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.export import DEFAULT_CALIBRATION_SIZE, make_calibration
from toolkit.quantize import backends, recipes
from toolkit.quantize.report import Explanation, LayerError, write_explanation
from toolkit.quantize.search import EXPLAIN_DEFAULT, Workbench, parse_recipes, report_folder
from toolkit.workspace import Workspace

VALIDATE_IMAGES = 100  # calibration images for ai-edge-quantizer's per-tensor comparison (two interpreters per image)


def explain(
    workspace: str | Path,
    dataset: Dataset,
    recipe: str = EXPLAIN_DEFAULT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Explanation:
    """Per-layer error of one recipe on calibration images (training split; no test image is read): each layer
    quantized alone (output SNR and agreement with the float model), and each layer's output SNR and MSE in the whole
    recipe from ai-edge-quantizer's model comparison. Sorted, costliest first; written as JSON, Markdown and a PNG."""
    workspace, say = Path(workspace), progress or (lambda m: None)
    chosen = recipes.recipe_named(parse_recipes(recipe, explain=True)[0])
    report_dir = report_folder(workspace, out)
    calibration = make_calibration(dataset, calibration_size, seed, Workspace.of(workspace).input_contract())
    with tempfile.TemporaryDirectory(dir=workspace, prefix=".quantize-") as scratch:
        work = Workbench(workspace, calibration, Path(scratch), say)
        whole = work.path_for(chosen)
        try:
            backends.build(chosen, work.tflite, calibration, whole)
        except backends.RecipeFailed as e:
            where = "fails to quantize" if e.stage == "quantize" else "fails in LiteRT"
            raise ToolkitError(f"recipe {recipe} {where}: {e}") from None
        errors = work.layer_errors(chosen)
        notes = _whole_recipe_errors(work, whole.read_bytes(), errors)
        agreement = 1 - work.disagreement(whole)
    result = Explanation(
        chosen.name, chosen.summary, len(work.images), calibration.describe(), agreement, errors, notes
    )
    result.files = write_explanation(result, report_dir)
    return result


def _whole_recipe_errors(work: Workbench, quantized: bytes, errors: list[LayerError]) -> list[str]:
    """Fill each layer's output SNR and MSE in the whole recipe from ai-edge-quantizer's comparison of every tensor."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    images = work.calibration.images[:VALIDATE_IMAGES]
    data = backends.signature_samples(work.tflite.data, images)
    try:
        with fsio.captured_output():
            comparison = model_validator.compare_model(
                bytearray(work.tflite.data),
                bytearray(quantized),
                data,
                [ValidationErrorMetric.SNR, ValidationErrorMetric.MSE],
                num_threads=1,
            )
    except Exception as e:  # the interpreter's refusal, as for any file it cannot run
        return [f"ai-edge-quantizer's comparison failed: {' '.join(str(e).split())[:300]}"]
    tensors = comparison.get_all_tensor_results()
    scopes = {layer.name: layer.scope.removesuffix(";") for layer in work.layers}
    for e in errors:
        metrics = tensors.get(scopes[e.layer])
        if metrics:
            e.output_snr_db = 10 * math.log10(metrics["snr"]) if metrics["snr"] > 0 else -math.inf
            e.output_mse = metrics["mse"]
    return [f"output SNR and MSE per layer: ai-edge-quantizer model_validator.compare_model on {len(images)} images"]
