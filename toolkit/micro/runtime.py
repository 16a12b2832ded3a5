"""LiteRT for Microcontrollers (PyPI `tflite-micro`) in this process: run a microcontroller model, size its arena,
list its operators.

Why: a model is only "for microcontrollers" once the microcontroller interpreter itself has run it, and a firmware
author has to know three things before linking it: how big the tensor arena must be, which operators the op resolver
must register, and whether it fits the board. `tflite-micro` is that interpreter's own C++ code (x86 reference
kernels) behind a Python binding, so what runs here is what a firmware runs, minus the optimised kernels.
Importing this module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np

from toolkit import children, fsio
from toolkit.artifacts import LITERT_MICRO, TensorSpec
from toolkit.errors import FormatRefused, ToolkitError
from toolkit.runtimes import TFLITE_IDENTIFIER, check_images, check_io, dequantize, image_shape, quantize

KERNELS = "reference"  # the kernels of the tflite-micro wheel, and so of every arena figure measured here

ARENA_GRANULARITY = 16  # bytes: tflite-micro aligns arena allocations to 16

# Below about 464 bytes the interpreter crashes (segmentation fault) instead of failing, since its own allocator
# lives in the arena: no arena smaller than this is ever handed to it.
ARENA_FLOOR = 1024

ARENA_LIMIT = 64 << 20  # the largest arena tried before a model is declared impossible to allocate

ARENA_MARGIN = 0.10  # recommended arena = measured minimum + 10%, rounded up to whole KiB

# Operator names whose MicroMutableOpResolver method is not the CamelCase of the name (checked against every Add*()
# method of tensorflow/lite/micro/micro_mutable_op_resolver.h, tflite-micro commit 90b983c, 2026-08-20).
RESOLVER_EXCEPTIONS = {
    "BATCH_MATMUL": "AddBatchMatMul",
    "CUMSUM": "AddCumSum",
    "PADV2": "AddPadV2",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}


def _tflite_micro(module: str):
    try:
        return import_module(f"tflite_micro.{module}")
    except ImportError:
        raise ToolkitError(
            "LiteRT for Microcontrollers is not installed here (PyPI tflite-micro, whose wheels are "
            "for Linux x86_64 only)"
        ) from None


@dataclass
class _Graph:
    """What this module needs from a model's flatbuffer: its operators and the name and dtype of each I/O tensor."""

    operators: list[str]  # builtin operator names, each once, in order of first use
    nodes: list[tuple[str, str]]  # every operator of the main graph in order: (name, its first output tensor)
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]


def _read(model: bytes, path: str | Path) -> _Graph:
    """Read the flatbuffer with tflite-micro's generated schema, refusing bytes that are not a TFLite model before the
    C++ interpreter sees them."""
    if len(model) < 8 or model[4:8] != TFLITE_IDENTIFIER:
        raise ToolkitError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    fb = _tflite_micro("tensorflow.lite.micro.python.schema_py_generated")
    op_names = {code: name for name, code in vars(fb.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {code: name.lower() for name, code in vars(fb.TensorType).items() if not name.startswith("_")}
    try:
        m = fb.Model.GetRootAs(model, 0)
        ops: list[str] = []
        for s in range(m.SubgraphsLength()):
            sg = m.Subgraphs(s)
            for i in range(sg.OperatorsLength()):
                code = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
                builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
                name = op_names.get(builtin, f"BUILTIN_{builtin}")
                if name not in ops:
                    ops.append(name)
        main = m.Subgraphs(0)
        nodes = []
        for i in range(main.OperatorsLength()):
            op = main.Operators(i)
            code = m.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            out = main.Tensors(op.Outputs(0)).Name().decode("utf-8", "replace") if op.OutputsLength() else ""
            nodes.append((name, out))

        def tensor(index: int) -> tuple[str, str]:
            t = main.Tensors(index)
            return t.Name().decode("utf-8", "replace"), type_names.get(t.Type(), f"type {t.Type()}")

        inputs = [tensor(main.Inputs(i)) for i in range(main.InputsLength())]
        outputs = [tensor(main.Outputs(i)) for i in range(main.OutputsLength())]
    except Exception as e:  # flatbuffers raises struct/index errors of several types on malformed bytes
        raise ToolkitError(f"{path}: malformed TFLite flatbuffer ({type(e).__name__}: {e})") from None
    return _Graph(ops, nodes, inputs, outputs)


def operators(model_bytes: bytes) -> list[str]:
    """The builtin operators the model uses (CONV_2D, MAX_POOL_2D, ...), each once, in order of first use."""
    return _read(model_bytes, "model").operators


def resolver_call(operator: str) -> str:
    """The `MicroMutableOpResolver` method that registers a builtin operator: CONV_2D -> AddConv2D()."""
    if operator == "CUSTOM":
        raise ToolkitError("a custom operator has no builtin registration: register it with AddCustom(name, reg)")
    name = RESOLVER_EXCEPTIONS.get(operator)
    if name is None:
        parts = operator.split("_")
        name = "Add" + "".join(part if re.fullmatch(r"\d+D", part) else part.capitalize() for part in parts)
    return f"{name}()"


def _interpreter(model: bytes, arena_size: int):
    """A tflite-micro interpreter with its tensors allocated; RuntimeError when they do not fit. Call it with the
    C++ side's stderr captured: a failed allocation prints its reasons there."""
    return _tflite_micro("python.tflite_micro.runtime").Interpreter.from_bytes(model, arena_size=arena_size)


def _reason(log: list[str]) -> str:
    """The first line the C++ side printed about a failure (it repeats itself for every attempt)."""
    lines = [line.strip() for line in "".join(log).splitlines() if line.strip()]
    return lines[0] if lines else "no message"


# The arena search runs in a child process: below some size (which depends on the model) tflite-micro's allocator
# underflows and the interpreter crashes the process instead of failing. The child reports each size before trying
# it, so a crash names the size that caused it, and the search starts again above it.
SEARCH_CODE = """
import sys
from tflite_micro.python.tflite_micro import runtime
model = open(sys.argv[1], "rb").read()
lo = hi = int(sys.argv[2]); granularity, limit = int(sys.argv[3]), int(sys.argv[4])
def fits(size):
    print("try", size, flush=True)
    try:
        runtime.Interpreter.from_bytes(model, arena_size=size)
    except RuntimeError:
        return False
    return True
ok = fits(hi)
while not ok and hi < limit:
    lo, hi = hi, hi * 2
    ok = fits(hi)
while ok and hi - lo > granularity:
    mid = lo + (hi - lo) // (2 * granularity) * granularity
    if fits(mid):
        hi = mid
    else:
        lo = mid
print("min" if ok else "none", hi, flush=True)
"""


def _search(model_path: Path, floor: int, granularity: int) -> tuple[str, int, str]:
    """One search in a child: ("min", bytes, log), ("none", largest tried, log) or ("crashed", size, log)."""
    proc = subprocess.run(
        children.python(SEARCH_CODE, str(model_path), str(floor), str(granularity), str(ARENA_LIMIT)),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    lines = proc.stdout.split()
    tried = [int(lines[i + 1]) for i, word in enumerate(lines) if word == "try"]
    if proc.returncode == 0 and lines[-2:-1] in (["min"], ["none"]):
        return lines[-2], int(lines[-1]), proc.stderr
    if proc.returncode < 0 and tried:
        return "crashed", tried[-1], proc.stderr
    raise ToolkitError(f"LiteRT for Microcontrollers' arena search failed ({_reason([proc.stderr])})")


def min_arena_bytes(model_bytes: bytes, granularity: int = ARENA_GRANULARITY, path: str | Path = "model") -> int:
    """The smallest tensor arena (a multiple of `granularity`) with which tflite-micro allocates the model, with the
    reference kernels: allocation succeeds at the result and fails at the result minus `granularity`, unless the
    result is the least arena tried (ARENA_FLOOR rounded up, or twice a size at which the interpreter crashed)."""
    model = bytes(model_bytes)
    _read(model, path)
    _tflite_micro("python.tflite_micro.runtime")  # installed, or one line saying so
    floor = math.ceil(ARENA_FLOOR / granularity) * granularity
    with tempfile.TemporaryDirectory(prefix="arena-") as tmp:
        model_path = Path(tmp) / "model.tflite"
        model_path.write_bytes(model)
        while True:
            outcome, size, log = _search(model_path, floor, granularity)
            if outcome != "crashed" or size * 2 > ARENA_LIMIT:
                break
            floor = size * 2  # the interpreter crashed at `size`: start above it
    if outcome != "min":
        missing = unsupported(model, log)
        if missing is not None:
            op, tensor, detail = missing
            raise FormatRefused(
                f"{path}: LiteRT for Microcontrollers cannot run operator {op} (tensor {tensor}): {detail}", op, tensor
            )
        raise ToolkitError(
            f"{path}: LiteRT for Microcontrollers cannot allocate it even in a {size:,}-byte arena ({_reason([log])})"
        )
    return size


def unsupported(model: bytes, log: str) -> tuple[str, str, str] | None:
    """(operator, its output tensor, why) for an operator tflite-micro has no kernel for, or whose kernel refuses
    the model's types, read from the interpreter's own messages; None when the failure is something else."""
    nodes = _read(model, "model").nodes
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)'", log)
    if missing:
        op = missing.group(1)
        tensor = next((t for name, t in nodes if name == op), "")
        return op, tensor, "no kernel for it in LiteRT for Microcontrollers"
    failed = re.search(r"Node (\w+) \(number (\d+)\) failed to prepare", log)
    if failed and int(failed.group(2)) < len(nodes):
        why = [line.strip() for line in log.splitlines() if ".cc:" in line]
        detail = why[0].split(" ", 1)[-1] if why else "its kernel refuses the model's types"
        return failed.group(1), nodes[int(failed.group(2))][1], f"its kernel refuses it ({detail})"
    return None


def recommended_arena(min_bytes: int) -> int:
    """The arena to reserve on a device: the measured minimum plus ARENA_MARGIN, rounded up to whole KiB (the margin is
    for optimised kernels such as CMSIS-NN, whose scratch buffers can differ from the reference kernels')."""
    return math.ceil(min_bytes * (1 + ARENA_MARGIN) / 1024) * 1024


class MicroRunner:
    """A full-integer int8 model in tflite-micro's interpreter, with the `toolkit.runtimes` Runner interface: float32
    model inputs in (pixels made inputs by the input contract), float32 probabilities out, image by image as on a
    microcontroller."""

    runtime = LITERT_MICRO
    threads = None

    def __init__(self, model: bytes, path: str | Path = "model", arena_size: int | None = None):
        self.path, self.model = Path(path), bytes(model)
        graph = _read(self.model, self.path)
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ToolkitError(
                f"{path}: expected one input and one output, found {len(graph.inputs)} and {len(graph.outputs)}"
            )
        for role, (_, dtype) in (("input", graph.inputs[0]), ("output", graph.outputs[0])):
            if dtype != "int8":
                raise ToolkitError(
                    f"{path}: its {role} is {dtype}, not int8: LiteRT for Microcontrollers runs the "
                    "full-integer int8 model (toolkit export --format micro)"
                )
        if arena_size is None:
            arena_size = recommended_arena(min_arena_bytes(self.model, path=path))
        self.arena_size = arena_size
        if self.arena_size < ARENA_FLOOR:
            raise ToolkitError(
                f"{path}: a {self.arena_size:,}-byte arena is below {ARENA_FLOOR:,} bytes, the least "
                "LiteRT for Microcontrollers is started with"
            )
        with fsio.captured_output() as log:
            try:
                self._interp = _interpreter(self.model, self.arena_size)
            except RuntimeError:
                self._interp = None
        if self._interp is None:
            raise ToolkitError(
                f"{path}: LiteRT for Microcontrollers cannot allocate its tensors in a "
                f"{self.arena_size:,}-byte arena ({_reason(log)}); it needs at least "
                f"{min_arena_bytes(self.model, path=path):,} bytes with {KERNELS} kernels"
            )
        self.input = _spec(graph.inputs[0][0], self._interp.get_input_details(0))
        self.output = _spec(graph.outputs[0][0], self._interp.get_output_details(0))
        check_io(self.path, self.input, self.output)
        self.shape = image_shape(self.input)

    def run(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images, self.shape)
        q = quantize(images, self.input.scale, self.input.zero_point, np.int8)
        out = np.empty((len(q), *self.output.shape[1:]), np.int8)
        error = None
        with fsio.captured_output() as log:
            try:
                for i in range(len(q)):
                    self._interp.set_input(q[i : i + 1], 0)
                    self._interp.invoke()
                    out[i] = self._interp.get_output(0)[0]
            except RuntimeError as e:
                error = e
        if error is not None:
            raise ToolkitError(f"{self.path}: LiteRT for Microcontrollers failed to run it ({error}; {_reason(log)})")
        return dequantize(out, self.output.scale, self.output.zero_point)


def _spec(name: str, details: dict) -> TensorSpec:
    q = details["quantization_parameters"]
    return TensorSpec(
        name=name,
        shape=[int(s) for s in details["shape"]],
        dtype=np.dtype(details["dtype"]).name,
        quantization={"scale": float(q["scales"][0]), "zero_point": int(q["zero_points"][0])},
    )


def read_c_array(path: str | Path) -> bytes:
    """The model bytes in a generated C file, checked against the length it declares: what a firmware links."""
    path = Path(path)
    try:
        text = fsio.read_bytes(path).decode("ascii", errors="replace")
    except FileNotFoundError:
        raise ToolkitError(f"{path}: file not found") from None
    m = re.search(r"const unsigned char \w+\[\] = \{(.*?)\};", text, re.S)
    n = re.search(r"const unsigned int \w+_len = (\d+);", text)
    if not m or not n:
        raise ToolkitError(f"{path}: no C array and length found")
    data = bytes(int(h, 16) for h in re.findall(r"0[xX]([0-9a-fA-F]{2})", m.group(1)))
    if len(data) != int(n.group(1)):
        raise ToolkitError(f"{path}: the array holds {len(data):,} bytes but its length says {int(n.group(1)):,}")
    return data


def load_c_array(path: str | Path, arena_size: int | None = None) -> MicroRunner:
    """Parse a generated `.c` file back to bytes and run those bytes, so that what a firmware links is what runs."""
    return MicroRunner(read_c_array(path), path, arena_size)
