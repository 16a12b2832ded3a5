"""The `web` export format: DIR/web/, a static site that classifies hand-drawn digits offline in the browser.

Models in DIR/web/models/, each recorded in the manifest (format "web") with the browser runtime that runs it:
- LiteRT.js (`litertjs-wasm`): float32, float16, dynamic and int8 `.tflite`, converted from a copy of the
  model rebuilt with a fixed batch of 1 (LiteRT.js cannot resize a dynamic batch), and the int8 model with
  float32 input and output (LiteRT.js has no int8 tensors: "Element type INT8 is not supported");
- ONNX Runtime Web (`onnxruntime-web-wasm`): float32 and int8 (QDQ) `.onnx`, made exactly as the native ones
  (dynamic batch, so verification runs in batches).
The page, its scripts and `models.json` (what the page offers) come beside them, and the runtimes' files
are copied from npm packages into DIR/web/vendor/ (see `toolkit.web.app`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import fsio, manifest
from toolkit import workspace as ws
from toolkit.artifacts import BROWSER_BY_SUFFIX, WEB_FORMAT
from toolkit.export import ExportContext, describe_artifact
from toolkit.export import onnx as onnx_export
from toolkit.export import tflite as tflite_export
from toolkit.manifest import ArtifactRecord
from toolkit.model import with_fixed_batch
from toolkit.web import app

VARIANTS = ("float32", "float16", "dynamic", "int8")  # LiteRT.js all four, ONNX Runtime Web float32 and int8
SITE_DIR = ws.SITE_DIR
MODELS_DIR = ws.SITE_MODELS_DIR
# (file suffix, variant) in the order the page lists them; ONNX Runtime Web gets the two ONNX variants
WEB_MODELS = (
    ("tflite", "float32"),
    ("tflite", "float16"),
    ("tflite", "dynamic"),
    ("tflite", "int8"),
    ("onnx", "float32"),
    ("onnx", "int8"),
)


def model_entry(record: ArtifactRecord, site: Path) -> dict[str, Any]:
    suffix = Path(record.file).suffix[1:]
    return {
        "id": f"{record.runtime.split('-')[0]}-{record.variant}",
        "file": str(Path(record.file).relative_to(SITE_DIR)),
        "runtime": record.runtime,
        "format": suffix,
        "variant": record.variant,
        "bytes": record.bytes,
        "sha256": record.sha256,
        "batch": record.input.shape[0] if record.input.shape[0] > 0 else None,
        "input": {"name": record.input.name, "shape": record.input.shape, "dtype": record.input.dtype},
        "output": {"name": record.output.name, "shape": record.output.shape, "dtype": record.output.dtype},
    }


def page_mode(preprocessing: dict[str, str], channels: int) -> str:
    """How the page takes an image: a drawing pad centred like MNIST (digits), a plain drawing pad (other grey
    models), or an image upload (RGB models)."""
    if channels == 3:
        return "rgb"
    return "digit" if "digit_centering" in preprocessing else "grey"


def write_models_json(site: Path, records: list[ArtifactRecord], vendor: list[dict], ctx: ExportContext) -> Path:
    shape = [int(s) for s in records[0].input.shape[1:]] if records else []
    return fsio.write_json(
        site / "models.json",
        {
            "model": ctx.name,
            "labels": ctx.labels,
            "preprocessing": ctx.preprocessing,
            # the page turns pixels into inputs with these numbers: (pixel - mean) / std per channel
            "input_contract": ctx.contract.for_channels(shape[-1] if shape else 1).to_dict(),
            "input_shape": shape,
            "mode": page_mode(ctx.preprocessing, shape[-1] if shape else 1),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "default": model_entry(records[0], site)["id"] if records else None,
            "models": [model_entry(r, site) for r in records],
            "vendor": vendor,
        },
    )


def export(ctx: ExportContext, variants: list[str]) -> list[ArtifactRecord]:
    site = ws.site(ctx.out_dir)
    models = site / MODELS_DIR
    fsio.ensure_dir(models)
    chosen = [(fmt, v) for fmt, v in WEB_MODELS if v in variants]
    records: list[ArtifactRecord] = []
    batch1 = with_fixed_batch(ctx.model) if any(fmt == "tflite" for fmt, _ in chosen) else None
    for fmt, variant in chosen:
        path = models / f"{ctx.name}.{variant}.{fmt}"
        if fmt == "tflite":
            made_with = tflite_export.write(ctx, variant, path, model=batch1, int8_io=False, label="web tflite")
        else:
            made_with = onnx_export.write(ctx, variant, path, label="web onnx")
        record = describe_artifact(path, WEB_FORMAT, variant, made_with, ctx.out_dir)
        record.file = str(path.relative_to(ctx.out_dir))
        record.runtime = BROWSER_BY_SUFFIX[path.suffix]
        records.append(record)
    ctx.progress("web: copying the page and the runtimes (npm packages) into " + str(site))
    app.copy_site(site)
    vendor = app.install_vendor(site, ctx.progress)
    # the page lists every web model present, also those exported by an earlier run
    known = {
        r.file: r
        for r in manifest.records(ctx.out_dir)
        if r.format == WEB_FORMAT and (ctx.out_dir / r.file).is_file() and Path(r.file).name.startswith(f"{ctx.name}.")
    }
    known.update({r.file: r for r in records})
    order = {f"{SITE_DIR}/{MODELS_DIR}/{ctx.name}.{v}.{f}": i for i, (f, v) in enumerate(WEB_MODELS)}
    write_models_json(site, sorted(known.values(), key=lambda r: order.get(r.file, 99)), vendor, ctx)
    return records
