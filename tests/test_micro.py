"""The microcontroller artifact: batch-1 int8 model, C array and header, run in LiteRT for Microcontrollers, arena
measured exactly, Ethos-U estimates from Vela. Uses a small model with random (seeded) weights: fast, and every check
here is about the export, not about accuracy."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from toolkit import runtimes
from toolkit.data import to_model_input
from toolkit.errors import ToolkitError
from toolkit.export import ExportContext, make_calibration
from toolkit.micro import carray as micro_export
from toolkit.micro import runtime as micro
from toolkit.micro.carray import FORBIDDEN_OPERATORS
from toolkit.micro.runtime import read_c_array
from toolkit.micro.vela import vela_estimates
from toolkit.runtimes import quantize

P = "MNIST_CNN_MICRO"  # the header's macro prefix


@pytest.fixture(scope="module")
def random_model():
    from toolkit.backend import keras
    from toolkit.model import build_model

    keras().utils.set_random_seed(0)
    model = build_model()
    # random weights give near-uniform probabilities; a larger last layer gives each image a clear top class
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 20, bias])
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, random_model, mnist):
    out = tmp_path_factory.mktemp("micro")
    ctx = ExportContext(
        model=random_model, model_path=out / "model.keras", out_dir=out, calibration=make_calibration(mnist, 200)
    )
    records = micro_export.export(ctx, ["int8"])
    return out, {r.file: r for r in records}


@pytest.fixture(scope="module")
def model_bytes(exported):
    out, _ = exported
    return (out / "mnist_cnn.micro.tflite").read_bytes()


def _compile(compiler: str, std: str, out, main, exe) -> None:
    """Build `main` with the exported C array and header, warnings as errors, as a firmware build would."""
    sources = [str(main), str(out / "mnist_cnn.micro.c")]
    subprocess.run([compiler, std, "-Wall", "-Werror", "-I", str(out), "-o", str(exe), *sources], check=True)


def _defines(header: str) -> dict[str, str]:
    return dict(re.findall(rf"^#define {P}_(\w+) (.+?)(?:  /\*.*\*/)?$", header, re.M))


def test_records_and_files(exported, model_bytes):
    out, records = exported
    tflite, c = records["mnist_cnn.micro.tflite"], records["mnist_cnn.micro.c"]
    assert (tflite.format, tflite.variant, tflite.runtime) == ("micro", "int8", "litert")
    assert (c.format, c.variant, c.runtime) == ("micro", "int8", "litert-micro")
    assert c.input == tflite.input and c.output == tflite.output and c.input.shape == [1, 28, 28, 1]
    assert c.made_with["flash_bytes"] == len(model_bytes) and c.made_with["arena_kernels"] == "reference"
    assert c.bytes == (out / c.file).stat().st_size
    assert not (out / "manifest.json").exists()  # the registry writes the manifest, not the format
    assert not list(out.glob(".*tmp*"))


def test_no_dynamic_batch_operators(exported, model_bytes, random_model, mnist):
    from toolkit.export.tflite import convert

    ops = micro.operators(model_bytes)
    assert not set(ops) & set(FORBIDDEN_OPERATORS)
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    assert exported[1]["mnist_cnn.micro.c"].made_with["operators"] == ops
    dynamic = convert(random_model, "int8", make_calibration(mnist, 20), int8_io=True)  # why the batch is fixed
    assert set(micro.operators(dynamic)) & set(FORBIDDEN_OPERATORS)


def test_arena_is_exact(exported, model_bytes):
    least = micro.min_arena_bytes(model_bytes)
    assert least % 16 == 0 and least > micro.ARENA_FLOOR
    assert exported[1]["mnist_cnn.micro.c"].made_with["arena_bytes_min"] == least
    assert micro.MicroRunner(model_bytes, arena_size=least).arena_size == least  # allocates
    with pytest.raises(ToolkitError) as e:
        micro.MicroRunner(model_bytes, "tiny.tflite", arena_size=least - 16)
    message = str(e.value)
    assert "\n" not in message and message.startswith("tiny.tflite:") and f"at least {least:,} bytes" in message
    with pytest.raises(ToolkitError, match="below 1,024 bytes"):  # the interpreter would crash, not fail
        micro.MicroRunner(model_bytes, arena_size=100)


def test_header_figures_come_from_the_model(exported, model_bytes):
    out, records = exported
    header = (out / "mnist_cnn.micro.h").read_text()
    d = _defines(header)
    ops = micro.operators(model_bytes)
    calls = [micro.resolver_call(op) for op in ops]
    assert d["OPERATORS"] == '"' + " ".join(ops) + '"' and int(d["OPERATOR_COUNT"]) == len(ops)
    assert re.findall(r"failures \+= resolver\.(\w+\(\)) != 0;", header) == calls
    assert re.findall(r"^ \*   resolver\.(\w+\(\));$", header, re.M) == calls
    least = micro.min_arena_bytes(model_bytes)
    assert int(d["ARENA_BYTES_MIN"]) == least and int(d["ARENA_BYTES"]) == micro.recommended_arena(least)
    assert int(d["MODEL_BYTES"]) == len(model_bytes)
    spec = records["mnist_cnn.micro.tflite"]
    for role, tensor in (("INPUT", spec.input), ("OUTPUT", spec.output)):
        assert np.float32(d[f"{role}_SCALE"].rstrip("f")) == np.float32(tensor.quantization["scale"])
        assert int(d[f"{role}_ZERO_POINT"].strip("()")) == tensor.quantization["zero_point"]
        assert d[f"{role}_SHAPE"] == "{" + ", ".join(map(str, tensor.shape)) + "}"
    assert d["LABELS"] == "{" + ", ".join(f'"{i}"' for i in range(10)) + "}"


def test_resolver_calls_match_micro_mutable_op_resolver():
    expected = {  # method names as in tensorflow/lite/micro/micro_mutable_op_resolver.h
        "CONV_2D": "AddConv2D()",
        "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D()",
        "MAX_POOL_2D": "AddMaxPool2D()",
        "L2_POOL_2D": "AddL2Pool2D()",
        "FULLY_CONNECTED": "AddFullyConnected()",
        "RESHAPE": "AddReshape()",
        "QUANTIZE": "AddQuantize()",
        "ADD_N": "AddAddN()",
        "PADV2": "AddPadV2()",
        "BATCH_MATMUL": "AddBatchMatMul()",
        "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd()",
        "RELU6": "AddRelu6()",
        "CUMSUM": "AddCumSum()",
        "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM()",
        "L2_NORMALIZATION": "AddL2Normalization()",
    }
    assert {op: micro.resolver_call(op) for op in expected} == expected


def test_c_array_reads_back_as_the_model(exported, model_bytes):
    assert read_c_array(exported[0] / "mnist_cnn.micro.c") == model_bytes
    assert micro.load_c_array(exported[0] / "mnist_cnn.micro.c").model == model_bytes


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_and_header_compile_in_c(exported, model_bytes, tmp_path):
    out, _ = exported
    main = tmp_path / "main.c"
    main.write_text(
        '#include <stdio.h>\n#include <stdint.h>\n#include "mnist_cnn.micro.h"\n'
        "int main(int argc, char **argv) {\n"
        f"  static const int shape[] = {P}_INPUT_SHAPE;\n"
        f"  static const char *labels[] = {P}_LABELS;\n"
        f"  if ((uintptr_t)mnist_cnn_micro_tflite % {P}_ALIGNMENT != 0) return 3;\n"
        f"  if (mnist_cnn_micro_tflite_len != {P}_MODEL_BYTES || shape[1] != 28) return 4;\n"
        f"  if (sizeof labels / sizeof labels[0] != {P}_NUM_LABELS) return 5;\n"
        f"  if ({P}_ARENA_BYTES < {P}_ARENA_BYTES_MIN || {P}_OUTPUT_ELEMENTS != 10) return 6;\n"
        f"  if (sizeof mnist_cnn_micro_self_check_output != {P}_SELF_CHECK_COUNT * {P}_OUTPUT_ELEMENTS) return 7;\n"
        '  FILE *f = fopen(argv[1], "wb");\n'
        "  fwrite(mnist_cnn_micro_tflite, 1, mnist_cnn_micro_tflite_len, f);\n"
        "  return fclose(f);\n}\n"
    )
    exe = tmp_path / "dump"
    _compile("gcc", "-std=c11", out, main, exe)
    subprocess.run([str(exe), str(tmp_path / "out.tflite")], check=True)
    assert (tmp_path / "out.tflite").read_bytes() == model_bytes


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_header_registers_the_operators_in_cpp(exported, model_bytes, tmp_path):
    """The C++ helper, against a stand-in for MicroMutableOpResolver with exactly the model's Add*() methods."""
    out, _ = exported
    calls = [micro.resolver_call(op) for op in micro.operators(model_bytes)]
    methods = "\n".join(f'  int {c[:-2]}() {{ std::printf("{c}\\n"); return 0; }}' for c in calls)
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdio>\n#include "mnist_cnn.micro.h"\n'
        f"struct Resolver {{\n{methods}\n}};\n"
        "int main() {\n  Resolver resolver;\n"
        f'  static_assert({P}_OPERATOR_COUNT == {len(calls)}, "operator count");\n'
        "  return mnist_cnn_micro_register_ops(resolver);\n}\n"
    )
    exe = tmp_path / "register"
    _compile("g++", "-std=c++17", out, main, exe)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    assert run.stdout.split() == calls


def test_the_header_self_check_vectors_are_what_tflite_micro_returns(exported, model_bytes):
    """The header's self-check inputs, run in LiteRT for Microcontrollers, give its expected outputs."""
    text = (exported[0] / "mnist_cnn.micro.h").read_text()

    def array(name: str) -> np.ndarray:
        body = re.search(rf"{name}\[[^=]*= \{{(.*?)\n\}};", text, re.S).group(1)
        rows = re.findall(r"\{([^{}]*)\}", body)
        return np.array([[int(v) for v in row.replace("\n", " ").split(",")] for row in rows], np.int8)

    inputs, outputs = array("mnist_cnn_micro_self_check_input"), array("mnist_cnn_micro_self_check_output")
    count = int(re.search(rf"#define {P}_SELF_CHECK_COUNT (\d+)", text).group(1))
    assert inputs.shape == (count, 784) and outputs.shape == (count, 10) and count == 4
    runner = micro.MicroRunner(model_bytes)
    images = ((inputs.astype(np.float32) - runner.input.zero_point) * runner.input.scale).reshape(count, 28, 28, 1)
    got = quantize(runner.run(images), runner.output.scale, runner.output.zero_point)
    assert np.array_equal(got, outputs)


def test_micro_agrees_with_litert(exported, mnist):
    out, records = exported
    x, _ = mnist.splits().test
    images = to_model_input(x[:100])
    runner = micro.load_c_array(out / "mnist_cnn.micro.c")  # the bytes a firmware links
    assert (runner.runtime, runner.threads) == ("litert-micro", None)
    assert runner.input.quantization == records["mnist_cnn.micro.tflite"].input.quantization
    p_micro = runner.run(images)
    assert p_micro.shape == (100, 10) and p_micro.dtype == np.float32
    p_litert = runtimes.load(out / "mnist_cnn.micro.tflite").run(images)
    assert (p_micro.argmax(1) == p_litert.argmax(1)).all()
    # reference kernels and XNNPACK round differently: a few output steps apart (2 here, 7 on the release model)
    assert np.abs(p_micro - p_litert).max() <= 8 * runner.output.scale


def test_non_int8_and_non_tflite_models_are_refused(random_model, exported, tmp_path):
    from toolkit.export.tflite import convert
    from toolkit.model import with_fixed_batch

    float_model = convert(with_fixed_batch(random_model, 1), "float32")
    with pytest.raises(ToolkitError, match=r"^float\.tflite: its input is float32, not int8"):
        micro.MicroRunner(float_model, "float.tflite", arena_size=1 << 20)
    with pytest.raises(ToolkitError, match="not a TFLite flatbuffer"):
        micro.MicroRunner(b"not a model at all", "junk.tflite")
    (tmp_path / "empty.c").write_text("int x;\n")
    with pytest.raises(ToolkitError, match="no C array"):
        micro.load_c_array(tmp_path / "empty.c")
    declared = (exported[0] / "mnist_cnn.micro.c").read_text().replace("_len = ", "_len = 1")
    (tmp_path / "wrong-length.c").write_text(declared)
    with pytest.raises(ToolkitError, match="its length says"):
        read_c_array(tmp_path / "wrong-length.c")


def test_vela_estimates(exported):
    out, records = exported
    vela = [r for r in records.values() if r.format == "vela"]
    assert len(vela) >= 2
    for r in vela:
        e = r.made_with["estimates"]
        assert r.runtime == "ethos-u" and r.variant == e["accelerator"] and (out / r.file).is_file()
        assert re.fullmatch(r"estimate: Arm Vela \S+ performance model", e["method"])
        for key in ("clock_mhz", "npu_ops", "sram_bytes", "cycles", "inference_ms", "inferences_per_second", "macs"):
            assert e[key] > 0, key
        assert e["cpu_ops"] == 0 and e["flash_bytes"] + e["dram_bytes"] > 0


def test_vela_refusal_is_a_row(exported, tmp_path):
    rows = vela_estimates(exported[0] / "mnist_cnn.micro.tflite", tmp_path, ["ethos-u55-128", "ethos-u99-1"])
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "invalid choice" in rows[1]["error"] and rows[1]["method"].startswith("estimate: Arm Vela")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist_cnn.micro.ethos-u55-128.vela.tflite"]
