"""The card's sections on what the checks after export found: the quantization recipes `toolkit quantize` tried,
and where the model fails, from the reports `toolkit report` wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit import manifest
from toolkit import workspace as ws
from toolkit.errors import ToolkitError
from toolkit.quantize import report as quantize_report
from toolkit.tables import markdown_table
from toolkit.workspace import Workspace


def quantization(workspace: Path) -> list[str]:
    """The quantization recipes `toolkit quantize` tried: every row, passing or not, and the file it kept."""
    outcome = quantize_report.read_report(workspace)
    if outcome is None:
        return []
    columns, rows, _ = quantize_report.table_rows(outcome)
    best = outcome.best
    kept = (
        f"it kept `{best.kept}`: {best.bytes:,} B, {best.percent_of_float32:.1f}% of the float32 file, "
        f"{best.accuracy:.2%} ({best.accuracy_delta_pp:+.2f} pp)."
        if best
        else "no recipe passed, so none was kept."
    )
    return [
        "",
        "## Quantization recipes",
        "",
        "`toolkit quantize` made each recipe from `mnist_cnn.float32.tflite` (ai-edge-quantizer; ONNX Runtime's",
        f"MatMulNBits for the `.onnx`), verified it on {outcome.images:,} test images against the Keras model with a "
        f"budget of {outcome.budget_pp:g} pp of accuracy loss, and kept the smallest file within it; {kept}",
        "Calibration and the per-layer errors used training images only "
        f"({outcome.calibration['images']:,}, {outcome.calibration['sampling']}). Failures are in the quantizer's or "
        "the runtime's own words; latency is a short batch-1 timing on one thread.",
        "",
        *markdown_table(columns, rows),
        "",
        f"![size against accuracy]({quantize_report.REPORT_DIR}/quantization.png)",
    ]


def current_reports(workspace: Path | Workspace) -> list[dict[str, Any]]:
    """The reports `toolkit report` wrote of files that are still the bytes it read (the report records their
    SHA-256): a report of an earlier export of the same name is left out of the card, not shown as this one's."""
    reports = []
    report_dir = ws.report(workspace)
    for path in sorted(report_dir.glob("*.report.json")) if report_dir.is_dir() else []:
        try:
            r = json.loads(path.read_text())
            scores = [v["f1-score"] for v in r["per_class"].values()] + [r["errors"], r["images"]]
            readable = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores)
            artifact = manifest.artifact_path(workspace, Path(r["artifact"]).name)  # never a file outside
            if readable and artifact.is_file() and Workspace.of(workspace).sha256(artifact) == r.get("sha256"):
                reports.append(r)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ToolkitError):
            continue  # a damaged report, or one of a file outside the workspace, is left out
    return reports


def failures(workspace: Path) -> list[str]:
    """The report's pictures and weakest classes, where `toolkit report` wrote them for the current files."""
    reports = current_reports(workspace)
    if not reports:
        return []
    lines = ["", "## Where it fails", ""]
    for r in reports:
        worst = sorted(r["per_class"].items(), key=lambda kv: kv[1]["f1-score"])[:3]
        lines += [
            f"`{r['artifact']}`: {r['errors']} errors in {r['images']:,} test images; weakest classes by F1: "
            + ", ".join(f"{k} ({v['f1-score']:.4f})" for k, v in worst)
            + ".",
            "",
        ]
    pictures = sorted({Path(f).name for r in reports for f in r.get("files", {}).values()})
    lines += [f"![{Path(p).stem}](report/{p})" for p in pictures if (ws.report(workspace) / p).is_file()]
    return lines
