"""`toolkit serve`: a static HTTP server for DIR/web, made for WebAssembly runtimes.

Every response carries `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
require-corp` (the page is then cross-origin isolated: WebAssembly threads work and `performance.now()`
keeps its fine resolution), `.mjs` is served as JavaScript and `.wasm` as `application/wasm`, and the
server listens on 127.0.0.1 only. Files are never cached by the browser, so a re-export shows at once.

Only regular files inside the site are served: a path that does not decode is a 400, and a folder (there are no
listings; "/" is index.html), a symlink that leads out of the site, or anything else is a 404. A client that
hangs up mid-download is nothing to report.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import stat
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

from toolkit import manifest
from toolkit import workspace as ws
from toolkit.errors import ToolkitError

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".tflite": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
}
MODEL_SUFFIXES = (".tflite", ".onnx")  # files the page runs: served only as the manifest certifies them
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = False
    certified: dict[str, str] | None = None  # real path of each model file -> its SHA-256 in the manifest

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class' name)
        if not self.quiet:
            super().log_message(format, *args)

    def send_head(self):
        """Headers for the site file the URL names, and the open file; or an error response and None."""
        status, path = self.site_file()
        if path is None:
            self.send_error(status)
            return None
        try:
            f = self.certified_bytes(path) if Path(path).suffix in MODEL_SUFFIXES else open(path, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        if f is None:
            self.send_error(HTTPStatus.CONFLICT, "not certified: the manifest lists no model with these bytes here")
            return None
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-type", self.guess_type(path))
            size = len(f.getbuffer()) if isinstance(f, io.BytesIO) else os.fstat(f.fileno()).st_size
            self.send_header("Content-Length", str(size))
            self.end_headers()
        except BaseException:
            f.close()
            raise
        return f

    def certified_bytes(self, path: str) -> io.BytesIO | None:
        """A model file's bytes, read once and hashed as served, where the workspace's manifest certifies exactly
        these bytes at this path; None otherwise (changed in place, or a copy or link under a name it does not
        list). A site with no manifest around it certifies nothing and refuses nothing."""
        data = Path(path).read_bytes()
        if self.certified is None:
            return io.BytesIO(data)
        expected = self.certified.get(path)
        return io.BytesIO(data) if expected == hashlib.sha256(data).hexdigest() else None

    def site_file(self) -> tuple[HTTPStatus, str | None]:
        """The regular file inside the site that the URL's path names (after symlinks), or why there is none."""
        try:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return HTTPStatus.BAD_REQUEST, None
        if "\x00" in path or not path.startswith("/"):
            return HTTPStatus.BAD_REQUEST, None
        root = os.path.realpath(self.directory)
        if path == "/":
            path = "/index.html"
        real = os.path.realpath(os.path.join(root, path.lstrip("/")))
        if path.endswith("/") or not real.startswith(root + os.sep):
            return HTTPStatus.NOT_FOUND, None
        try:
            regular = stat.S_ISREG(os.stat(real).st_mode)
        except (OSError, ValueError):
            regular = False
        return (HTTPStatus.OK, real) if regular else (HTTPStatus.NOT_FOUND, None)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (BrokenPipe, reset)
            super().handle_error(request, client_address)


def check_site(root: Path) -> Path:
    root = Path(root)
    if not (root / "index.html").is_file():
        raise ToolkitError(f"{root}: no web app here (index.html missing); run `toolkit export --format web` first")
    return root


def certified_files(root: Path) -> dict[str, str] | None:
    """The models that the manifest of the workspace around the site (DIR/web -> DIR) certifies, by real path; None
    where the site has no manifest around it."""
    workspace = Path(root).resolve().parent
    if not ws.manifest(workspace).is_file():
        return None
    return {os.path.realpath(workspace / r.file): r.sha256 for r in manifest.records(workspace)}


def make_server(root: Path, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False) -> Server:
    attributes = {"quiet": quiet, "certified": certified_files(root)}
    handler_class = type("QuietHandler" if quiet else "Handler", (Handler,), attributes)
    handler = functools.partial(handler_class, directory=str(root))
    try:
        return Server((host, port), handler)
    except OSError as e:
        raise ToolkitError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


def url_of(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


@contextlib.contextmanager
def serving(root: Path, port: int = 0, quiet: bool = True) -> Iterator[str]:
    """Serve `root` from a background thread (a free port by default); yield the base URL. The caller's thread
    stays free, so Ctrl-C there always stops the server cleanly."""
    server = make_server(check_site(root), port, quiet=quiet)
    thread = threading.Thread(target=server.serve_forever, name="toolkit-serve", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
