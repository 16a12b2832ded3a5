"""Every write of the toolkit goes through here: a temporary file in the same folder, then an atomic rename.

An interrupt at any moment leaves the previous file or none, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import ToolkitError


def ensure_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolkitError(f"{path}: cannot create folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise ToolkitError(f"{path}: folder is not writable")
    return path


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`, on failure remove it.

    For libraries that insist on writing to a path themselves (Keras' `model.save`, ONNX's `save`).
    The temporary name keeps the target's suffix, since some writers check it.
    """
    target = Path(target)
    ensure_dir(target.parent)
    suffix = suffix if suffix is not None else "".join(target.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolkitError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ToolkitError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Capture what native libraries write to file descriptors 1 and 2 (TensorFlow's converter chatter).

    Yields a list that holds the captured text once the block ends, for an error message that needs it.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = tempfile.TemporaryFile(mode="w+b")
    captured: list[str] = []
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield captured
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        sink.seek(0)
        captured.append(sink.read().decode("utf-8", errors="replace"))
        sink.close()
