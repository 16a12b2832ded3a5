"""`toolkit arm64 setup` and the options of `toolkit verify --arch arm64`: the phone's instruction set under
emulation (`toolkit.arm64`). Typer only, as `toolkit.cli`, whose `verify` command takes these options."""

from __future__ import annotations

import functools
from typing import Optional

import typer

from toolkit import api
from toolkit.arm64.cpus import CPUS, DEFAULT_CPU
from toolkit.commandline import JsonOption, app, command, write_json_output
from toolkit.console import console, table

arm64_app = typer.Typer(help="The ARM64 userland that `toolkit verify --arch arm64` runs the phone files in.")
app.add_typer(arm64_app, name="arm64")

ArchOption = typer.Option(
    None,
    "--arch",
    help="arm64: run the phone files (.tflite, .onnx, .ort) on ARM64 kernels under QEMU emulation, against Keras "
    "and x86; int8 files on the whole split, float files (or every file, with --limit) on a seeded, "
    "class-balanced subset. Needs `toolkit arm64 setup`.",
)
CpuOption = typer.Option(
    None, "--cpu", help=f"With --arch: the emulated CPU, {', '.join(CPUS)} (default {DEFAULT_CPU})."
)


@functools.partial(command, group=arm64_app)
def setup(json_out: Optional[str] = JsonOption):
    """Make (or reuse) the Debian bookworm arm64 userland with QEMU and the aarch64 wheels, in the cache
    ($TOOLKIT_CACHE_DIR/arm64, else ~/.cache/edge-toolkit/arm64, where `verify --arch` finds it); root or sudo."""
    result = api.arm64_setup(progress=lambda msg: console.print(msg, style="dim"))
    inside = result.inside
    rows = [
        ["folder", result.folder],
        ["mirror", result.mirror],
        ["steps run now", ", ".join(result.steps_run) or "none (all reused)"],
        ["machine inside", inside["machine"]],
        ["emulated CPU", f"{inside['cpu']}: {', '.join(inside['key_features']) or 'baseline NEON'}"],
        ["QEMU", inside["qemu"]],
        ["runtimes inside", ", ".join(f"{k} {v}" for k, v in inside["versions"].items())],
    ]
    console.print(table("ARM64 userland", ["", ""], rows))
    write_json_output(json_out, result.to_dict())
