"""The `ort` export format: ONNX Runtime Mobile's `.ort` files, and the operator config for a reduced build.

ONNX Runtime's mobile packages run `.ort` files (a flatbuffer of the graph, optimised ahead of time), and a
custom build can keep only the operators and types the models need. Both come from ONNX Runtime's own tool,
`onnxruntime.tools.convert_onnx_models_to_ort`, run on the float32 and int8 `.onnx` of this export (made now if
this run did not make them): optimisation style Fixed, target platform ARM (a phone; no x86-only fused
kernels, and the file still runs on x86), type reduction on. It writes `NAME.VARIANT.ort` and
`NAME.required_operators_and_types.config` (for ONNX Runtime's `build.py --include_ops_by_config CONFIG
--enable_reduced_operator_type_support`).
The metadata_props of the `.onnx` (labels, normalisation) carry over. ONNX Runtime's Python session runs the
`.ort` files, so they are verified and benchmarked as any other artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from toolkit import fsio
from toolkit.artifacts import ONNX_FORMAT, ORT_FORMAT
from toolkit.errors import ToolkitError, first_line
from toolkit.export import ExportContext, describe_artifact
from toolkit.export import onnx as onnx_export
from toolkit.manifest import ArtifactRecord

VARIANTS = ("float32", "int8")
TARGET_PLATFORM = "arm"


def config_path(ctx: ExportContext) -> Path:
    return ctx.out_dir / f"{ctx.name}.required_operators_and_types.config"


def _convert(sources: dict[str, Path], into: Path) -> None:
    """ONNX Runtime's converter over `sources` (variant -> .onnx), writing into `into`; its chatter hidden."""
    from onnxruntime.tools import convert_onnx_models_to_ort as tool

    given = into / "in"
    given.mkdir()
    for variant, source in sources.items():
        shutil.copy(source, given / f"{variant}.onnx")
    try:
        with fsio.captured_output():
            tool.convert_onnx_models_to_ort(
                given,
                output_dir=into / "out",
                optimization_styles=[tool.OptimizationStyle.Fixed],
                target_platform=TARGET_PLATFORM,
                enable_type_reduction=True,
            )
    except Exception as e:  # the tool raises whatever ONNX Runtime raises
        names = ", ".join(map(str, sources.values()))
        raise ToolkitError(f"ONNX Runtime could not convert {names} ({first_line(e)})") from None


def export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]:
    import onnxruntime

    chosen = [v for v in VARIANTS if v in variants]
    if not chosen:
        return []
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".ort-") as tmp:
        sources = {}
        for variant in chosen:
            source = ctx.built.get((ONNX_FORMAT, variant))
            if source is None:  # this run made no .onnx of that variant: make one here, not in the workspace
                source = Path(tmp) / f"{ctx.name}.{variant}.onnx"
                onnx_export.write(ctx, variant, source, label="ort")
            sources[variant] = source
        ctx.progress(f"ort: converting {', '.join(chosen)} with onnxruntime.tools.convert_onnx_models_to_ort")
        _convert(sources, Path(tmp))
        out = Path(tmp) / "out"
        config = fsio.write_bytes(config_path(ctx), (out / "required_operators_and_types.config").read_bytes())
        records = []
        for variant in chosen:
            path = fsio.write_bytes(ctx.artifact_path(variant, "ort"), (out / f"{variant}.ort").read_bytes())
            made_with = {
                "converter": f"onnxruntime.tools.convert_onnx_models_to_ort (onnxruntime {onnxruntime.__version__}) "
                f"on {ctx.name}.{variant}.onnx",
                "optimization": f"Fixed, target platform {TARGET_PLATFORM}",
                "reduced_build_config": {"file": config.name, "sha256": ctx.sha256(config)},
                "metadata": "ONNX metadata_props of the .onnx, carried over",
            }
            records.append(describe_artifact(path, ORT_FORMAT, variant, made_with, ctx.out_dir))
    return records
