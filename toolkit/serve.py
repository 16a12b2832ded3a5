"""`toolkit serve`: a static HTTP server for DIR/web, made for WebAssembly runtimes.

Every response carries `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
require-corp` (the page is then cross-origin isolated: WebAssembly threads work and `performance.now()`
keeps its fine resolution), `.mjs` is served as JavaScript and `.wasm` as `application/wasm`, and the
server listens on 127.0.0.1 only. Files are never cached by the browser, so a re-export shows at once.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator

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
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = False

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class' name)
        if not self.quiet:
            super().log_message(format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def check_site(root: Path) -> Path:
    root = Path(root)
    if not (root / "index.html").is_file():
        raise ToolkitError(f"{root}: no web app here (index.html missing); run `toolkit export --format web` first")
    return root


def make_server(root: Path, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False) -> Server:
    handler = functools.partial(type("QuietHandler" if quiet else "Handler", (Handler,), {"quiet": quiet}), directory=str(root))
    try:
        return Server((host, port), handler)
    except OSError as e:
        raise ToolkitError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


def url_of(server: Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


@contextlib.contextmanager
def serving(root: Path, port: int = 0) -> Iterator[str]:
    """Serve `root` from a background thread (a free port by default); yield the base URL."""
    server = make_server(check_site(root), port, quiet=True)
    thread = threading.Thread(target=server.serve_forever, name="toolkit-serve", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
