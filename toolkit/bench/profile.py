"""`toolkit profile`: where a batch-1 call's time goes, layer by layer, set beside the compute floor.

A benchmark row says how far a runtime's p50 is from the floor (the model's FLOPs at this machine's measured
float32 peak); this says why. ONNX Runtime's own profiler times every node of an ONNX export; each node is given
to the Keras layer it came from (tf2onnx keeps the layer names in node names), and each layer's time is set beside
its FLOPs and weights: a layer near the peak is compute-bound, one far below it that streams its weights at a few
tens of GB/s is memory-bound (a batch-1 dense layer reads every weight once per image), and nodes of no layer
(layout reorders, the shape arithmetic of a dynamic batch) are pure overhead. The profiler adds about a
microsecond per node, so the unprofiled p50 of the same file, measured first in the same process, is shown too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import manifest
from toolkit import workspace as ws
from toolkit.artifacts import NATIVE
from toolkit.data import Dataset, to_model_input
from toolkit.errors import ToolkitError
from toolkit.machine import machine_info, measure_peak_gflops
from toolkit.model import NO_LAYER, flops_by_layer, layer_of, load_keras_model
from toolkit.runtimes import OnnxRunner
from toolkit.timing import time_calls
from toolkit.workspace import Workspace

OVERHEAD = NO_LAYER  # nodes that belong to no Keras layer


@dataclass
class LayerRow:
    layer: str
    kind: str  # the Keras layer class, or "" for OVERHEAD
    ops: list[str]  # the ONNX Runtime kernels that ran for it, after graph optimisation
    microseconds: float  # median per call, summed over the layer's nodes
    share: float  # of the profiled call
    mflop: float
    weight_bytes: int  # the weights it reads per call, at the file's weight width
    gflops_per_second: float | None
    fraction_of_peak: float | None
    weight_gb_per_second: float | None


@dataclass
class LayerProfile:
    artifact: str
    threads: int
    calls: int
    p50_ms: float  # unprofiled, same file, same process
    profiled_ms: float  # the sum of the layers' medians
    floor_ms: float
    peak_gflops: float
    machine: dict[str, Any]
    rows: list[LayerRow] = field(default_factory=list)
    method: str = (
        "ONNX Runtime profiler, batch 1, real test images; per node the median over the timed calls; nodes are given "
        "to the Keras layer named in them; FLOPs from the layer shapes; peak: numpy's float32 matrix product"
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_medians(trace: Path, calls: int) -> dict[str, tuple[str, float]]:
    """Per node of an ONNX Runtime profile: its op type and median kernel time in us over its last `calls` runs."""
    times: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            times[node].append(float(event["dur"]))
            ops[node] = event.get("args", {}).get("op_name", "?")
    return {node: (ops[node], float(np.median(t[-calls:]))) for node, t in times.items()}


def _weight_width(path: Path) -> int:
    """Bytes per weight of an ONNX file: 1 when its large initializers are 8-bit, else 4."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    big = [t for t in model.graph.initializer if np.prod(t.dims, dtype=np.int64) >= 1024]
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return 1 if big and all(t.data_type in eight_bit for t in big) else 4


def _onnx_record(workspace: Path, model: str | Path | None):
    """The manifest record to profile: `model`, which must be an ONNX artifact, else the float32 ONNX export (or the
    first ONNX artifact when there is none)."""
    files = [str(model)] if model else None
    onnx_records = [r for r in manifest.select(workspace, files, kinds=(NATIVE,)) if r.file.endswith(".onnx")]
    if not onnx_records:
        what = f"{model}: not an ONNX artifact" if model else f"{ws.manifest(workspace)}: no ONNX artifact"
        raise ToolkitError(f"{what}; `toolkit profile` reads ONNX Runtime's per-node timings (export --format onnx)")
    return next((r for r in onnx_records if r.variant == "float32"), onnx_records[0])


def _time_nodes(path: Path, images: np.ndarray, threads: int, calls: int) -> tuple[float, dict[str, tuple[str, float]]]:
    """The file's unprofiled p50 in ms over test images at batch 1, then `node_medians` of a profiled session."""
    batches = [images[i : i + 1] for i in range(len(images))]
    plain = OnnxRunner(path, threads=threads)
    p50_ms = float(np.median(time_calls(plain.run, batches, warmup=200, runs=calls))) / 1e6
    del plain
    with tempfile.TemporaryDirectory(prefix="toolkit-profile-") as tmp:
        runner = OnnxRunner(path, threads=threads, profile_prefix=os.path.join(tmp, "ort"))
        time_calls(runner.run, batches, warmup=200, runs=calls)
        nodes = node_medians(runner.end_profiling(), calls)
    return p50_ms, nodes


def _by_layer(nodes: dict[str, tuple[str, float]], layers: list[str]) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Each layer's summed node time in us, and its kernels in the order they first ran; OVERHEAD takes the nodes
    of no layer."""
    per_layer: dict[str, float] = defaultdict(float)
    layer_ops: dict[str, list[str]] = defaultdict(list)
    for node, (op, us) in nodes.items():
        name = layer_of(node, layers)
        per_layer[name] += us
        if op not in layer_ops[name]:
            layer_ops[name].append(op)
    return per_layer, layer_ops


def _layer_rows(
    per_layer: dict[str, float], layer_ops: dict[str, list[str]], keras_model, flops: dict[str, int], width: int, peak
) -> list[LayerRow]:
    """A row per layer that ran, in the model's order and OVERHEAD last: its time beside its FLOPs and weights."""
    kinds = {layer.name: type(layer).__name__ for layer in keras_model.layers}
    params = {layer.name: int(layer.count_params()) for layer in keras_model.layers}
    total = sum(per_layer.values())
    rows = []
    for name in [*flops, OVERHEAD]:
        if name not in per_layer:
            continue
        us, f = per_layer[name], flops.get(name, 0)
        weight_bytes = params.get(name, 0) * width
        rate = f / us / 1e3 if us and f else None
        rows.append(
            LayerRow(
                layer=name,
                kind=kinds.get(name, ""),
                ops=layer_ops[name],
                microseconds=round(us, 1),
                share=round(us / total, 4),
                mflop=round(f / 1e6, 3),
                weight_bytes=weight_bytes,
                gflops_per_second=round(rate, 1) if rate else None,
                fraction_of_peak=round(rate / peak, 3) if rate else None,
                weight_gb_per_second=round(weight_bytes / us / 1e3, 1) if us and weight_bytes else None,
            )
        )
    return rows


def profile(
    workspace: str | Path, dataset: Dataset, model: str | Path | None = None, threads: int = 1, calls: int = 2000
) -> LayerProfile:
    """Profile one ONNX artifact of the workspace (default: its float32 ONNX export) at batch 1 on `threads`."""
    workspace = Path(workspace)
    record = _onnx_record(workspace, model)
    path = manifest.certified(workspace, record)
    keras_model = load_keras_model(ws.model(workspace))
    flops = flops_by_layer(keras_model)
    width = _weight_width(path)
    images = to_model_input(dataset.x_test[:256], Workspace.of(workspace).input_contract())
    p50_ms, nodes = _time_nodes(path, images, threads, calls)
    peak = measure_peak_gflops(threads)
    per_layer, layer_ops = _by_layer(nodes, list(flops))
    return LayerProfile(
        artifact=record.file,
        threads=threads,
        calls=calls,
        p50_ms=round(p50_ms, 4),
        profiled_ms=round(sum(per_layer.values()) / 1e3, 4),
        floor_ms=round(sum(flops.values()) / peak / 1e6, 4),
        peak_gflops=round(peak, 1),
        machine=machine_info(),
        rows=_layer_rows(per_layer, layer_ops, keras_model, flops, width, peak),
    )
