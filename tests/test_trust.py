"""Trust boundaries (issue 13, items 4, 5, 9 and 10): what a write may replace, what a resumed or interrupted
training keeps, what the site server hands out, and the words of a few error messages."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from toolkit import data, fsio, preprocess
from toolkit import train as train_lib
from toolkit.errors import Interrupted, ToolkitError
from toolkit.train import TrainConfig
from toolkit.web import server as serve


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------------ 4: what a write may replace


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


def test_data_json_at_a_folder_is_one_line(tmp_path, mnist_dir):
    args = ["data", "--data-dir", str(mnist_dir), "--json", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path}: is a folder, not a file"


# ------------------------------------------------------------------------- 5: resume and interrupts in train

TINY = dict(limit=300, eval_limit=100, batch_size=32)


def _steps_callback(seen: list):
    from toolkit.backend import keras

    class Steps(keras().callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params["steps"])
            assert self.params["steps"] == 10, f"{self.params['steps']} steps per epoch, expected 10 (300 images)"

    return Steps()


def test_resume_trains_on_the_interrupted_plans_limit(tmp_path, mnist):
    train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, **TINY))
    steps: list = []
    result = train_lib.train(
        tmp_path, mnist, TrainConfig(epochs=2, eval_limit=100), resume=True, callbacks=[_steps_callback(steps)]
    )
    assert steps == [10]  # ceil(300 / 32): the saved limit, not all 48,000 images
    assert result.metrics["train_images"] == 300 and result.metrics["config"]["limit"] == 300
    assert result.metrics["epochs"] == 2


def _interrupt_at(when: str):
    from toolkit.backend import keras

    class Interrupt(keras().callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if when == "first batch":
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            if when == "second epoch" and epoch == 1:
                raise KeyboardInterrupt

    return Interrupt()


def test_an_interrupt_before_the_first_epoch_claims_no_checkpoint(tmp_path, mnist):
    with pytest.raises(KeyboardInterrupt) as e:  # (not Interrupted: a plain one would end the test session)
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, **TINY), callbacks=[_interrupt_at("first batch")])
    assert isinstance(e.value, Interrupted)
    assert str(e.value) == "interrupted before the first epoch finished; nothing was kept: start again"
    with pytest.raises(ToolkitError, match="no checkpoint to resume from"):
        train_lib.train(tmp_path, mnist, TrainConfig(**TINY), resume=True)


def test_an_interrupt_after_an_epoch_keeps_it_and_says_how_to_resume(tmp_path, mnist):
    with pytest.raises(KeyboardInterrupt) as e:
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, **TINY), callbacks=[_interrupt_at("second epoch")])
    assert isinstance(e.value, Interrupted)
    assert str(e.value) == (
        f"interrupted; the last finished epoch is kept in {tmp_path / 'checkpoint'}: "
        "continue with `toolkit train --resume`"
    )
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("content", ['{"epoch": 1, "best_ep', "[]", '{"epoch": 1}', "{}"])
def test_a_damaged_state_json_is_reported_as_damaged(tmp_path, mnist, content):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "last.keras").write_bytes(b"PK")
    (checkpoint / "state.json").write_text(content)
    with pytest.raises(ToolkitError, match=r"state.json: the checkpoint state is damaged .*start without --resume$"):
        train_lib.train(tmp_path, mnist, TrainConfig(**TINY), resume=True)


def test_a_damaged_saved_configuration_is_reported_as_damaged(tmp_path, mnist):
    train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, **TINY))
    state_path = tmp_path / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["batch_size"] = "many"
    state_path.write_text(json.dumps(state))
    with pytest.raises(ToolkitError, match=r"checkpoint state is damaged \(its configuration: --batch-size must be"):
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2), resume=True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 100_000_000_000_000_000_000),
        ("epochs", 10_001),
        ("batch_size", 1_000_001),
        ("limit", 10**12),
        ("eval_limit", 10**12),
        ("seed", -1),
        ("seed", 2**32),
    ],
)
def test_absurd_options_are_refused_in_one_line(field, value):
    with pytest.raises(ToolkitError, match="must be") as e:
        TrainConfig(**{field: value}).validate()
    assert "\n" not in str(e.value)


def test_train_with_absurd_epochs_is_one_line(tmp_path, mnist_dir):
    args = [
        "train",
        "--epochs",
        "100000000000000000000",
        "--limit",
        "100",
        "--data-dir",
        str(mnist_dir),
        "--dir",
        str(tmp_path / "ws"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --epochs must be a whole number from 1 to 10,000")


# ------------------------------------------------------------------------------------- 9: the site server


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "web"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>app</title>")
    (root / "assets" / "app.mjs").write_text("export {};")
    (root / "model.bin").write_bytes(os.urandom(8 << 20))  # large enough that an aborted download breaks the pipe
    (tmp_path / "secret.txt").write_text("outside the site")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "inside.mjs").symlink_to(root / "assets" / "app.mjs")
    os.mkfifo(root / "pipe")
    return root


def _get(url: str, path: str) -> tuple[int, bytes, dict]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, dict(response.getheaders())


def test_the_server_serves_only_regular_files_inside_the_site(site, capfd):
    with serve.serving(site) as url:
        status, body, headers = _get(url, "/")
        assert status == 200 and body.startswith(b"<!doctype html>") and headers["Cross-Origin-Embedder-Policy"]
        assert _get(url, "/assets/app.mjs")[0] == 200
        assert _get(url, "/assets/app.mjs")[2]["Content-type"].startswith("text/javascript")
        assert _get(url, "/inside.mjs")[0] == 200  # a symlink that stays inside the site
        assert _get(url, "/index.html?v=2")[0] == 200
        for path in (
            "/leak.txt",
            "/assets/",
            "/assets",
            "/pipe",
            "/missing",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/assets/../../secret.txt",
            "//etc/passwd",
        ):
            status, body, _ = _get(url, path)
            assert status == 404 and b"outside the site" not in body and b"Directory listing" not in body, path
        for path in ("/%00", "/index.html%00.png", "/%ff%fe", "/a%00b/"):
            assert _get(url, path)[0] == 400, path
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_aborts_a_download_is_not_reported(site, capfd):
    with serve.serving(site) as url:
        parts = urllib.parse.urlsplit(url)
        for _ in range(3):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
            sock.sendall(b"GET /model.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1024)
            sock.close()
        time.sleep(1)
        assert _get(url, "/index.html")[0] == 200  # the server goes on
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err


# ------------------------------------------------------------------------------ 10: the words of messages


def test_a_data_file_that_is_a_folder_is_called_a_folder(tmp_path, mnist_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in data.FILES.values():
        (folder / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(ToolkitError, match=r"train-labels-idx1-ubyte.gz: is a folder, not a file$"):
        data.load(folder)


def test_a_huge_image_is_refused_with_its_size(tmp_path):
    from PIL import Image

    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")  # over twice the limit: PIL itself would refuse it
    with pytest.raises(ToolkitError, match=r"huge.png: image is 9000x9000, larger than 40,000,000 pixels$"):
        preprocess.prepare(tmp_path / "huge.png")
    Image.new("L", (7000, 6000)).save(tmp_path / "big.png")
    with pytest.raises(ToolkitError, match=r"big.png: image is 7000x6000, larger than 40,000,000 pixels$"):
        preprocess.prepare(tmp_path / "big.png")
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(tmp_path / "digit.png")
    assert preprocess.prepare(tmp_path / "digit.png").shape == (28, 28, 1)


def test_the_server_refuses_a_web_model_changed_since_export(exported_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(exported_workspace[0], ws, ignore=shutil.ignore_patterns("vendor"))
    changed = ws / "web" / "models" / "mnist_cnn.float16.tflite"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    with serve.serving(ws / "web") as url:
        status, body, _ = _get(url, "/models/mnist_cnn.float16.tflite")
        assert status == 409 and b"not certified" in body
        status, body, _ = _get(url, "/models/mnist_cnn.float32.tflite")
        assert status == 200 and body == (ws / "web" / "models" / "mnist_cnn.float32.tflite").read_bytes()
