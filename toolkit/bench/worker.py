"""One native benchmark measurement in a fresh process: `python -m toolkit.bench.worker '<json spec>'` prints JSON.

A process per artifact, runtime and thread count keeps runs from disturbing each other, makes the cold
start real, gives each its own peak memory, and keeps a crashing native runtime away from the caller.
The timed loop is the runner's own `run` call and nothing else; `harness_check` compares it with LiteRT's
bare set_tensor/invoke/get_tensor calls, to show what the harness adds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from toolkit.artifacts import KERAS_BASELINES, KERAS_PREDICT, LITERT, LITERT_COMPILED, ONNXRUNTIME_CUDA
from toolkit.machine import current_rss_mb, vm_hwm_mb
from toolkit.timing import runs_for, stats_ms, time_calls, warmup_for


def _import_runtime(runtime: str, threads: int) -> str:
    """Import the runtime's libraries (timed apart from the cold start); return the device it will use."""
    if runtime in KERAS_BASELINES:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # baseline only: the Keras model on its TensorFlow backend

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras  # noqa: F401

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if runtime == LITERT:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    elif runtime == LITERT_COMPILED:
        from ai_edge_litert.compiled_model import CompiledModel  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
    return "gpu" if runtime == ONNXRUNTIME_CUDA else "cpu"


def _make_call(spec: dict):
    """Load the target and return the call to time. Everything that is not the timed call happens here."""
    path, runtime, threads = Path(spec["path"]), spec["runtime"], spec["threads"]
    if runtime in KERAS_BASELINES:
        import tensorflow as tf

        from toolkit.model import load_keras_model

        model = load_keras_model(path)
        if runtime == KERAS_PREDICT:
            return lambda x: model.predict(x, verbose=0)
        serve = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: serve(tf.constant(x)).numpy()
    from toolkit import runtimes

    if runtime == ONNXRUNTIME_CUDA:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        runner = runtimes.load(path, threads=threads, providers=providers, probe=False)
        if runner.providers[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime fell back to {runner.providers[0]}")
        return runner.run
    runner = runtimes.load(path, threads=threads, probe=False, runtime_name=runtime)  # this process is disposable
    return runner.run


def measure(spec: dict) -> dict:
    t_start = time.perf_counter()
    from toolkit import runtimes  # noqa: F401  (the import is not part of the cold start)

    images = np.load(spec["images"], allow_pickle=False)
    device = _import_runtime(spec["runtime"], spec["threads"])
    import_s = time.perf_counter() - t_start
    rss_before = current_rss_mb()

    t0 = time.perf_counter()
    call = _make_call(spec)
    call(images[:1])
    load_ms = (time.perf_counter() - t0) * 1e3

    rows = []
    for b in spec["batch_sizes"]:
        batches = [images[i : i + b] for i in range(0, len(images) - b + 1, b)][:64]
        runs = runs_for(b, spec["iterations"])
        budget = spec.get("seconds")
        if budget:  # a slow target (the Keras predict baseline) gets as many calls as fit the budget, >= 20
            per_call = float(np.median(time_calls(call, batches, 0, 3))) / 1e9
            runs = min(runs, max(20, int(budget / per_call)))
        samples = time_calls(call, batches, warmup_for(b, spec["warmup"]), runs)
        rows.append({"batch_size": b, **stats_ms(samples)})
    return {
        "load_ms": load_ms,
        "import_s": import_s,
        "rows": rows,
        "device": device,
        "peak_rss_mb": vm_hwm_mb(),
        "rss_before_load_mb": rss_before,
    }


def harness_check(spec: dict) -> dict:
    """The harness against a bare loop of LiteRT's own calls (set_tensor, invoke, get_tensor) on the same file.

    Both run in this one process, interleaved over several rounds (A, B, B, A, ...), so that the drift of a
    shared machine hits both alike; the medians of the per-round p50s are compared.
    """
    from ai_edge_litert.interpreter import Interpreter

    from toolkit import runtimes

    images = np.load(spec["images"], allow_pickle=False)[:64]
    batches = [images[i : i + 1] for i in range(len(images))]
    runner = runtimes.load(spec["path"], threads=spec["threads"], probe=False)
    interp = Interpreter(model_path=spec["path"], num_threads=spec["threads"])
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def bare(x):
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    harness_p50, bare_p50 = [], []
    for r in range(spec.get("rounds", 5)):
        order = [(runner.run, harness_p50), (bare, bare_p50)]
        for fn, sink in order if r % 2 == 0 else order[::-1]:
            sink.append(stats_ms(time_calls(fn, batches, spec["warmup"], spec["iterations"]))["p50_ms"])
    return {
        "harness_p50_ms_rounds": harness_p50,
        "bare_p50_ms_rounds": bare_p50,
        "harness_p50_ms": float(np.median(harness_p50)),
        "bare_loop_p50_ms": float(np.median(bare_p50)),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = harness_check(spec) if spec.get("mode") == "harness_check" else measure(spec)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
