"""The web app: export, server, parity and latency in headless Chromium, drawing on the pad.

These tests drive Debian's Chromium through Playwright (marker `browser`); CI installs Chromium first.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import parity_holds
from toolkit import manifest, preprocess, runtimes
from toolkit import workspace as ws_paths
from toolkit.web import app as web
from toolkit.web import chromium as browser
from toolkit.web import server as serve

pytestmark = pytest.mark.browser

WEB_FILES = {
    "web/models/mnist_cnn.float32.tflite": "litertjs-wasm",
    "web/models/mnist_cnn.float16.tflite": "litertjs-wasm",
    "web/models/mnist_cnn.dynamic.tflite": "litertjs-wasm",
    "web/models/mnist_cnn.int8.tflite": "litertjs-wasm",
    "web/models/mnist_cnn.float32.onnx": "onnxruntime-web-wasm",
    "web/models/mnist_cnn.int8.onnx": "onnxruntime-web-wasm",
}


@pytest.fixture(scope="module")
def site(exported_workspace) -> Path:
    workspace, _ = exported_workspace
    return workspace / ws_paths.SITE_DIR


@pytest.fixture()
def chromium():  # one Playwright at a time: the library's own runs start theirs
    with browser.launch() as b:
        yield b


def test_web_export_records_every_model_with_its_browser_runtime(exported_workspace, site):
    workspace, _ = exported_workspace
    records = {r.file: r for r in manifest.records(workspace) if r.format == "web"}
    assert {f: r.runtime for f, r in records.items()} == WEB_FILES
    listed = json.loads((site / "models.json").read_text())
    assert [m["file"] for m in listed["models"]] == [f.removeprefix("web/") for f in WEB_FILES]
    for entry in listed["models"]:
        record = records[f"web/{entry['file']}"]
        assert entry["sha256"] == record.sha256 == manifest.file_sha256(site / entry["file"])
        runner = runtimes.load(site / entry["file"])
        assert runner.input.dtype == runner.output.dtype == "float32"  # LiteRT.js has no int8 tensors
        if entry["format"] == "tflite":  # LiteRT.js cannot resize: a fixed batch of 1
            assert entry["batch"] == 1 and runner.input.shape[0] == 1
        else:
            assert entry["batch"] is None and runner.input.shape[0] == -1
    assert records["web/models/mnist_cnn.int8.tflite"].made_with["calibration"]["images"] == 200


def test_vendor_files_come_from_the_locked_npm_packages(site):
    modules = web.node_modules()
    locked = web.locked_packages()
    assert locked["onnxruntime-web"]["version"] == "1.30.0" and locked["@litertjs/core"]["version"] == "2.5.3"
    for f in web.VENDOR_FILES:
        assert (site / web.VENDOR / f.target).read_bytes() == (modules / f.package / f.source).read_bytes(), f.target
    listed = {v["file"]: v for v in json.loads((site / "models.json").read_text())["vendor"]}
    assert set(listed) == {f"vendor/{f.target}" for f in web.VENDOR_FILES}
    # the page's own files load nothing from another origin
    for name in ("index.html", "app.mjs", "engines.mjs", "preprocess.mjs", "style.css"):
        assert not re.search(r"https?://", (site / name).read_text().replace("http://www.w3.org", "")), name


def test_server_sets_isolation_headers_and_types(site):
    with serve.serving(site) as url:
        assert url.startswith("http://127.0.0.1:")
        for path, kind in (
            ("index.html", "text/html"),
            ("app.mjs", "text/javascript"),
            ("vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", "application/wasm"),
            ("vendor/litertjs/wasm/litert_wasm_internal.js", "text/javascript"),
            ("models.json", "application/json"),
        ):
            with urllib.request.urlopen(url + path) as response:
                assert response.headers["Content-Type"].startswith(kind), path
                assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "../manifest.json")
        assert e.value.code == 404


def test_serve_command_prints_the_url_and_stops_on_ctrl_c(exported_workspace):
    workspace, _ = exported_workspace
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "serve", "--port", "0", "--dir", str(workspace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "index.html") as response:
            assert b"Draw a digit" in response.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err, err


def test_page_loads_offline_and_drawn_digits_are_recognised(site, chromium, mnist, tmp_path):
    """Strokes drawn with Playwright's mouse through the page's pointer handlers; the page's JS preprocessing
    must equal toolkit.preprocess on the same canvas pixels, and the answer the drawn digit's label."""
    with serve.serving(site) as url:
        app = browser.open_app(chromium, url, "litertjs-float32")
        try:
            assert app.state()["isolated"] is True  # COOP/COEP took effect
            x, y = mnist.splits().test
            for i in range(4):
                out = browser.draw(app, browser.strokes_from_image(x[i] / 255.0))
                rgba = np.asarray(out["rgba"], np.uint8).reshape(out["height"], out["width"], 4)
                expected = preprocess.normalise(preprocess.to_grey(Image.fromarray(rgba, "RGBA")))[..., 0]
                seen = np.asarray(out["input"], np.float32).reshape(28, 28)
                assert np.abs(seen - expected).max() <= 1e-5
                assert out["shown"] == str(y[i]) == str(out["digit"]), (i, out["status"])
                assert "last inference" in out["status"]
            app.page.screenshot(path=str(tmp_path / "web-app.png"), full_page=True)
            app.page.click("#clear")
            assert app.page.text_content("#digit") == "?"
        finally:
            app.close()
    assert Image.open(tmp_path / "web-app.png").size[0] > 500
    assert any(u.endswith("litert_wasm_internal.wasm") for u in app.requests) and any(
        u.endswith(".tflite") for u in app.requests
    )
    assert all(u.startswith(url) for u in app.requests), [u for u in app.requests if not u.startswith(url)]  # offline
    assert not any(c.startswith("pageerror") for c in app.console), app.console


def test_every_runtime_and_variant_starts(site, chromium):
    with serve.serving(site) as url:
        for entry in json.loads((site / "models.json").read_text())["models"]:
            app = browser.open_app(chromium, url, entry["id"])
            try:
                state = app.state()
                assert state["error"] is None and state["firstResultMs"] > 0, entry["id"]
            finally:
                app.close()


@contextlib.contextmanager
def plain_static_host(root: Path):
    """The site served as a plain static host serves it (Python's http.server, as GitHub Pages or a bucket would):
    no COOP/COEP headers."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.func.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def _draws_every_model(site, chromium, mnist, url, threads_expected: int) -> None:
    """Every model of the page, asked for two threads, classifies a drawn test digit; returns nothing, asserts."""
    x, y = mnist.splits().test
    strokes = browser.strokes_from_image(x[0] / 255.0)
    for entry in json.loads((site / "models.json").read_text())["models"]:
        app = browser.open_app(chromium, url, entry["id"], threads=2)
        try:
            state = app.state()
            assert state["threadsAsked"] == 2 and state["threads"] == threads_expected, (entry["id"], state)
            assert state["isolated"] is (threads_expected > 1)
            note = app.page.locator("#note")
            if threads_expected == 1:
                assert "not cross-origin isolated" in state["note"] and note.is_visible(), state
            else:
                assert state["note"] is None and not note.is_visible()
            out = browser.draw(app, strokes)
            assert out["shown"] == str(y[0]), (entry["id"], out["status"])
            assert not any(c.startswith("pageerror") for c in app.console), app.console
        finally:
            app.close()


def test_on_a_host_without_isolation_headers_every_model_runs_on_one_thread_and_says_why(site, chromium, mnist):
    with plain_static_host(site) as url:
        _draws_every_model(site, chromium, mnist, url, threads_expected=1)


def test_with_the_isolation_headers_every_model_runs_on_two_threads(site, chromium, mnist):
    with serve.serving(site) as url:
        _draws_every_model(site, chromium, mnist, url, threads_expected=2)


def test_the_opt_in_service_worker_isolates_a_page_on_a_plain_host(site, chromium, tmp_path):
    copy = tmp_path / "web"
    shutil.copytree(site, copy)
    index = copy / "index.html"
    opt_in = index.read_text().replace(
        '<meta name="cross-origin-isolation" content="headers">',
        '<meta name="cross-origin-isolation" content="service-worker">',
    )
    assert opt_in != index.read_text()
    index.write_text(opt_in)
    with plain_static_host(copy) as url:
        context = chromium.new_context()
        try:
            page = context.new_page()
            page.goto(f"{url}index.html?model=litertjs-float32&threads=2")
            # the first load registers the worker and reloads once; the second is isolated and starts the model
            page.wait_for_function(
                "() => self.crossOriginIsolated && window.edgeToolkit && window.edgeToolkit.state.engine !== null",
                timeout=60_000,
            )
            state = page.evaluate("() => ({threads: edgeToolkit.state.engine.threads, note: edgeToolkit.state.note})")
            assert state == {"threads": 2, "note": None}
        finally:
            context.close()


def test_verify_in_the_browser_records_parity_in_the_manifest(exported_workspace, mnist, tmp_path):
    from toolkit import verify

    source, _ = exported_workspace
    workspace = tmp_path / "ws"
    shutil.copytree(source, workspace)
    results = verify.run_parity(workspace, mnist, limit=300, kinds=("browser",))
    assert {r.file for r in results} == set(WEB_FILES)
    for r in results:
        assert parity_holds(r) and r.images == 300 and "Chromium" in r.where, (r.file, r.problems)
        if r.variant == "float32":
            assert r.max_abs_diff < 1e-5 and r.agreement == 1.0
    stored = manifest.read(workspace)["artifacts"]["web/models/mnist_cnn.float32.onnx"]["verification"]
    assert stored["passed"] and stored["images"] == 300
    # a web model changed after export is refused, and the failure is recorded
    model = workspace / "web/models/mnist_cnn.float16.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # (the last byte is the packed label zip's, already 0)
    model.write_bytes(bytes(data))
    bad = verify.run_parity(workspace, mnist, files=[str(model)], limit=50, kinds=("browser",))
    assert not bad[0].passed and "SHA-256 differs" in bad[0].problems[0]


def test_verify_browser_cli_errors_are_one_line(exported_workspace, tmp_path):
    workspace, _ = exported_workspace
    env = dict(os.environ, TOOLKIT_CHROMIUM=str(tmp_path / "no-chromium"))
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "verify", "--browser", "--limit", "20", "--dir", str(workspace)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert (
        proc.returncode == 1 and "no-chromium: not an executable file" in proc.stderr and "Traceback" not in proc.stderr
    )
    empty = tmp_path / "empty"
    (empty).mkdir()
    shutil.copy(workspace / "model.keras", empty)
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", "serve", "--dir", str(empty)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "run `toolkit export --format web` first" in proc.stderr


def test_browser_benchmark_rows_share_the_native_schema(exported_workspace, mnist, tmp_path):
    from dataclasses import fields

    from toolkit.bench import benchmark as bench
    from toolkit.bench.driver import BenchRecord, merge

    workspace, _ = exported_workspace
    files = ["web/models/mnist_cnn.float32.tflite", "web/models/mnist_cnn.float32.onnx"]
    report = bench.measure(
        workspace, mnist, batch_sizes=[1, 8], threads=[1], iterations=500, warmup=20, models=files, browser=True
    )
    everything = report.to_dict()["results"]
    rows = [r for r in everything if r["device"].startswith("Chromium")]
    # the native rows come from the same run, so that the browser's ratio to them is honest
    assert {r["runtime"] for r in everything if r not in rows} >= {"litert", "onnxruntime"}
    (cmp,) = report.comparison
    assert cmp["threads"] == 1 and cmp["web_over_native"] > 0 and cmp["best_web_p50_ms"] > 0
    assert {(r["runtime"], r["batch_size"]) for r in rows} == {
        ("litertjs-wasm", 1),
        ("onnxruntime-web-wasm", 1),
        ("onnxruntime-web-wasm", 8),
    }
    for r in rows:
        assert set(r) == {f.name for f in fields(BenchRecord)}
        assert r["status"] == "ok" and r["device"].startswith("Chromium") and r["threads"] == 1
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["runs"] == (500 if r["batch_size"] == 1 else 63)
        assert r["load_ms"] > 0 and r["peak_rss_mb"] > 20 and r["bytes"] > 400_000
        assert r["images_per_second"] == pytest.approx(r["batch_size"] / r["mean_ms"] * 1e3, rel=1e-3)
        assert r["page_peak_gflops"] > 1  # the page's own float32 peak, a MatMul in ONNX Runtime Web
        assert r["fraction_of_page_peak"] == pytest.approx(r["gflops_per_second"] / r["page_peak_gflops"], rel=1e-2)
    assert report.browser["cross_origin_isolated"] is True
    # a native results.json of the same machine keeps its rows; the browser's come beside them
    native = {**report.to_dict(), "results": [{**rows[0], "runtime": "litert", "artifact": "mnist_cnn.float32.tflite"}]}
    (tmp_path / "results.json").write_text(json.dumps(native))
    merged = merge({**report.to_dict(), "results": rows}, tmp_path / "results.json")
    assert [r["runtime"] for r in merged["results"]] == ["litert", *[r["runtime"] for r in rows]]
    again = merge(native, tmp_path / "results.json")
    assert again["results"] == native["results"]  # a native run replaces the native rows
