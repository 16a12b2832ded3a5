"""What every `toolkit` command shares: the typer app, the common options, the wrapper that turns errors and
Ctrl-C into clean exits, and `--json` output. `toolkit.cli` holds the commands themselves."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from toolkit import fsio
from toolkit.console import console, error
from toolkit.contract import HELP as CONTRACT_HELP
from toolkit.errors import Interrupted, ToolkitError
from toolkit.workspace import Workspace

app = typer.Typer(
    name="toolkit",
    help="Train the reference MNIST CNN, export it for edge runtimes (TFLite/LiteRT, ONNX), verify and benchmark it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DirOption = typer.Option(
    Path("exported"), "--dir", help="The workspace: model.keras, artifacts, manifest.json.", file_okay=False
)
DataDirOption = typer.Option(
    None,
    "--data-dir",
    help="Folder with the four IDX files (gzipped or not), a Keras-style mnist.npz, or images per class "
    "(DIR/train/<class>/*.png|jpg, optional DIR/test/). Default: the data the workspace was exported with, else "
    "$TOOLKIT_DATA_DIR, else MNIST from the cache, then a download.",
)
DatasetOption = typer.Option(
    None,
    "--dataset",
    help="mnist (checksums enforced), idx (any dataset in MNIST's IDX layout) or folder (images per class; "
    "a --data-dir with a train/ folder is one anyway). Default: the workspace's own, else mnist.",
)
ImageSizeOption = typer.Option(
    None,
    "--image-size",
    help="Resize an image folder's images to N or HxW pixels (bilinear); the same on every command.",
)
VerifyLimitOption = typer.Option(None, min=1, help="Verify on the first N test images only (default: all 10,000).")
InputContractOption = typer.Option(None, "--input-contract", help=CONTRACT_HELP)
AllowChanceOption = typer.Option(
    False,
    "--allow-chance",
    help="Certify parity even where the Keras model is at chance level on its own test split (an untrained model).",
)
JsonOption = typer.Option(None, "--json", help="Also write the result as JSON to this file ('-' for stdout).")


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def _not_the_manifest(target: str, workspace: Path | None) -> None:
    """--json never overwrites the workspace's manifest (it would lose every record and certificate)."""
    if workspace is not None and Path(target).resolve() == (Path(workspace) / "manifest.json").resolve():
        raise ToolkitError(f"--json {target}: that is the workspace's manifest; write the result elsewhere")


def _stdout_open() -> bool:
    """Whether standard output can be written: not None, not closed, and (for a real file) its descriptor open."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        return False
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):  # an in-memory stream (tests, embedding): open
        return True
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def command(fn, group: typer.Typer | None = None):
    """Register `fn` as a command (of `group`, a group of commands such as `toolkit arm64`; default the app itself)
    that turns ToolkitError and Ctrl-C/SIGTERM into clean exits."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):

        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        # Ctrl-C interrupts even where the parent ignores SIGINT (a job started in the background by a shell
        # without job control inherits SIG_IGN, and Python then installs no handler): `serve` stops only so
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if kwargs.get("json_out") == "-":  # stdout carries the JSON alone; tables go to stderr
            console.file = sys.stderr
        try:
            if kwargs.get("json_out") not in (None, "-"):  # a bad --json path fails now, not after the work
                fsio.check_writable_target(kwargs["json_out"])
                _not_the_manifest(kwargs["json_out"], kwargs.get("workspace"))
            if kwargs.get("json_out") == "-" and not _stdout_open():
                raise ToolkitError("--json -: standard output is closed; pass --json FILE")
            with fsio.confined(kwargs.get("workspace")):  # a write inside the workspace never leaves it
                return fn(*args, **kwargs)
        except ToolkitError as e:
            error(str(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            error(str(e) if isinstance(e, Interrupted) else "interrupted; nothing half-written was left behind")
            raise typer.Exit(130) from None
        finally:
            console.file = None  # back to the current stdout: the next command in this process prints where it should

    return (group or app).command()(wrapper)


def load_data(data_dir: Optional[Path], dataset: Optional[str], image_size: Optional[str], workspace=None):
    """The dataset of a data-reading command, from its three common options; where none is given, the data the
    workspace remembers (the data it was exported with)."""
    from toolkit.data import load
    from toolkit.data.folders import parse_image_size

    size = parse_image_size(image_size)
    if workspace is None:
        return load(data_dir, dataset or "mnist", progress=console.print, image_size=size)
    return Workspace.of(workspace).dataset(data_dir, dataset, size, progress=console.print)


def write_json_output(target: Optional[str], obj) -> None:
    if target is None:
        return
    if target == "-":
        sys.stdout.write(fsio.json_text(obj))
        return

    fsio.write_json(Path(target), obj)


def split_list(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def int_list(value: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=option) from None
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"every value must be at least 1, got {value!r}", param_hint=option)
    return values


def escape_unencodable_output() -> None:
    """A file name that is not UTF-8 is shown escaped, never a crash; a closed stream stays as it is."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.reconfigure(errors="backslashreplace")


ProcessesOption = typer.Option(
    1,
    "--processes",
    min=1,
    max=64,
    help="Train as N processes of one multi-host run on this machine (loopback; jax or tensorflow backend), each "
    "with TOOLKIT_CPU_DEVICES devices; TOOLKIT_PROCESS_TIMEOUT seconds (300) before a stalled one gives up.",
)
