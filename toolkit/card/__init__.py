"""MODEL_CARD.md for a workspace, written from what was recorded: metrics.json, manifest.json, the report
files and the benchmark results. Nothing in it is typed by hand.

The card reads the manifest as typed values (`manifest.records`, and `Header` for the model-level fields); each
module beside this one writes the sections of one source, and this one puts them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import fsio, manifest
from toolkit import workspace as ws
from toolkit.card.about import intro_own, intro_reference, training_of
from toolkit.card.architectures import arm64
from toolkit.card.benchmark import RELEASE, benchmark_files, latency, latest_benchmark
from toolkit.card.files import accuracy, inputs_outputs, made_with, phone
from toolkit.card.findings import failures, quantization
from toolkit.card.header import Header
from toolkit.card.provenance import RELEASE_COMMANDS, provenance
from toolkit.workspace import Workspace

__all__ = ["RELEASE", "RELEASE_COMMANDS", "benchmark_files", "latest_benchmark", "model_card", "write_model_card"]


def model_card(workspace: Path | Workspace, bench: dict[str, Any] | None) -> str:
    """The card's text: one section per function, in the order a reader needs them, each written from what was
    recorded."""
    workspace = Workspace.of(workspace)
    header = Header.from_dict(manifest.read(workspace))
    records = manifest.records(workspace)
    metrics = fsio.read_json(workspace.metrics_path) if workspace.metrics_path.exists() else None
    sections = [
        intro_reference() if header.is_reference else intro_own(header, metrics),
        training_of(metrics, workspace.metrics_path) if metrics else [],
        accuracy(records),
        arm64(records),
        latency(bench) if bench else [],
        phone(records, bench),
        made_with(records),
        quantization(workspace),
        inputs_outputs(header, records),
        failures(workspace),
        provenance(header, records, metrics, workspace.root.resolve() == RELEASE),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def write_model_card(workspace: Path | Workspace) -> Path:
    workspace = Workspace.of(workspace)
    bench = latest_benchmark(benchmark_files(workspace))
    return fsio.write_text(ws.model_card(workspace), model_card(workspace, bench))
