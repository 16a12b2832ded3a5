"""Metadata inside the model files, where mobile tooling looks for it, so an app needs no side files.

- `.tflite`: the LiteRT metadata schema (`TFLITE_METADATA`: name, version, description, input colour space and
  normalisation, input/output descriptions) with `labels.txt` packed onto the file as a TENSOR_AXIS_LABELS
  associated file: what Android Studio's ML Model Binding and the Task Library read. Written with Google's
  `tflite-support` (its MetadataPopulator; its high-level writers need protobuf 3, so only the populator and the
  generated schema are used). Installed with `pip install --no-deps tflite-support==0.4.4` (its protobuf pin
  conflicts with TensorFlow's, and it has wheels up to Python 3.11); where it is missing the files are written
  without metadata and the manifest says so. LiteRT, LiteRT.js and tflite-micro ignore both parts.
- `.onnx`: the same facts as `metadata_props` (string pairs), which ONNX Runtime exposes as
  `InferenceSession.get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import json
from typing import Any

from toolkit import __version__
from toolkit.contract import UNIT, InputContract

LABEL_FILE = "labels.txt"
INSTALL = "pip install --no-deps tflite-support==0.4.4"


def facts(
    name: str,
    variant: str,
    labels: list[str],
    preprocessing: dict[str, str],
    channels: int,
    contract: InputContract = UNIT,
) -> dict[str, str]:
    """What both formats carry, as strings. `normalization` is the input contract as the metadata schema writes it,
    (pixel - mean) / std per channel, which is how Android's Support Library and Task Library apply it."""
    per_channel = contract.for_channels(channels)
    lo, hi = per_channel.range
    return {
        "name": f"{name} ({variant})",
        "version": f"edge toolkit {__version__}",
        "description": f"Image classifier: {len(labels)} classes. Input: {preprocessing.get('input', 'an image')}.",
        "input": f"{preprocessing.get('layout', '')}; {preprocessing.get('scaling', '')}".strip("; "),
        "output": f"probabilities of the {len(labels)} classes, in the order of the labels",
        "labels": json.dumps(labels),
        "normalization": json.dumps(
            {"mean": list(per_channel.mean), "std": list(per_channel.std), "min": lo, "max": hi}
        ),
        "input_contract": json.dumps(per_channel.to_dict()),
        "channel_order": per_channel.channel_order if channels == 3 else "grey",
        "color_space": "GRAYSCALE" if channels == 1 else "RGB",
    }


def about(ctx: Any, variant: str) -> dict[str, str]:
    """The facts of the model an ExportContext exports, for one variant."""
    channels = int(ctx.model.inputs[0].shape[-1])
    return facts(ctx.name, variant, list(ctx.labels), dict(ctx.preprocessing), channels, ctx.contract)


def _tflite_support():
    try:
        import flatbuffers
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as fb
        from tensorflow_lite_support.metadata.python import metadata
    except ImportError:
        return None
    return flatbuffers, fb, metadata


def with_tflite_metadata(data: bytes, about: dict[str, str]) -> tuple[bytes, str]:
    """`data` (a `.tflite`) with the metadata and the label file packed on; and how, for the manifest."""
    lib = _tflite_support()
    if lib is None:
        return data, f"none: tflite-support is not installed ({INSTALL})"
    flatbuffers, fb, metadata = lib
    model = fb.ModelMetadataT()
    model.name, model.description, model.version = about["name"], about["description"], about["version"]
    model.author = "edge toolkit"

    image = fb.TensorMetadataT()
    image.name, image.description = "image", about["input"]
    image.content = fb.ContentT()
    image.content.contentPropertiesType = fb.ContentProperties.ImageProperties
    image.content.contentProperties = fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = getattr(fb.ColorSpaceType, about["color_space"])
    norm = json.loads(about["normalization"])
    unit = fb.ProcessUnitT()
    unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    unit.options = fb.NormalizationOptionsT()
    unit.options.mean, unit.options.std = norm["mean"], norm["std"]
    image.processUnits = [unit]
    image.stats = fb.StatsT()
    image.stats.min, image.stats.max = [norm["min"]] * len(norm["mean"]), [norm["max"]] * len(norm["mean"])

    probabilities = fb.TensorMetadataT()
    probabilities.name, probabilities.description = "probabilities", about["output"]
    probabilities.content = fb.ContentT()
    probabilities.content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    probabilities.content.contentProperties = fb.FeaturePropertiesT()
    label_file = fb.AssociatedFileT()
    label_file.name, label_file.description = LABEL_FILE, "class labels, one per line, in output order"
    label_file.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    probabilities.associatedFiles = [label_file]

    graph = fb.SubGraphMetadataT()
    graph.inputTensorMetadata, graph.outputTensorMetadata = [image], [probabilities]
    model.subgraphMetadata = [graph]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)

    populator = metadata.MetadataPopulator.with_model_buffer(data)
    populator.load_metadata_buffer(builder.Output())
    labels = json.loads(about["labels"])
    populator.load_associated_file_buffers({LABEL_FILE: ("\n".join(labels) + "\n").encode()})
    populator.populate()
    return populator.get_model_buffer(), (
        f"LiteRT metadata schema (tflite-support MetadataPopulator): name, version, description, "
        f"{about['color_space'].lower()} input normalised (pixel - mean) / std with mean {_numbers(norm['mean'])} "
        f"and std {_numbers(norm['std'])}, {LABEL_FILE} packed on"
    )


def _numbers(values: list[float]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def set_onnx_metadata(model: Any, about: dict[str, str]) -> str:
    """Put the facts into an ONNX ModelProto's metadata_props (replacing earlier ones); how, for the manifest."""
    kept = [p for p in model.metadata_props if p.key not in about]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in about.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = about["description"]
    return f"ONNX metadata_props: {', '.join(about)}"


def read_tflite_metadata(data: bytes) -> dict[str, Any] | None:
    """The metadata JSON and packed files of a `.tflite`, read with tflite-support's displayer; None without it."""
    lib = _tflite_support()
    if lib is None:
        return None
    displayer = lib[2].MetadataDisplayer.with_model_buffer(data)
    files = {name: displayer.get_associated_file_buffer(name) for name in displayer.get_packed_associated_file_list()}
    return {"metadata": json.loads(displayer.get_metadata_json()), "files": files}
