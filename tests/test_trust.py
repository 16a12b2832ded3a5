"""Trust: what a user's files and names can do to the toolkit and to the terminal. Labels are read by lines only,
and the user's text reaches the terminal with its control characters escaped."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
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
