"""TFLite/LiteRT artifacts from TensorFlow's converter: float32, float16, dynamic-range int8, full-integer int8."""

from __future__ import annotations

from typing import Any

from toolkit import fsio
from toolkit.errors import ToolkitError
from toolkit.export import ExportContext, export_variants
from toolkit.export.metadata import about, with_tflite_metadata
from toolkit.manifest import ArtifactRecord

VARIANTS = ("float32", "float16", "dynamic", "int8")

HOW = {
    "float32": {"quantization": "none"},
    "float16": {"quantization": "float16 weights (dequantized to float32 at load)"},
    "dynamic": {"quantization": "dynamic range: int8 weights, float32 activations quantized on the fly"},
    "int8": {
        "quantization": "full integer: int8 weights (per-channel) and activations, int8 input and output",
        "calibration_method": "min/max of the representative dataset",
        "per_channel": True,
        "ops": "TFLITE_BUILTINS_INT8",
    },
}


def convert(model, variant: str, calibration=None, int8_io: bool = True) -> bytes:
    """TFLite flatbuffer bytes of `model` for one variant. `int8_io=False` keeps a full-integer model's input and
    output in float32 (quantize/dequantize ops inside the model), for runtimes without int8 tensors (LiteRT.js)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        images = calibration.images

        def representative_dataset():
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif variant != "float32":
        raise ValueError(f"unknown tflite variant {variant}")
    try:
        with fsio.captured_output() as log:  # the converter prints pages of MLIR and absl logs
            return converter.convert()
    except Exception as e:
        tail = " | ".join(log[0].strip().splitlines()[-3:]) if log else ""
        raise ToolkitError(
            f"TFLite converter failed for {variant}: {str(e).splitlines()[0] if str(e) else type(e).__name__} {tail}"
        ) from None


def made_with(variant: str, ctx: ExportContext, batch: int | None = None, int8_io: bool = True) -> dict[str, Any]:
    """How a `.tflite` of `variant` was made: the manifest's record of converter, quantization and calibration."""
    import tensorflow as tf

    on = " on the model rebuilt with batch 1" if batch == 1 else ""
    out: dict[str, Any] = {
        "converter": f"tf.lite.TFLiteConverter.from_keras_model (TensorFlow {tf.__version__}){on}",
        **HOW[variant],
    }
    if batch is not None:
        out["batch"] = batch
    if variant == "int8":
        if not int8_io:
            out["quantization"] = "full integer: int8 weights (per-channel) and activations, float32 input and output"
        out["calibration"] = ctx.calibration.describe()
    return out


def write(ctx: ExportContext, variant: str, target, model=None, int8_io: bool = True, label: str = "tflite"):
    """Convert (`model` or the context's model) and write `target` atomically; return its `made_with`."""
    calibrating = f", calibrating on {ctx.calibration.size} images" if variant == "int8" else ""
    ctx.progress(f"{label} {variant}: converting{calibrating}")
    data, how = with_tflite_metadata(
        convert(model or ctx.model, variant, ctx.calibration, int8_io=int8_io), about(ctx, variant)
    )
    fsio.write_bytes(target, data)
    return {**made_with(variant, ctx, batch=1 if model is not None else None, int8_io=int8_io), "metadata": how}


def export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]:
    return export_variants(ctx, variants, "tflite", write)
