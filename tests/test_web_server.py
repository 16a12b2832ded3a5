"""toolkit.web.server, the local server of the web app: it hands out only regular files inside the site and
only web models the manifest still certifies, and a client that drops a download does not disturb it."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import time
import urllib.parse
from pathlib import Path

import pytest

from toolkit.web import server as serve


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


def test_a_model_is_served_only_as_the_manifest_certifies_its_bytes(tmp_path):
    import urllib.error
    import urllib.request

    release = Path(__file__).resolve().parents[1] / "exported"
    workspace = tmp_path / "ws"
    shutil.copytree(release / "web", workspace / "web", ignore=shutil.ignore_patterns("vendor"))
    shutil.copy(release / "manifest.json", workspace)
    model = workspace / "web" / "models" / "mnist_cnn.int8.tflite"

    def status(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    with serve.serving(workspace / "web") as url:
        assert status(url + "models/mnist_cnn.int8.tflite") == 200
        assert status(url + "index.html") == 200
        os.link(model, workspace / "web" / "models" / "renamed.tflite")  # the same bytes under a name not listed
        assert status(url + "models/renamed.tflite") == 409
        before = model.stat()
        data = bytearray(model.read_bytes())
        data[-1] ^= 1
        model.write_bytes(bytes(data))  # one byte changed, size kept and modification time put back
        os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert status(url + "models/mnist_cnn.int8.tflite") == 409
