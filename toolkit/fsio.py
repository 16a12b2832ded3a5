"""Every write of the toolkit goes through here: a temporary file in the same folder, then an atomic rename.

An interrupt at any moment leaves the previous file or none, never half a file. Only a regular file (or a new
path) is replaced that way: a symlink, FIFO or device (`--json /dev/stdout`, a named pipe) is written through,
since renaming over it would destroy it. Every failure is one `ToolkitError` line naming the file, and a
target that cannot be written at all (a folder, a name over the OS's limit, /proc) can be refused before
any long work with `check_writable_target`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError, first_line

KERNEL_FILE_SYSTEMS = ("/proc", "/sys")  # pseudo files of the kernel: never a place for the toolkit's output


_confined_to: list[Path] = []  # workspaces whose writes must stay inside them (see `confined`)


@contextlib.contextmanager
def confined(root: str | Path | None) -> Iterator[None]:
    """Within this block, a write to a path inside `root` must stay inside it once symlinks are followed: a
    MODEL_CARD.md, report/ or manifest.json planted as a symlink to elsewhere is refused, not written through.
    Writes elsewhere (a --json file, an --out folder, the cache) are not concerned."""
    if root is None:
        yield
        return
    _confined_to.append(Path(os.path.abspath(root)))
    try:
        yield
    finally:
        _confined_to.pop()


def check_confined(target: Path) -> None:
    """Refuse a write inside a confined workspace that a symlink would lead out of it."""
    path = Path(os.path.abspath(target))
    for root in _confined_to:
        if path == root or root in path.parents:
            real_root, real = root.resolve(), path.resolve()
            if real != real_root and real_root not in real.parents:
                raise ToolkitError(f"{target}: a symlink leads out of the workspace {root}; refused, nothing written")


def ensure_dir(path: Path) -> Path:
    path = Path(path)
    check_confined(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ToolkitError(f"{path}: cannot create folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise ToolkitError(f"{path}: folder is not writable")
    return path


def write_error(path: Path, e: OSError) -> ToolkitError:
    """The one-line message for an OSError met while writing `path`."""
    if e.errno == errno.ENOSPC:
        return ToolkitError(f"{path}: disk full (no space left on device)")
    if e.errno == errno.ENAMETOOLONG:
        return ToolkitError(f"{path}: file name too long for the file system")
    if e.errno == errno.EISDIR:
        return ToolkitError(f"{path}: is a folder, not a file")
    return ToolkitError(f"{path}: cannot write ({e.strerror or e})")


def _writes_through(target: Path) -> bool:
    """True when `target` exists and is not a regular file (a symlink, FIFO, device): written through, not replaced.

    Refuses, as `ToolkitError`, a folder, a name over the OS's limits and a new file in /proc or /sys.
    """
    _check_name(target)
    if target.is_dir():
        raise ToolkitError(f"{target}: is a folder, not a file")
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new path (its folder is made or refused later)
        mode = None
    except OSError as e:
        raise write_error(target, e) from None
    if mode is not None and not stat.S_ISREG(mode):
        return True
    folder = os.path.realpath(target.parent)
    for root in KERNEL_FILE_SYSTEMS:
        if folder == root or folder.startswith(root + "/"):
            raise ToolkitError(f"{target}: cannot write files in {root} (the kernel's own file system)")
    return False


def _check_name(target: Path) -> None:
    """Refuse a path whose length or a name in it exceeds the file system's limits (ENAMETOOLONG)."""
    existing = next((p for p in (target, *target.parents) if os.path.isdir(p)), Path("."))
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    if len(os.fsencode(target)) >= path_max:
        raise ToolkitError(f"{target}: path too long ({len(os.fsencode(target))} bytes, the limit is {path_max - 1})")
    for size in (len(os.fsencode(part)) for part in target.parts):
        if size > name_max:
            raise ToolkitError(f"{target}: file name too long ({size} bytes, the limit is {name_max})")


def check_writable_target(path: str | Path) -> Path:
    """Fail now where writing `path` later would fail, before a command does its long work.

    Refuses a folder, a name over the OS's limits, a new file in /proc or /sys, and a path whose folder cannot be
    created (a file in the way) or written. Creates nothing.
    """
    target = Path(path)
    if _writes_through(target):
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise ToolkitError(f"{target}: not writable")
        return target
    existing = next(p for p in (*target.parents, Path(".")) if os.path.lexists(p))
    if not existing.is_dir():
        raise ToolkitError(f"{target}: cannot create folder {target.parent} ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ToolkitError(f"{target}: folder {existing} is not writable")
    return target


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success rename it over `target` (or write it through), on failure remove it.

    For libraries that insist on writing to a path themselves (Keras' `model.save`, ONNX's `save`).
    The temporary name keeps the target's suffix, since some writers check it. An OSError in the block or in
    the rename becomes a `ToolkitError` naming `target`.
    """
    target = Path(target)
    check_confined(target)
    through = _writes_through(target)
    folder = Path(tempfile.gettempdir()) if through else ensure_dir(target.parent)
    suffix = suffix if suffix is not None else "".join(target.suffixes[-1:])
    stem = target.name if len(os.fsencode(target.name)) <= 200 else "long-name"  # the temporary name stays legal
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix if len(suffix) <= 16 else "", dir=folder)
        os.close(fd)
    except OSError as e:
        raise write_error(target, e) from None
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        yield tmp_path
        if through:
            _write_through(tmp_path, target)
            tmp_path.unlink()
        else:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError):
            raise write_error(target, e) from None
        raise


def _write_through(source: Path, target: Path) -> None:
    """Copy `source` into the existing `target`; this process' own stdout or stderr is written at its position.

    (Opening `/dev/stdout` anew would truncate a file the shell redirected it to, losing what was printed.)
    """
    try:
        identity = (os.stat(target).st_dev, os.stat(target).st_ino)
    except FileNotFoundError:  # a dangling symlink: opening it creates the file it names
        identity = None
    own = next((fd for fd in (1, 2) if identity and _identity(fd) == identity), None)
    if own is not None:
        (sys.stdout if own == 1 else sys.stderr).flush()
    with open(source, "rb") as src, open(own if own is not None else target, "wb", closefd=own is None) as out:
        shutil.copyfileobj(src, out)


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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


def json_text(obj: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinity, which JSON cannot hold, are written as null."""
    return json.dumps(finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, infinity; numpy's too) replaced by None."""
    numpy_float = getattr(obj, "ndim", None) == 0 and getattr(getattr(obj, "dtype", None), "kind", "") == "f"
    if isinstance(obj, float) or numpy_float:
        return obj if math.isfinite(float(obj)) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def write_json(target: Path, obj: Any) -> Path:
    return write_text(target, json_text(obj))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_bytes(path: Path) -> bytes:
    """A regular file's bytes, or one line naming the file: missing, a folder, not a regular file (a FIFO or a
    device would block or never end), or unreadable."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise ToolkitError(f"{path}: not a regular file (a pipe, socket or device); only files are read")
        return path.read_bytes()
    except FileNotFoundError:
        raise ToolkitError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ToolkitError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise ToolkitError(f"{path}: cannot read ({e.strerror or e})") from None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB pieces). Commands ask their Workspace, which hashes a
    file once per command; this is the hashing itself."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ToolkitError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ToolkitError(f"{path}: JSON nested too deeply to be a toolkit file") from None
    except ValueError as e:  # an integer of thousands of digits (Python's conversion limit)
        raise ToolkitError(f"{path}: not valid JSON ({first_line(e, 120)})") from None


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Capture what native libraries write to file descriptors 1 and 2 (TensorFlow's converter chatter).

    Yields a list that holds the captured text once the block ends, for an error message that needs it.
    """
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
