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


# runtime names: every record and row names its runtime with one of these
LITERT, LITERT_COMPILED, ONNXRUNTIME, ONNXRUNTIME_CUDA = "litert", "litert-compiled", "onnxruntime", "onnxruntime-cuda"
KERAS, KERAS_PREDICT, KERAS_COMPILED, TENSORFLOW_GPU = "keras", "keras-predict", "keras-compiled", "tensorflow-gpu"
LITERTJS, ORT_WEB = "litertjs-wasm", "onnxruntime-web-wasm"
LITERT_MICRO, ETHOS_U = "litert-micro", "ethos-u"

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime(LITERT, NATIVE, ".tflite", "LiteRT (ai_edge_litert Interpreter, XNNPACK)"),
        Runtime(LITERT_COMPILED, NATIVE, ".tflite", "LiteRT CompiledModel API (ai_edge_litert, CPU)"),
        Runtime(ONNXRUNTIME, NATIVE, ".onnx", "ONNX Runtime, CPU execution provider"),
        Runtime(ONNXRUNTIME_CUDA, NATIVE, ".onnx", "ONNX Runtime, CUDA execution provider", device="gpu"),
        Runtime(KERAS, NATIVE, ".keras", "Keras"),
        Runtime(KERAS_PREDICT, NATIVE, ".keras", "Keras model.predict (baseline)"),
        Runtime(KERAS_COMPILED, NATIVE, ".keras", "Keras model in a tf.function (baseline)"),
        Runtime(TENSORFLOW_GPU, NATIVE, ".keras", "Keras on TensorFlow's GPU device", device="gpu"),
        Runtime(LITERTJS, BROWSER, ".tflite", "LiteRT.js (WebAssembly) in Chromium"),
        Runtime(ORT_WEB, BROWSER, ".onnx", "ONNX Runtime Web (WebAssembly) in Chromium"),
        Runtime(LITERT_MICRO, MICRO, ".c", "LiteRT for Microcontrollers (tflite-micro, reference kernels)"),
        Runtime(ETHOS_U, ESTIMATE, ".tflite", "Arm Ethos-U NPU: Vela-compiled, Vela's performance-model estimates"),
    )
}
KERAS_BASELINES = (KERAS_PREDICT, KERAS_COMPILED)  # how the benchmark measures the Keras model


def second_runtime(runtime_name: str, fmt: str | None) -> str | None:
    """The other runtime that verify cross-checks and benchmark measures a file in, or None: LiteRT's CompiledModel
    API for the phone's `.tflite` files (format tflite, or a file in no manifest, `fmt` None)."""
    if runtime_name == LITERT and fmt in (TFLITE_FORMAT, None):
        return LITERT_COMPILED
    return None


# The one suffix table: which native runtime runs a file given by path, and which browser runtime runs a web model
NATIVE_BY_SUFFIX = {".tflite": LITERT, ".onnx": ONNXRUNTIME, ".ort": ONNXRUNTIME, ".keras": KERAS}
BROWSER_BY_SUFFIX = {".tflite": LITERTJS, ".onnx": ORT_WEB}


# format names: the `format` of every manifest record
TFLITE_FORMAT, ONNX_FORMAT, MICRO_FORMAT, WEB_FORMAT, RECIPES_FORMAT = "tflite", "onnx", "micro", "web", "recipes"
ORT_FORMAT = "ort"  # ONNX Runtime Mobile
VELA_FORMAT = "vela"  # written by the micro export (one per Ethos-U configuration), never asked for by name
KERAS_FORMAT = "keras"  # the Keras model itself, as a benchmark row
# what a phone or an edge board runs, and so what `verify --arch arm64` runs on ARM64 kernels: the files of these
# formats with these suffixes, in the native runtime of their suffix (the web's files too; not the C array)
PHONE_FORMATS = (TFLITE_FORMAT, ONNX_FORMAT, ORT_FORMAT, MICRO_FORMAT, WEB_FORMAT)
PHONE_SUFFIXES = (".tflite", ".onnx", ".ort")


@dataclass(frozen=True)
class Format:
    """One export format: the module that writes it (its `VARIANTS` and `export(ctx, variants)`), the suffixes of
    the files it writes, whether `--format all` includes it, other names it answers to, and its one-line help."""

    name: str
    module: str
    suffixes: tuple[str, ...]
    in_all: bool
    aliases: tuple[str, ...]
    help: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            TFLITE_FORMAT, "toolkit.export.tflite", (".tflite",), True, (), "LiteRT: float32, float16, dynamic, int8"
        ),
        Format(ONNX_FORMAT, "toolkit.export.onnx", (".onnx",), True, (), "ONNX: float32, int8"),
        Format(
            ORT_FORMAT,
            "toolkit.export.ort",
            (".ort", ".config"),
            True,
            (),
            "ONNX Runtime Mobile .ort: float32, int8",
        ),
        Format(
            MICRO_FORMAT,
            "toolkit.micro.carray",
            (".tflite", ".c", ".h"),
            True,
            ("c",),
            "microcontrollers: batch-1 int8 .tflite, C array and header, Vela builds for Ethos-U",
        ),
        Format(
            WEB_FORMAT,
            "toolkit.web.export",
            (".tflite", ".onnx"),
            True,
            (),
            "the web app (LiteRT.js, ONNX Runtime Web)",
        ),
        Format(
            RECIPES_FORMAT,
            "toolkit.quantize.export",
            (".tflite", ".onnx"),
            False,  # minutes of quantizing, and some recipes fail by design
            (),
            "quantization recipes (ai-edge-quantizer, MatMulNBits); not in all",
        ),
    )
}
FORMAT_ALIASES = {alias: f.name for f in FORMATS.values() for alias in f.aliases}


def formats_help() -> str:
    """The `--format` help, from the registry: every format, what it writes, and `all`."""
    listed = "; ".join(
        f"{f.name}" + (f" (or {', '.join(f.aliases)})" if f.aliases else "") + f": {f.help}" for f in FORMATS.values()
    )
    return f"Comma-separated formats, or all (every format but recipes). {listed}."


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
