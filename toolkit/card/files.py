"""The card's sections on the exported files, from their manifest records: how each verified, which a phone app
embeds, what each format says of how its files were made, and every file's tensors."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from toolkit.artifacts import (
    FORMATS,
    MICRO_FORMAT,
    ORT_FORMAT,
    TFLITE_FORMAT,
    VELA_FORMAT,
    TensorSpec,
    runtime,
    second_runtime,
)
from toolkit.card.header import Header
from toolkit.manifest import ArtifactRecord
from toolkit.preprocess import __doc__ as PREPROCESS_DOC

DESCRIBE = "describe_made_with"  # what a format module defines to put its files' `made_with` on the card


def accuracy(records: list[ArtifactRecord]) -> list[str]:
    """Each artifact's verification: accuracy, change against Keras, agreement."""
    lines: list[str] = []
    lines += [
        "## Artifacts: accuracy on the test split",
        "",
        "| file | runtime | bytes | accuracy | Δ vs Keras | agreement | max abs Δp | verified |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        v = r.verification or {}
        if v.get("accuracy") is None:
            lines.append(f"| `{r.file}` | {r.runtime} | {r.bytes:,} | - | - | - | - | not verified |")
            continue
        lines.append(
            f"| `{r.file}` | {r.runtime} | {r.bytes:,} | {v['accuracy']:.4f} | {v['accuracy_delta_pp']:+.2f} pp | "
            f"{v['agreement']:.2%} | {v['max_abs_diff']:.1e} | {'pass' if v['passed'] else 'FAIL'} "
            f"({v['images']:,} images) |"
        )
    spots = [(r.file, r.spot_check) for r in records if r.spot_check is not None]
    if spots:  # a check on part of the split, kept beside the result above, never in its place
        lines += ["", "Spot checks on part of the test split (`toolkit verify --limit`), beside the results above:", ""]
        lines += [
            f"- `{name}`: {'pass' if s.get('passed') else 'FAIL'} on {s.get('images', 0):,} images"
            + (f" ({'; '.join(s['problems'])})" if s.get("problems") else "")
            for name, s in spots
        ]
    return lines


def phone(records: list[ArtifactRecord], bench: dict[str, Any] | None) -> list[str]:
    """Which files a phone app embeds and with which API, with each one's size, verified accuracy and, where the
    benchmark measured it, its batch-1 latency on one thread of the reference machine (a desktop CPU, not a
    phone: the ratios between rows carry over, the milliseconds do not)."""
    embedded = [r for r in records if r.format in (TFLITE_FORMAT, ORT_FORMAT)]
    if not embedded:
        return []
    ok = [r for r in (bench or {}).get("results", []) if r["status"] == "ok" and r["batch_size"] == 1]
    rows = []
    for rec in sorted(embedded, key=lambda record: record.bytes):
        v = rec.verification or {}
        verified = f"{v['accuracy']:.2%}" if v.get("images") else "-"
        for rt in filter(None, (rec.runtime, second_runtime(rec.runtime, rec.format))):
            r = next((r for r in ok if r["artifact"] == rec.file and r["runtime"] == rt and r["threads"] == 1), None)
            ms = f"{r['p50_ms']:.3f}" if r else "not measured"
            rows.append(f"| `{rec.file}` | {runtime(rt).label} | {rec.bytes:,} | {verified} | {ms} |")
    return [
        "",
        "## In a phone app",
        "",
        "An Android or iOS app embeds a `.tflite` and runs it with LiteRT (the Interpreter, or the CompiledModel API",
        "for GPU and NPU delegation), or an `.ort` with ONNX Runtime Mobile (a reduced build keeps only the",
        "operators in `*.required_operators_and_types.config`). Labels and input normalisation are inside each file;",
        "`manifest.json` has self-check images with each file's expected outputs for a start-up check. Latency: batch",
        "1, one thread, p50 on the reference machine above (a desktop CPU; measure on the phone for its own figures).",
        "",
        "| file | embedded with | bytes | accuracy | p50 ms |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]


def _written_by(fmt: str) -> str:
    """The registry's format whose export wrote files of `fmt`: Vela's compilations come with the micro format."""
    return MICRO_FORMAT if fmt == VELA_FORMAT else fmt


def made_with(records: list[ArtifactRecord]) -> list[str]:
    """What each format says of how its files were made, in the registry's order: only the format knows what its
    `made_with` records mean, so the card asks its module (`describe_made_with(records)`, given the records of
    the files that format wrote). A module without that function has nothing for the card beyond the tables."""
    lines: list[str] = []
    for fmt in FORMATS.values():
        own = [r for r in records if _written_by(r.format) == fmt.name]
        describe = getattr(import_module(fmt.module), DESCRIBE, None) if own else None
        lines += describe(own) if describe else []
    return lines


def _spec(t: TensorSpec) -> str:
    qs = f", scale {t.scale:.9g}, zero point {t.zero_point}" if t.quantization else ""
    return f"`{t.name}` {t.dtype} {t.shape}{qs}"


def inputs_outputs(header: Header, records: list[ArtifactRecord]) -> list[str]:
    """Every artifact's tensors, and how an app prepares an image for them."""
    lines: list[str] = []
    lines += ["", "## Inputs and outputs", "", "| file | input | output |", "|---|---|---|"]
    for r in records:
        lines.append(f"| `{r.file}` | {_spec(r.input)} | {_spec(r.output)} |")
    pre = header.preprocessing
    lines += [
        "",
        "- Input: " + pre.get("input", "") + "; " + pre.get("scaling", "") + "; " + pre.get("layout", "") + ".",
        "- int8 input (the int8 `.tflite` and the C array): " + pre.get("int8_input", "") + ".",
        "- int8 output: " + pre.get("int8_output", "") + ". The ONNX int8 model takes and returns float32, and so do",
        "  all web models (LiteRT.js has no int8 tensors); the web `.tflite` files have a fixed batch of 1.",
        "- Output: 10 probabilities (softmax), index = digit; labels " + ", ".join(header.labels) + ".",
        "",
        "## Preprocessing for app developers",
        "",
        "`toolkit predict` prepares photos and drawings this way (`toolkit/preprocess.py`); an app should do the same:",
        "",
    ]
    lines += [("" if not l.strip() else l.rstrip()) for l in PREPROCESS_DOC.strip().splitlines()[2:]]
    return lines
