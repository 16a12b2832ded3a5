"""The toolkit's vocabulary: which runtimes run artifacts, where they run, and how a tensor is described.

Every runtime name that appears in a manifest record or a benchmark row is defined here once, with the kind
of place it runs in. Verify, benchmark and predict ask this module ("is this a native runtime?") instead of
comparing names; a new runtime is one entry here plus its runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ToolkitError

# where a runtime runs, which decides the loop that verifies and benchmarks it
NATIVE = "native"  # a library in this process or a worker process (LiteRT, ONNX Runtime, Keras)
BROWSER = "browser"  # inside the web app in headless Chromium
MICRO = "micro"  # the microcontroller interpreter (LiteRT for Microcontrollers)
ESTIMATE = "estimate"  # a compiler's performance model, not a measurement (Arm Vela for Ethos-U)


@dataclass(frozen=True)
class Runtime:
    name: str
    kind: str  # NATIVE, BROWSER, MICRO or ESTIMATE
    suffix: str  # the artifact file suffix it runs ("" for runtimes that run no file of ours)
    label: str  # what a person calls it
    device: str = "cpu"


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("litert", NATIVE, ".tflite", "LiteRT (ai_edge_litert Interpreter, XNNPACK)"),
        Runtime("onnxruntime", NATIVE, ".onnx", "ONNX Runtime, CPU execution provider"),
        Runtime("onnxruntime-cuda", NATIVE, ".onnx", "ONNX Runtime, CUDA execution provider", device="gpu"),
        Runtime("keras", NATIVE, ".keras", "Keras"),
        Runtime("keras-predict", NATIVE, ".keras", "Keras model.predict (baseline)"),
        Runtime("keras-compiled", NATIVE, ".keras", "Keras model in a tf.function (baseline)"),
        Runtime("tensorflow-gpu", NATIVE, ".keras", "Keras on TensorFlow's GPU device", device="gpu"),
        Runtime("litertjs-wasm", BROWSER, ".tflite", "LiteRT.js (WebAssembly) in Chromium"),
        Runtime("onnxruntime-web-wasm", BROWSER, ".onnx", "ONNX Runtime Web (WebAssembly) in Chromium"),
        Runtime("litert-micro", MICRO, ".c", "LiteRT for Microcontrollers (tflite-micro, reference kernels)"),
        Runtime("ethos-u", ESTIMATE, ".tflite", "Arm Ethos-U NPU: Vela-compiled, Vela's performance-model estimates"),
    )
}
KERAS_BASELINES = ("keras-predict", "keras-compiled")  # how the benchmark measures the Keras model
NATIVE_BY_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime", ".keras": "keras"}  # what runs a file given by path


def runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ToolkitError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def kind_of(name: str) -> str:
    """The kind of a runtime name (an unknown name counts as native, so that it fails where it is loaded)."""
    return RUNTIMES[name].kind if name in RUNTIMES else NATIVE


@dataclass
class TensorSpec:
    """One input or output tensor of an artifact, as its runtime reports it."""

    name: str
    shape: list[int]  # -1 where the dimension is dynamic
    dtype: str
    quantization: dict[str, float] | None = None  # {"scale": s, "zero_point": z} for integer tensors

    @property
    def scale(self) -> float | None:
        return None if self.quantization is None else float(self.quantization["scale"])

    @property
    def zero_point(self) -> int | None:
        return None if self.quantization is None else int(self.quantization["zero_point"])
