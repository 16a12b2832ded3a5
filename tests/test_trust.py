"""Trust: what a user's files and names can do to the toolkit and to the terminal. Labels are read by lines only,
the user's text reaches the terminal with its control characters escaped, and no engine's log line (CUDA on a
machine without a GPU) reads like a failure."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from toolkit.console import table, visible
from toolkit.errors import ToolkitError


def test_a_labels_file_is_read_by_lines_only(tmp_path):
    from types import SimpleNamespace

    from toolkit.export import labels_for

    interface = SimpleNamespace(classes=3)
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\r\ndog\u2028x\nbird\x1cy\n".encode())  # a BOM, CRLF, separators inside labels
    assert labels_for(interface, None, path) == ["cat", "dog\u2028x", "bird\x1cy"]
    path.write_bytes(b"one\x1ctwo\nthree\n")  # two lines, whatever str.splitlines would make of them
    with pytest.raises(ToolkitError, match="2 labels for the model's 3 classes"):
        labels_for(interface, None, path)


def test_a_label_cannot_drive_the_terminal():
    hostile = "cat\x1b]0;owned\x07\x1b[2J\u202egnp.exe"
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(table(f"labels of {hostile}", ["class"], [[hostile]]))
    shown = out.getvalue()
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "cat\\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in shown  # escaped, still readable
    assert visible("ünï_код 🐱") == "ünï_код 🐱"  # printable text is left alone


HOSTILE_LABELS = [
    "plain",
    'say "hi"',
    "back\\slash",
    "??/trigraph",
    "esc\x1b[31m",
    "tab\tnew\nline",
    "🐱 cat",
    "ünï_код",
    "int",
    "9lives",
    "*/ end",
    "%s %n",
]


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="gcc and g++ needed")
@pytest.mark.parametrize("name", ["3d", "int", "ünï_код", "my model ü<>\n"])
def test_the_micro_header_is_valid_c_and_cpp_for_hostile_labels_and_names(name, tmp_path):
    import numpy as np

    from toolkit.artifacts import TensorSpec
    from toolkit.micro.carray import Embedded, c_header
    from toolkit.model import file_stem

    source = f"{file_stem(name)}.micro.tflite"
    q = {"scale": 1 / 255, "zero_point": -128}
    m = Embedded(
        source=source,
        sha256="0" * 64,
        length=16,
        input=TensorSpec("image", [1, 2, 2, 1], "int8", q),
        output=TensorSpec("probabilities", [1, len(HOSTILE_LABELS)], "int8", q),
        labels=HOSTILE_LABELS,
        arena_min=1024,
        arena_recommended=2048,
        operators=["FULLY_CONNECTED", "SOFTMAX"],
        self_check_inputs=np.zeros((1, 4), np.int8),
        self_check_outputs=np.zeros((1, len(HOSTILE_LABELS)), np.int8),
    )
    header = tmp_path / f"{file_stem(name)}.micro.h"
    header.write_text(c_header(m))
    p, stem = m.stem.upper(), m.stem
    main = (
        f'#include <stdio.h>\n#include <string.h>\n#include "{header.name}"\n'
        "int main(void) {\n"
        f"  static const char *labels[] = {p}_LABELS;\n"
        f"  if (sizeof labels / sizeof labels[0] != {p}_NUM_LABELS) return 2;\n"
        f"  if (sizeof {stem}_self_check_input[0] != {p}_INPUT_ELEMENTS) return 3;\n"
        f"  if (sizeof {stem}_self_check_output[0] != {p}_OUTPUT_ELEMENTS) return 4;\n"
        f"  for (int i = 0; i < {p}_NUM_LABELS; i++) {{\n"
        "    fwrite(labels[i], 1, strlen(labels[i]), stdout);\n    putchar(0xff);\n  }\n"
        "  return 0;\n}\n"
    )
    for compiler, std, suffix in (("gcc", "-std=c11", "c"), ("g++", "-std=c++17", "cc")):
        (tmp_path / f"main.{suffix}").write_text(main)
        exe = tmp_path / f"labels_{suffix}"
        subprocess.run(
            [
                compiler,
                std,
                "-Wall",
                "-Wextra",
                "-Werror",
                "-I",
                str(tmp_path),
                str(tmp_path / f"main.{suffix}"),
                "-o",
                str(exe),
            ],
            check=True,
            capture_output=True,
        )
        printed = subprocess.run([str(exe)], check=True, capture_output=True).stdout
        assert printed.split(b"\xff")[:-1] == [label.encode() for label in HOSTILE_LABELS], compiler


# ------------------------------------------------------------------------------------------- image files


def _png_header_only(path, width: int, height: int):
    """A PNG that declares width x height (1-bit grey) with almost no data: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def _special_images(folder):
    """The image kinds a dataset and predict must decode alike, as (file, expected grey pixels or None)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 1023).astype(np.uint16)  # 16-bit, 1023..65535
    Image.fromarray(ramp).save(folder / "deep.png")  # mode I;16
    Image.fromarray(np.eye(8, dtype=bool)).save(folder / "bits.png")  # mode 1
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((8, 8, 4), (0, 200, 0, 255), np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    tall = np.zeros((8, 4), np.uint8)
    tall[0, :] = 255  # a bright top row
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(tall).save(folder / "rotated.jpg", exif=exif, quality=100)
    return {"deep": ramp / 257.0}


def test_datasets_and_predict_decode_every_image_kind_alike(tmp_path):
    import numpy as np

    from toolkit.data.folders import _decode
    from toolkit.preprocess import load_image, pixels

    expected = _special_images(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        for channels in (1, 3):
            in_dataset = _decode(path, path.read_bytes(), channels == 3, None).astype(np.float64)
            in_predict = np.round(load_image(path, lambda img, c=channels: pixels(img, c)))
            assert np.array_equal(in_dataset, in_predict), (path.name, channels)
    deep = _decode(tmp_path / "deep.png", (tmp_path / "deep.png").read_bytes(), False, None)
    assert np.abs(deep - expected["deep"]).max() <= 0.5 and len(np.unique(deep)) == 64  # scaled, not saturated
    upright = _decode(tmp_path / "rotated.jpg", (tmp_path / "rotated.jpg").read_bytes(), False, None)
    assert upright.shape == (4, 8) and upright[:, -1].mean() > 200  # the bright row turned to the right edge


@pytest.mark.parametrize("kind", ["eps", "bomb", "empty", "random"])
def test_a_hostile_image_file_is_one_line_and_runs_nothing(kind, tmp_path, monkeypatch):
    from toolkit import data
    from toolkit.preprocess import load_image

    ran = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a) or (_ for _ in ()).throw(OSError("no")))
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        _special_images(root / "train" / name)
        for p in (root / "train" / name).glob("*"):
            if p.name != "rgba.png":
                p.unlink()
    bad = root / "train" / "a" / "bad.png"
    if kind == "eps":
        bad.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    elif kind == "bomb":
        _png_header_only(bad, 20000, 20000)
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(bytes(range(256)) * 4)
    for attempt in (lambda: data.load(root), lambda: load_image(bad)):
        with pytest.raises(ToolkitError) as e:
            attempt()
        message = str(e.value)
        assert "\n" not in message and str(bad) in message and "BytesIO" not in message, message
        if kind == "empty":
            assert "empty" in message
    assert not ran  # no Ghostscript, no other program


@pytest.mark.slow
@pytest.mark.browser
def test_a_model_whose_names_tensorflow_refuses_trains_and_converts_to_every_format(tmp_path):
    import json

    from typer.testing import CliRunner

    from tests.test_own_model import bars_idx
    from toolkit.backend import keras as _keras
    from toolkit.cli import app

    keras = _keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20, 20, 1), name="in put ü")
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv ü x")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool<>")(x)
    x = keras.layers.Flatten(name="flat\n")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="classes ✓")(x)
    keras.Model(inputs, outputs, name="my model ü<>\n").save(tmp_path / "odd.keras")
    data = ["--data-dir", str(bars_idx(tmp_path / "bars")), "--dataset", "idx", "--dir", str(tmp_path / "ws")]
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--model", str(tmp_path / "odd.keras"), "--epochs", "10", *data])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "export.json"
    exported = runner.invoke(app, ["export", *data, "--json", str(out)])
    assert exported.exit_code == 0, exported.output
    results = json.loads(out.read_text())["results"]
    assert {r["format"] for r in results} >= {"tflite", "onnx", "ort", "micro", "web"}
    assert all(r["file"].startswith(("my_model_u", "web/models/my_model_u")) for r in results)
    from toolkit.card import model_card

    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    assert manifest["model"]["title"] == "my model ü<>\n"  # the user's own name, shown as written
    assert model_card(tmp_path / "ws", None).splitlines()[0] == "# Model card: my model ü&lt;&gt;\\n"


def _hostile_file(kind: str, seed: int) -> bytes:
    """The bytes of one file under an image name: a real image of a mode datasets meet, or something hostile."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    if kind == "random":
        return rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
    if kind == "eps":
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n(x) show showpage\n"
    if kind == "truncated":
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(out, "PNG")
        return out.getvalue()[: int(rng.integers(8, 40))]
    modes = {"grey": "L", "rgb": "RGB", "rgba": "RGBA", "bits": "1", "palette": "P", "deep": "I;16"}
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(
        "L" if modes[kind] in ("I;16", "1") else "RGB"
    )
    if modes[kind] == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    else:
        img = img.convert(modes[kind])
    img.save(out, "PNG")
    return out.getvalue()


KINDS = ["grey", "rgb", "rgba", "bits", "palette", "deep", "random", "eps", "truncated"]


@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)), min_size=4, max_size=8))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_mix_of_image_files_gives_one_line_or_a_dataset(tmp_path_factory, files):
    import numpy as np
    from typer.testing import CliRunner

    from toolkit import data
    from toolkit.cli import app
    from toolkit.preprocess import load_image, pixels

    ran = []
    real_popen = subprocess.Popen
    subprocess.Popen = lambda *a, **k: ran.append(a) or real_popen(["false"])  # a decoder starting a program
    root = tmp_path_factory.mktemp("hostile")
    for i, (kind, seed) in enumerate(files):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(_hostile_file(kind, seed))
    try:
        result = CliRunner().invoke(app, ["data", "--data-dir", str(root)])
    finally:
        subprocess.Popen = real_popen
    assert not ran and result.exit_code in (0, 1) and "Traceback" not in result.output, result.output
    if result.exit_code == 1:
        assert len(result.output.strip().splitlines()) == 1 and str(root) in result.output, result.output
    else:  # every file decoded, each to the pixels predict decodes it to (16-bit scaled, never saturated)
        assert all(k in ("grey", "rgb", "rgba", "bits", "palette", "deep") for k, _ in files)
        ds = data.load(root)
        rgb = ds.x_train.ndim == 4
        decoded = {tuple(np.asarray(img).ravel()) for img in np.concatenate([ds.x_train, ds.x_test])}
        for path in root.rglob("*.png"):
            own = np.round(load_image(path, lambda img: pixels(img, 3 if rgb else 1))).astype(np.uint8)
            assert tuple(own.ravel()) in decoded, path
    for i in range(len(files)):  # predict decodes each file the same way: one line or a prediction
        path = next(root.rglob(f"{i}.png"))
        try:
            load_image(path)
        except ToolkitError as e:
            assert "\n" not in str(e) and str(path) in str(e)


def _one_line_or_success(result, root) -> bool:
    """A command's result on hostile files: success (True), or one line naming the folder (False); never a
    traceback."""
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output
    if result.exit_code == 1:
        assert len(result.output.strip().splitlines()) == 1 and str(root) in result.output, result.output
    return result.exit_code == 0


MOSTLY_VALID = [k for k in KINDS[:6] for _ in range(4)] + KINDS[6:]  # about half the datasets decode whole


@pytest.mark.slow
@given(st.lists(st.tuples(st.sampled_from(MOSTLY_VALID), st.integers(0, 10_000)), min_size=6, max_size=10))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_data_train_and_predict_on_any_mix_of_image_files_give_one_line_or_results(tmp_path_factory, files):
    from typer.testing import CliRunner

    from toolkit import data
    from toolkit.backend import keras as _keras
    from toolkit.cli import app

    root, runner, ran = tmp_path_factory.mktemp("hostile"), CliRunner(), []
    for i, (kind, seed) in enumerate(files):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(_hostile_file(kind, seed))
    real_popen = subprocess.Popen

    def guarded(*a, **k):  # a program given a user's file (a decoder's helper) is recorded and never runs
        return real_popen(["false"]) if str(root) in str(a) and not ran.append(a) else real_popen(*a, **k)

    subprocess.Popen = guarded
    try:
        if not _one_line_or_success(runner.invoke(app, ["data", "--data-dir", str(root)]), root):
            return
        keras, channels = _keras(), 3 if data.load(root).x_train.ndim == 4 else 1
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, channels))
        x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, activation="relu")(inputs))
        keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(root / "tiny.keras")
        ws = root / "ws"
        trained = runner.invoke(
            app,
            ["train", "--model", str(root / "tiny.keras"), "--epochs", "1", "--data-dir", str(root), "--dir", str(ws)],
        )
        if not _one_line_or_success(trained, root):
            return
        for path in sorted(root.rglob("*.png")):  # each file alone: a prediction of one of the two classes
            predicted = runner.invoke(app, ["predict", "--model", str(ws / "model.keras"), "--dir", str(ws), str(path)])
            assert predicted.exit_code == 0 and path.name in predicted.output, predicted.output
    finally:
        subprocess.Popen = real_popen
    assert not ran  # machine facts (uname -p) may run; nothing on the user's files


# what TensorFlow, XLA and JAX print on a machine without a GPU; any of it reads like a failure to a user
ENGINE_CHATTER = re.compile(r"\bcuda|cuInit|cudart|cuDNN|cuBLAS|TF-TRT|GPU will not be used|[EWI]0000 |absl::", re.I)


@pytest.mark.slow
def test_no_command_prints_a_cuda_or_engine_log_line(tmp_path):
    from PIL import Image

    from tests.test_own_model import bars_idx

    keras = pytest.importorskip("keras")
    inputs = keras.Input((20, 20, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x), name="tiny").save(tmp_path / "tiny.keras")
    Image.fromarray(np.eye(20, dtype=np.uint8) * 255).save(tmp_path / "one.png")
    data = ["--data-dir", str(bars_idx(tmp_path / "bars")), "--dataset", "idx", "--dir", str(tmp_path / "ws")]
    quiet = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GRPC_", "ABSL_", "KERAS_BACKEND"))}
    commands = [
        (["data", *data[:4]], "tensorflow"),
        (["train", "--model", str(tmp_path / "tiny.keras"), "--epochs", "1", *data], "jax"),
        (["train", "--model", str(tmp_path / "tiny.keras"), "--epochs", "10", *data], "tensorflow"),  # int8 passes
        (["export", "--format", "tflite,onnx", "--allow-chance", *data], "tensorflow"),
        (
            ["predict", "--model", str(tmp_path / "ws" / "model.keras"), "--dir", data[-1], str(tmp_path / "one.png")],
            "tensorflow",
        ),
    ]
    for args, backend in commands:
        run = subprocess.run(
            [sys.executable, "-m", "toolkit", *args],
            env={**quiet, "KERAS_BACKEND": backend},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, (args, run.stdout[-2000:], run.stderr[-2000:])
        chatter = [line for line in (run.stdout + run.stderr).splitlines() if ENGINE_CHATTER.search(line)]
        assert not chatter, (args[0], backend, chatter)
