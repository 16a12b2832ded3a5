"""Drive the web app in a real headless Chromium (Debian's `chromium`) through Playwright.

Playwright (from PyPI) launches the system Chromium with `executable_path`; its own browser download is never
used. The app is served by `toolkit.web.server` (cross-origin isolated); test images reach the page through a
Playwright route, so nothing is added to DIR/web. One browser context per model keeps runs apart: each gets a
fresh page, a cold cache and (with Chromium's site isolation) its own renderer process, whose peak memory
is read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.errors import ToolkitError
from toolkit.machine import vm_hwm_mb
from toolkit.web import server

CHROMIUM_CANDIDATES = (
    "/usr/lib/chromium/chromium",
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
)
LAUNCH_ARGS = [
    "--no-sandbox",  # the toolkit often runs as root in containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
]
IMAGES_PATH = "__toolkit__/test-images.u8"  # answered by a Playwright route, not by the server
LOAD_TIMEOUT_MS = 120_000


def find_chromium() -> str:
    """TOOLKIT_CHROMIUM, else Debian's binary, else a Chromium or Chrome on PATH."""
    wanted = os.environ.get("TOOLKIT_CHROMIUM")
    if wanted:
        if not (Path(wanted).is_file() and os.access(wanted, os.X_OK)):
            raise ToolkitError(f"TOOLKIT_CHROMIUM={wanted}: not an executable file")
        return wanted
    for name in CHROMIUM_CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ToolkitError(
        "Chromium not found: install it (Debian/Ubuntu: `apt-get install chromium`) or set TOOLKIT_CHROMIUM"
    )


@contextlib.contextmanager
def launch(extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A headless Chromium (Playwright Browser), closed on exit; `extra_args` adds switches (a fake camera)."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ToolkitError(
            "the browser checks need Playwright: pip install playwright (no browser download needed)"
        ) from None
    executable = find_chromium()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, headless=True, args=[*LAUNCH_ARGS, *extra_args])
        except PlaywrightError as e:
            raise ToolkitError(f"{executable}: Chromium did not start ({str(e).splitlines()[0]})") from None
        try:
            yield browser
        finally:
            browser.close()


def browser_name(browser) -> str:
    return f"{browser.browser_type.name.capitalize()} {browser.version} (headless)"


@dataclass
class AppPage:
    """The web app open on one model in its own browser context."""

    page: Any
    context: Any
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, from navigation on
    renderers: set[int] = field(default_factory=set)  # renderer processes that appeared for this page

    def state(self) -> dict[str, Any]:
        return self.page.evaluate(
            "() => { const s = window.edgeToolkit.state; return {firstResultMs: s.firstResultMs, engineMs: s.engineMs, "
            "threads: s.engine && s.engine.threads, threadsAsked: s.engine && s.engine.threadsAsked, note: s.note, "
            "batch: s.engine && s.engine.batch, error: s.error, "
            "isolated: self.crossOriginIsolated, userAgent: navigator.userAgent}; }"
        )

    def classify(self, count: int, batch: int = 250) -> tuple[np.ndarray, float]:
        out = self.page.evaluate("([url, n, b]) => window.edgeToolkit.classify(url, n, b)", [IMAGES_PATH, count, batch])
        return np.asarray(out["probabilities"], dtype=np.float32).reshape(out["n"], -1), float(out["ms"])

    def time(self, batch: int, warmup: int, runs: int) -> np.ndarray:
        out = self.page.evaluate(
            "([url, o]) => window.edgeToolkit.time(url, o)",
            [IMAGES_PATH, {"batch": batch, "warmup": warmup, "runs": runs, "count": max(256, batch)}],
        )
        return np.asarray(out["ms"], dtype=np.float64)

    def peak_gflops(self, path: str, n: int) -> dict[str, Any]:
        """The page's float32 matrix-product rate (app.mjs `peak`), on the model served at `path`."""
        return self.page.evaluate("([url, o]) => window.edgeToolkit.peak(url, o)", [path, {"n": n}])

    def peak_rss_mb(self) -> float | None:
        peaks = [p for p in (vm_hwm_mb(pid) for pid in self.renderers) if p is not None]
        return max(peaks) if peaks else None

    def close(self) -> None:
        self.context.close()


def _renderer_pids() -> set[int]:
    """Chromium renderer processes descending from this one (Playwright's driver starts the browser)."""
    parents: dict[int, int] = {}
    renderers = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            if b"--type=renderer" in (entry / "cmdline").read_bytes():
                renderers.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    me = os.getpid()

    def descends(pid: int) -> bool:
        for _ in range(64):
            pid = parents.get(pid, 0)
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False

    return {pid for pid in renderers if descends(pid)}


def _fulfil_with(body: bytes, headers: dict[str, str]):
    """A Playwright route handler that answers with `body` (a closure per route: a default argument would be
    taken by the request Playwright passes)."""

    def handler(route) -> None:
        route.fulfill(status=200, body=body, content_type="application/octet-stream", headers=headers)

    return handler


def open_app(
    browser,
    base_url: str,
    model_id: str,
    threads: int = 1,
    images: bytes | None = None,
    files: dict[str, bytes] | None = None,
) -> AppPage:
    """Open the app on `model_id`; wait until its runtime has given a first result. Errors name the model."""
    from playwright.sync_api import Error as PlaywrightError

    before = _renderer_pids()
    context = browser.new_context(viewport={"width": 900, "height": 720}, device_scale_factor=1)
    page = context.new_page()
    app = AppPage(page=page, context=context)
    page.on("console", lambda msg: app.console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: app.console.append(f"pageerror: {err}"))
    context.on("request", lambda request: app.requests.append(request.url))
    headers = {"Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
    served = {IMAGES_PATH: images, **(files or {})} if images is not None else dict(files or {})
    for path, body in served.items():  # answered by Playwright: nothing is added to DIR/web
        page.route(f"**/{path}", _fulfil_with(body, headers))
    try:
        page.goto(
            f"{base_url}index.html?model={model_id}&threads={threads}", wait_until="load", timeout=LOAD_TIMEOUT_MS
        )
        page.wait_for_function("() => window.edgeToolkit !== undefined", timeout=LOAD_TIMEOUT_MS)
        page.evaluate("() => window.edgeToolkit.ready")
    except PlaywrightError as e:
        try:  # the app's own message (what it shows the user), else an uncaught page error
            detail = page.evaluate("() => window.edgeToolkit && window.edgeToolkit.state.error")
        except PlaywrightError:
            detail = None
        errors = [c for c in app.console if c.startswith("pageerror")]
        app.close()
        detail = (detail or (errors[-1] if errors else str(e).splitlines()[0]))[:300]
        raise ToolkitError(f"{model_id}: the web app did not start in the browser ({detail})") from None
    app.renderers = _renderer_pids() - before
    return app


# ------------------------------------------------------------------------------------- drawing on the pad


def strokes_from_image(image: np.ndarray, canvas: int = 280, threshold: float = 0.5) -> list[list[tuple[float, float]]]:
    """Pen strokes that redraw a 28x28 digit (values in [0, 1]) on the app's canvas: one horizontal stroke per
    run of ink pixels in each row, in canvas pixels. What a hand does, coarsely; enough to test the pad."""
    img = np.asarray(image, dtype=np.float64).reshape(28, 28)
    scale = canvas / 28
    strokes = []
    for y in range(28):
        ink = np.flatnonzero(img[y] > threshold)
        if not len(ink):
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            strokes.append([((run[0] + 0.5) * scale, (y + 0.5) * scale), ((run[-1] + 0.5) * scale, (y + 0.5) * scale)])
    return strokes


def draw(app: AppPage, strokes: list[list[tuple[float, float]]], steps: int = 3) -> dict[str, Any]:
    """Clear the pad, draw `strokes` with Playwright's mouse (real pointer events), return what the page shows."""
    page = app.page
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=steps)
        page.mouse.up()
    page.wait_for_timeout(50)
    # the page classifies on animation frames while drawing; classify once more so the result is for the final drawing
    return page.evaluate(
        "async () => { const r = await window.edgeToolkit.classifyPad(); const c = document.getElementById('pad');"
        " const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return {digit: r && r.digit, shown: document.getElementById('digit').textContent,"
        " probabilities: r && Array.from(r.probabilities), input: r && Array.from(r.input), rgba: Array.from(rgba),"
        " width: c.width, height: c.height, status: document.getElementById('status').textContent}; }"
    )


def screenshot(
    workspace: Path, target: Path, dataset, model_id: str = "litertjs-float32", index: int = 0
) -> dict[str, Any]:
    """Draw test image `index` on the pad of DIR/web with the mouse and save a PNG of the page (for the README)."""
    x, _ = dataset.splits().test
    with server.serving(ws.site(workspace)) as url, launch() as chromium:
        app = open_app(chromium, url, model_id)
        try:
            out = draw(app, strokes_from_image(x[index] / 255.0))
            with fsio.atomic_path(Path(target)) as tmp:
                app.page.screenshot(path=str(tmp), full_page=True)
        finally:
            app.close()
    return {"digit": out["digit"], "status": out["status"], "file": str(target)}
