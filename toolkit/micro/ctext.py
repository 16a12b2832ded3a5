"""C source text that every C and C++ compiler takes, whatever the model's names and labels: identifiers, string
literals, float and array initialisers (the micro header and C array are written with these)."""

from __future__ import annotations

import re

import numpy as np


def symbol_for(name: str) -> str:
    """mnist_cnn.micro.tflite -> mnist_cnn_micro_tflite: a valid C identifier (ASCII; a leading digit gets m_)."""
    symbol = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"m_{symbol}" if symbol[:1].isdigit() else symbol


def c_string(text: str) -> str:
    """`text` as a C string literal that any C or C++ compiler takes: its UTF-8 bytes, printable ASCII as itself,
    quote and backslash escaped, `?` escaped (no trigraph such as ??/ can form), every other byte in octal."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")  # three digits: the next character can never extend the escape
    return '"' + "".join(out) + '"'


def c_float(x: float) -> str:
    return f"{float(np.float32(x)):.9g}f"  # 9 significant digits give the float32 back exactly


def c_floats(values: tuple[float, ...]) -> str:
    return "{" + ", ".join(c_float(v) for v in values) + "}"


def c_shape(shape: list[int]) -> str:
    return "{" + ", ".join(str(d) for d in shape) + "}"


def c_rows(values: np.ndarray) -> str:
    """A 2-D int8 array as C initialiser rows."""
    rows = []
    for row in values:
        items = [str(int(v)) for v in row]
        lines = [", ".join(items[i : i + 24]) for i in range(0, len(items), 24)]
        rows.append("  {" + ",\n   ".join(lines) + "}")
    return "{\n" + ",\n".join(rows) + "\n}"
