"""TFLite/LiteRT artifacts from TensorFlow's converter: float32, float16, dynamic-range int8, full-integer int8."""

from __future__ import annotations

from typing import Any

from toolkit import fsio
from toolkit.errors import ToolkitError
from toolkit.export import ExportContext, describe_artifact
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
        raise ToolkitError(f"TFLite converter failed for {variant}: {str(e).splitlines()[0] if str(e) else type(e).__name__} {tail}") from None


def export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]:
    import tensorflow as tf

    records = []
    for variant in variants:
        ctx.progress(f"tflite {variant}: converting" + (f", calibrating on {ctx.calibration.size} images" if variant == "int8" else ""))
        path = fsio.write_bytes(ctx.artifact_path(variant, "tflite"), convert(ctx.model, variant, ctx.calibration))
        made_with: dict[str, Any] = {"converter": f"tf.lite.TFLiteConverter.from_keras_model (TensorFlow {tf.__version__})", **HOW[variant]}
        if variant == "int8":
            made_with["calibration"] = ctx.calibration.describe()
        records.append(describe_artifact(path, "tflite", variant, made_with))
    return records
