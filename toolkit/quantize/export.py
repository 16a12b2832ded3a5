"""The `recipes` export format (`toolkit export --format recipes`): every recipe written as an artifact, judged by
the default accuracy budget. Not in `--format all`: minutes of quantizing, and some recipes fail by design.
`toolkit quantize` searches the same recipes for the smallest file within a budget instead."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from toolkit import fsio
from toolkit.artifacts import RECIPES_FORMAT
from toolkit.export import (
    ExportContext,
    describe_artifact,
    onnx,
    tflite,
)
from toolkit.manifest import ArtifactRecord
from toolkit.quantize.backends import RecipeFailed, Source, build, made_with, workspace_sources
from toolkit.quantize.recipes import VARIANTS, recipe_named

__all__ = ["VARIANTS", "export"]


def _converted(ctx: ExportContext, suffix: str) -> Source:
    """A float32 model converted from the Keras model in this run (where the workspace has no certified one)."""
    ctx.progress(f"recipes: converting the Keras model to a float32 {suffix} to quantize")
    data = tflite.convert(ctx.model, "float32") if suffix == ".tflite" else onnx.to_onnx_bytes(ctx.model)
    digest = hashlib.sha256(data).hexdigest()
    return Source(f"{ctx.name}.float32{suffix}", data, digest, f"converted from {ctx.model_path.name} in this run")


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
            name = f"{ctx.name}.{recipe.name}{recipe.suffix}"
            try:
                built = build(recipe, source, ctx.calibration, Path(scratch) / name)
            except RecipeFailed as e:
                where = "fails to quantize" if e.stage == "quantize" else f"fails in {recipe.runtime}"
                ctx.progress(f"recipes {recipe.name}: skipped, {where}: {e}")
                continue
            path = fsio.write_bytes(ctx.out_dir / name, built.read_bytes())
            records.append(
                describe_artifact(
                    path, RECIPES_FORMAT, recipe.name, made_with(recipe, source, ctx.calibration), ctx.out_dir
                )
            )
    return records
