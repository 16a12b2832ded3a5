"""toolkit.fsio, through which the toolkit writes every file: it writes through symlinks, FIFOs and devices
without replacing them, leaves the old file and no temporary when a write fails, and refuses a target it cannot
write before any work is done."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from toolkit import fsio
from toolkit.errors import ToolkitError


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_symlink_is_written_through_and_stays_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fsio.write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "made-through-the-link.json")
    assert fsio.check_writable_target(dangling) == dangling
    fsio.write_json(dangling, {"b": 2})
    assert dangling.is_symlink() and json.loads((tmp_path / "made-through-the-link.json").read_text()) == {"b": 2}
    assert _no_temporaries(tmp_path)


def test_a_fifo_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    fsio.write_text(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert received == [b"through the pipe\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def _device(tmp_path: Path, name: str, minor: int) -> Path:
    """/dev/NAME, or as root a copy of it made here: root could replace the real one if the test failed."""
    if os.geteuid() != 0:
        return Path("/dev") / name
    device = tmp_path / name
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except OSError:
        pytest.skip("no permission to make a device node")
    return device


def test_a_character_device_is_written_through_and_disk_full_is_one_line(tmp_path):
    full, null = _device(tmp_path, "full", 7), _device(tmp_path, "null", 3)
    with pytest.raises(ToolkitError, match=r"full: disk full \(no space left on device\)$"):
        fsio.write_json(full, {"a": 1})
    fsio.write_json(null, {"a": 1})
    assert stat.S_ISCHR(os.lstat(full).st_mode) and stat.S_ISCHR(os.lstat(null).st_mode)


def test_this_process_stdout_is_written_at_its_position(tmp_path):
    """`--json /dev/stdout > out` keeps what was printed before (a new open would truncate the file)."""
    out = tmp_path / "out.txt"
    code = "from toolkit import fsio; print('table', flush=True); fsio.write_json('/proc/self/fd/1', {'a': 1})"
    with open(out, "w") as f:
        proc = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert out.read_text() == 'table\n{\n  "a": 1\n}\n'


def test_disk_full_during_an_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_then_full(self, content):
        with open(self, "wb") as f:
            f.write(content[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(ToolkitError, match=r"results.json: disk full \(no space left on device\)$"):
        fsio.write_json(target, {"a": 1})
    assert target.read_text() == "old" and _no_temporaries(tmp_path)


def test_an_oserror_inside_atomic_path_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(ToolkitError, match=r"model.keras: cannot write \(Permission denied\)"):
        with fsio.atomic_path(tmp_path / "model.keras"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert _no_temporaries(tmp_path)


@pytest.mark.parametrize("case", ["folder", "long name", "proc", "file in the way"])
def test_targets_that_cannot_be_written_are_refused_early_and_at_the_write(tmp_path, case):
    target, message = {
        "folder": (tmp_path, "is a folder, not a file"),
        "long name": (tmp_path / ("x" * 300 + ".json"), r"file name too long \(305 bytes, the limit is \d+\)"),
        "proc": (Path("/proc/toolkit-results.json"), "cannot write files in /proc"),
        "file in the way": (tmp_path / "a-file" / "sub" / "r.json", "cannot create folder|Not a directory"),
    }[case]
    (tmp_path / "a-file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ToolkitError, match=message) as early:
        fsio.check_writable_target(target)
    assert str(target) in str(early.value) and "\n" not in str(early.value)
    with pytest.raises(ToolkitError) as late:
        fsio.write_json(target, {"a": 1})
    assert str(target) in str(late.value) or str(target.parent) in str(late.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, nothing replaced


def test_check_writable_target_accepts_new_paths_and_creates_nothing(tmp_path):
    assert fsio.check_writable_target(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert fsio.check_writable_target(Path(os.devnull)) == Path(os.devnull)
    assert not (tmp_path / "new").exists()


def test_a_long_file_name_within_the_limit_is_written(tmp_path):
    target = tmp_path / ("y" * 250 + ".json")  # the temporary name beside it must stay within the limit too
    fsio.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and _no_temporaries(tmp_path)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "manifest.json"])
def test_a_fifo_is_never_read(tmp_path, name):
    import os

    from toolkit import data, manifest

    os.mkfifo(tmp_path / name)  # opening it to read would wait for a writer forever
    with pytest.raises(ToolkitError, match=f"{name}: not a regular file"):
        if name == "manifest.json":
            manifest.read(tmp_path)
        else:
            data.load(tmp_path, dataset="idx")


def test_a_write_inside_a_confined_workspace_never_leaves_it(tmp_path):
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    (workspace / "web").mkdir(parents=True)
    outside.mkdir()
    (workspace / "MODEL_CARD.md").symlink_to(outside / "card.md")
    (workspace / "report").symlink_to(outside, target_is_directory=True)
    (workspace / "web" / "vendor").symlink_to(outside, target_is_directory=True)
    (workspace / "inner").mkdir()
    (workspace / "alias").symlink_to(workspace / "inner", target_is_directory=True)  # a link that stays inside
    with fsio.confined(workspace):
        for target in ("MODEL_CARD.md", "report/x.png", "web/vendor/ort.mjs"):
            with pytest.raises(ToolkitError, match="a symlink leads out of the workspace"):
                fsio.write_text(workspace / target, "x")
        with pytest.raises(ToolkitError, match="a symlink leads out of the workspace"):
            fsio.ensure_dir(workspace / "report" / "sub")
        fsio.write_text(workspace / "alias" / "ok.txt", "x")  # inside once resolved: written
        fsio.write_text(tmp_path / "elsewhere.json", "{}")  # not in the workspace: not concerned
    assert sorted(p.name for p in outside.iterdir()) == []
    assert (workspace / "inner" / "ok.txt").read_text() == "x"
    fsio.write_text(workspace / "MODEL_CARD.md", "y")  # outside a confined block, the old rule: written through
    assert (outside / "card.md").read_text() == "y"
