"""One way to load any artifact and run it: `load(path) -> Runner`, `runner.run(float32 batch) -> probabilities`.

Verify, benchmark and predict all go through here. `.tflite` files run in LiteRT (`ai_edge_litert`), `.onnx`
files in ONNX Runtime, `.keras` files in Keras. int8 inputs and outputs are quantized and dequantized here with
the scale and zero point the file declares, so every runner takes the float32 model input (pixels made inputs by
the input contract, toolkit.contract) and returns probabilities. Importing this module imports neither TensorFlow
nor Keras: an edge app needs only LiteRT or ONNX Runtime and numpy.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from toolkit import children
from toolkit.artifacts import KERAS, LITERT, LITERT_COMPILED, NATIVE_BY_SUFFIX, ONNXRUNTIME, TensorSpec, runtime
from toolkit.errors import ToolkitError, first_line
from toolkit.fsio import captured_output

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
ORT_IDENTIFIER = b"ORTM"  # the same place in an ONNX Runtime Mobile .ort file
# protobuf tags that can open an ONNX ModelProto: fields 1-8 (ir_version, producer, ..., graph, opset_import),
# 14 (metadata_props), 20 (training_info), 25 (functions)
ONNX_FIRST_TAGS = {bytes([t]) for t in (0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA)}


class Runner(Protocol):
    path: Path
    runtime: str  # a name of toolkit.artifacts.RUNTIMES
    threads: int | None
    input: TensorSpec
    output: TensorSpec

    def run(self, images: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------------------------- input, int8 helpers


def _describe(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(str(s) for s in shape) + ")"


def check_images(images: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The input contract: float32 (N, H, W, C) of the model's own `shape` (H, W, C) (grayscale also as (N, H, W)),
    finite (pixels made into inputs by the input contract). Without `shape`, any image batch (C = 1 or 3) is taken."""
    if (
        type(images) is np.ndarray
        and images.dtype == np.float32
        and images.ndim == 4
        and (images.shape[1:] == shape if shape else images.shape[-1] in (1, 3))
        and images.shape[0] > 0
        and images.flags.c_contiguous
        and np.isfinite(images).all()
    ):
        return images  # the common case, checked in about 3 microseconds
    if not isinstance(images, np.ndarray):
        raise ToolkitError(f"input must be a numpy array, got {type(images).__name__}")
    if images.ndim == 3 and (shape is None or (shape[2] == 1 and images.shape[1:] == shape[:2])):
        images = images[..., np.newaxis]
    if images.ndim != 4 or (images.shape[1:] != shape if shape else images.shape[-1] not in (1, 3)):
        wanted = _describe(shape) if shape else "(N, height, width, 1 or 3)"
        raise ToolkitError(f"input must have shape {wanted}, got {images.shape}")
    if images.shape[0] == 0:
        raise ToolkitError("input holds no images (batch of 0)")
    if images.dtype != np.float32:
        if images.dtype.kind != "f":
            raise ToolkitError(
                f"input must be float32 model inputs, got {images.dtype} (apply the input contract; reference: / 255)"
            )
        images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise ToolkitError("input contains NaN or infinity")
    return np.ascontiguousarray(images)


def image_shape(spec: TensorSpec) -> tuple[int, ...]:
    """(H, W, C) of an input tensor."""
    return tuple(int(s) for s in spec.shape[1:])


def check_io(path: Path, input: TensorSpec, output: TensorSpec) -> None:
    """The contract of an image classifier: input (N, H, W, C) with C = 1 or 3, output (N, classes) with at
    least 2 classes (probabilities)."""
    shape = image_shape(input)
    if len(shape) != 3 or shape[2] not in (1, 3) or min(shape[:2]) < 1:
        raise ToolkitError(
            f"{path}: input shape {input.shape} is not an image batch (N, height, width, 1 or 3 channels)"
        )
    if len(output.shape) != 2 or output.shape[1] < 2:
        raise ToolkitError(f"{path}: output shape {output.shape} is not (N, classes): not a classifier")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def predict(runner: Runner, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Run a large array through `runner` in batches."""
    images = check_images(images, image_shape(runner.input))
    out = [runner.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


# -------------------------------------------------------------------------------------------- LiteRT


class LiteRTRunner:
    runtime = LITERT

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.threads = path, threads
        try:
            with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every load
                # from bytes: the bindings take only UTF-8 paths, and a workspace path need not be one
                self._interp = Interpreter(model_content=path.read_bytes(), num_threads=threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ToolkitError(f"{path}: LiteRT cannot load it ({first_line(e)})") from None
        inp, out = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ToolkitError(f"{path}: expected one input and one output, found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        self.input, self.output = _litert_spec(self._in), _litert_spec(self._out)
        check_io(path, self.input, self.output)
        self.shape = image_shape(self.input)
        self._batch = int(self._in["shape"][0])
        self._fixed_batch = self.input.shape[0] != -1
        # what run() needs, looked up once: each call is a few microseconds of Python around the kernels
        self._in_index, self._out_index = self._in["index"], self._out["index"]
        q = self.input.quantization
        self._in_q = None if q is None else (q["scale"], q["zero_point"], np.dtype(self.input.dtype))
        q = self.output.quantization
        self._out_q = None if q is None else (q["scale"], q["zero_point"])

    def run(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.shape)
        n = images.shape[0]
        if n != self._batch:
            if self._fixed_batch:  # a fixed-batch model (the web one) runs image by image
                return np.concatenate([self.run(images[i : i + self._batch]) for i in range(0, n, self._batch)])
            self._interp.resize_tensor_input(self._in["index"], [n, *self.shape], strict=True)
            self._interp.allocate_tensors()
            self._batch = n
        interp = self._interp
        try:
            interp.set_tensor(self._in_index, images if self._in_q is None else quantize(images, *self._in_q))
            interp.invoke()
        except (RuntimeError, ValueError) as e:  # a file that loads but cannot run a batch (some int4 recipes)
            raise ToolkitError(f"{self.path}: LiteRT failed to run it on a batch of {n} ({first_line(e)})") from None
        y = interp.get_tensor(self._out_index)
        return y if self._out_q is None else dequantize(y, *self._out_q)


def _litert_environment():
    """One LiteRT environment for every CompiledModel of this process, made quietly, and kept to the end: LiteRT
    logs its set-up ("Creating LiteRT environment", accelerators it could not load) and each accelerator it
    destroys ("INFO: DestroyAccelerator") on stderr. The end is after the command has said everything, and from
    then on stderr goes nowhere."""
    global _environment
    if _environment is None:
        from ai_edge_litert.environment import Environment

        with captured_output():
            _environment = Environment.create()
        atexit.register(lambda: os.dup2(os.open(os.devnull, os.O_WRONLY), 2))
    return _environment


_environment = None


class LiteRTCompiledRunner:
    """LiteRT's newer CompiledModel API (`ai_edge_litert.compiled_model`) on the CPU, beside the Interpreter: where
    LiteRT's GPU and NPU acceleration work goes. It runs the batch the model was compiled with, 1; a batch of n is
    n calls, as a phone app makes them (a resized buffer set was measured to corrupt memory in 2.3.0). Tensor
    names, types and int8 scales come from the same file read by the Interpreter, which is then dropped."""

    runtime = LITERT_COMPILED

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.options import Options

        self.path, self.threads = path, threads
        described = LiteRTRunner(path, threads=1)
        self.input, self.output, self.shape = described.input, described.output, described.shape
        self._in_q, self._out_q = described._in_q, described._out_q
        self._classes = int(self.output.shape[-1])
        self._out_dtype = np.dtype(self.output.dtype)
        try:
            with captured_output():  # vendor plugins it cannot load here (OpenVINO, ...) are reported on stderr
                self._model = CompiledModel.from_buffer(
                    path.read_bytes(),
                    environment=_litert_environment(),
                    options=Options(cpu_options=CpuOptions(num_threads=threads or 0)),
                )
                self._inputs, self._outputs = self._model.create_input_buffers(0), self._model.create_output_buffers(0)
                self.run(np.zeros((1, *self.shape), np.float32))  # the environment logs its set-up on a first run
        except (RuntimeError, ValueError) as e:
            raise ToolkitError(f"{path}: LiteRT's CompiledModel cannot load it ({first_line(e)})") from None

    def run(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.shape)
        out = np.empty((images.shape[0], self._classes), np.float32)
        for i, image in enumerate(images):
            x = image[None] if self._in_q is None else quantize(image[None], *self._in_q)
            try:
                self._inputs[0].write(np.ascontiguousarray(x).ravel())
                self._model.run_by_index(0, self._inputs, self._outputs)
                y = np.asarray(self._outputs[0].read(self._classes, self._out_dtype))
            except (RuntimeError, ValueError) as e:
                raise ToolkitError(f"{self.path}: LiteRT's CompiledModel failed to run it ({first_line(e)})") from None
            out[i] = y if self._out_q is None else dequantize(y, *self._out_q)
        return out


def _litert_spec(d: dict) -> TensorSpec:
    scale, zero_point = d.get("quantization", (0.0, 0))
    signature = d.get("shape_signature", d["shape"])
    quantized = np.dtype(d["dtype"]).kind in "iu" and scale != 0.0
    return TensorSpec(
        name=d["name"],
        shape=[int(s) for s in signature],
        dtype=np.dtype(d["dtype"]).name,
        quantization={"scale": float(scale), "zero_point": int(zero_point)} if quantized else None,
    )


# -------------------------------------------------------------------------------------- ONNX Runtime


class OnnxRunner:
    runtime = ONNXRUNTIME

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimize: bool = True,
        profile_prefix: str | None = None,
    ):
        """`profile_prefix`: record ONNX Runtime's per-node timings into a JSON file of that prefix
        (`end_profiling` returns it); for `toolkit profile`, never while a benchmark times the runner."""
        import onnxruntime as ort

        self.path, self.threads = path, threads
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = ort.InferenceSession(  # from bytes, as LiteRT: any file name works
                path.read_bytes(), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for malformed files
            raise ToolkitError(f"{path}: ONNX Runtime cannot load it ({first_line(e)})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input, self.output = _ort_spec(inputs[0]), _ort_spec(outputs[0])
        check_io(path, self.input, self.output)
        self.shape = image_shape(self.input)
        self.providers = self._session.get_providers()
        self._fetch, self._feed = [self.output.name], self.input.name

    def run(self, images: np.ndarray) -> np.ndarray:
        (y,) = self._session.run(self._fetch, {self._feed: check_images(images, self.shape)})
        return y if y.dtype == np.float32 else y.astype(np.float32)

    def end_profiling(self) -> Path:
        """Stop profiling; the JSON trace of every node run since the session started."""
        return Path(self._session.end_profiling())


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


def _ort_spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


# --------------------------------------------------------------------------------------------- Keras


class KerasRunner:
    runtime = KERAS

    def __init__(self, path: Path, threads: int | None = None, model=None):
        """`model`: the file's Keras model where the caller has it loaded already (a Workspace loads it once)."""
        from toolkit.model import LOGITS, interface_of, load_keras_model, with_probabilities  # imports Keras lazily

        self.path, self.threads = path, threads
        self.model = model if model is not None else load_keras_model(path)
        if interface_of(self.model, path).output == LOGITS:  # the exports end in a softmax: so does the reference
            self.model = with_probabilities(self.model)
        inputs, outputs = self.model.inputs, self.model.outputs
        shape = [-1 if d is None else int(d) for d in inputs[0].shape]
        self.input = TensorSpec(name=inputs[0].name, shape=shape, dtype="float32")
        out_shape = [-1 if d is None else int(d) for d in outputs[0].shape]
        self.output = TensorSpec(name=outputs[0].name, shape=out_shape, dtype="float32")
        check_io(path, self.input, self.output)
        self.shape = image_shape(self.input)

    def run(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.shape)
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- load

RUNNERS = {LITERT: LiteRTRunner, LITERT_COMPILED: LiteRTCompiledRunner, ONNXRUNTIME: OnnxRunner, KERAS: KerasRunner}


def load(
    path: str | Path,
    threads: int | None = None,
    providers: list[str] | None = None,
    probe: bool = True,
    runtime_name: str | None = None,
) -> Runner:
    """Load an artifact in the runtime an edge app would use, after checking the file is what it claims.

    With `probe` (the default), a `.tflite` or `.onnx` file is first loaded and run once in a child process,
    so that a malformed file that crashes the native runtime ends in a ToolkitError, not in a crash of
    this process. Files the toolkit has just written, and processes that are themselves disposable, skip it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    _check_file(path, suffix)
    if threads is not None and threads < 1:
        raise ToolkitError(f"threads must be at least 1, got {threads}")
    if probe and suffix in (".tflite", ".onnx", ".ort"):
        probe_in_child(path)
    if providers is not None:
        if suffix != ".onnx":
            raise ToolkitError(f"{path}: execution providers apply to .onnx files only")
        return OnnxRunner(path, threads=threads, providers=providers)
    if runtime_name is not None and runtime_name != NATIVE_BY_SUFFIX[suffix]:
        if runtime_name not in RUNNERS or runtime(runtime_name).suffix != suffix:
            raise ToolkitError(f"{path}: runtime {runtime_name!r} does not run {suffix} files")
        return RUNNERS[runtime_name](path, threads=threads)
    return RUNNERS[NATIVE_BY_SUFFIX[suffix]](path, threads=threads)


def _check_file(path: Path, suffix: str) -> None:
    """A file of a type some runtime runs, present, not empty, with its format's header."""
    if suffix not in NATIVE_BY_SUFFIX:
        raise ToolkitError(
            f"{path}: unknown artifact type {suffix or '(no suffix)'}; expected one of {', '.join(NATIVE_BY_SUFFIX)}"
        )
    if not path.exists():
        raise ToolkitError(f"{path}: file not found")
    if not path.is_file():
        raise ToolkitError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ToolkitError(f"{path}: empty file")
    check_file_header(path)


# What the child process runs: load the file and run one image, reporting a ToolkitError as one line.
PROBE_CODE = """
import sys
import numpy as np
from toolkit.errors import ToolkitError, first_line
from toolkit.runtimes import image_shape, load
try:
    runner = load(sys.argv[1], probe=False)
    runner.run(np.zeros((1, *image_shape(runner.input)), np.float32))
except ToolkitError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""
_probed: set[tuple[str, int, int]] = set()


def probe_in_child(path: Path, timeout: float = 120.0) -> None:
    """Load and run `path` once in a child process; a native crash there becomes a ToolkitError here."""
    import signal
    import subprocess

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _probed:
        return
    try:
        proc = subprocess.run(
            children.python(PROBE_CODE, str(path)),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"{path}: loading it did not finish within {timeout:.0f} s") from None
    runtime = "LiteRT" if path.suffix.lower() == ".tflite" else "ONNX Runtime"  # as a person names it
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise ToolkitError(
            f"{path}: malformed model: it crashed {runtime} ({name}) in a test load, so it was not loaded here"
        )
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ToolkitError(message if message.startswith(str(path)) else f"{path}: {message}")
    _probed.add(key)


def check_file_header(path: Path) -> None:
    """Cheap checks of the container format before a native runtime touches the file."""
    with open(path, "rb") as f:
        head = f.read(8)
    suffix = path.suffix.lower()
    if suffix == ".tflite" and (len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER):
        raise ToolkitError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    if suffix == ".keras" and head[:4] != b"PK\x03\x04":
        raise ToolkitError(f"{path}: not a Keras .keras archive (not a zip file)")
    if suffix == ".ort" and (len(head) < 8 or head[4:8] != ORT_IDENTIFIER):
        raise ToolkitError(f"{path}: not an ONNX Runtime .ort flatbuffer (no 'ORTM' identifier)")
    if suffix == ".onnx" and head[:1] not in ONNX_FIRST_TAGS:
        raise ToolkitError(f"{path}: not an ONNX protobuf (unexpected first byte 0x{head[:1].hex() or '00'})")
