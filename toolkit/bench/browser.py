"""The browser backend: the web artifacts in their browser runtimes, inside the web app in headless Chromium.

Per web artifact and thread count, a fresh browser context opens the app (cold cache, own renderer):
- cold start: `performance.now()` when the first result comes back, measured from the start of navigation
  (page, scripts, runtime WebAssembly, model download and compilation, first inference);
- latency: `performance.now()` around each awaited `engine.run()` inside the page, after a warm-up, on real
  test images; the page is cross-origin isolated, so the timer has 5 us resolution, not 100 us;
- throughput at larger batches where the runtime takes them (ONNX Runtime Web; LiteRT.js models are batch 1);
- peak memory: VmHWM of the page's renderer process, which holds the WebAssembly heap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from toolkit import artifacts, manifest
from toolkit import workspace as ws
from toolkit.artifacts import ORT_WEB
from toolkit.bench.driver import BenchRecord, BenchReport, Settings, Target
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.loader import browser_page
from toolkit.timing import runs_for, stats_ms, warmup_for
from toolkit.versions import package_versions
from toolkit.web import app as web_app
from toolkit.web import chromium as chromium_lib

PEAK_PATH = "__toolkit__/peak-matmul-"  # answered by a Playwright route, like the test images
PEAK_SIZES = (256, 512, 1024)
MIN_ITERATIONS = 500  # the page's timer resolution and the browser's noise need this many calls
METHOD = (
    "fresh browser context per artifact and thread count; performance.now() around each awaited engine.run() "
    "in the page (cross-origin isolated: 5 us resolution); inputs cycle through real test images; cold start = "
    "navigation start to first result; memory = VmHWM of the page's renderer process"
)


def matmul_model(n: int) -> bytes:
    """An ONNX model of one float32 MatMul, (n, n) input times a constant (n, n): the page's peak benchmark."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((n, n), 1.0 / n, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class BrowserBackend:
    method = METHOD

    def __init__(self, workspace: Path, dataset: Dataset, files: list[str] | None = None):
        self.workspace, self.dataset, self.files = Path(workspace), dataset, files

    def versions(self) -> dict[str, str]:
        return {**package_versions(("numpy",)), **{k: v["version"] for k, v in web_app.locked_packages().items()}}

    @contextlib.contextmanager
    def open(self, settings: Settings, say: Callable[[str], None]) -> Iterator[BrowserSession]:
        records = manifest.select(self.workspace, self.files, kinds=(artifacts.BROWSER,))
        images = self.dataset.x_test[: max(256, max(settings.batch_sizes))].tobytes()
        with browser_page(self.workspace, say) as page:
            targets = [Target.of(self.workspace, r, page.entry(r)) for r in records]
            yield BrowserSession(targets, settings, page.chromium, page.url, images)


class BrowserSession:
    def __init__(self, targets: list[Target], settings: Settings, chromium, url: str, images: bytes):
        self.targets, self.settings, self.chromium, self.url, self.images = targets, settings, chromium, url, images
        self.name = chromium_lib.browser_name(chromium)
        self.info: dict | None = None
        self.page_peaks: dict[int, float | None] = {}

    def threads(self, settings: Settings) -> list[int]:
        return settings.threads

    def describe(self, target: Target, threads: int) -> str:
        return f"{target.artifact} in {self.name} ({target.runtime}), {threads} thread(s)"

    def measure(self, target: Target, threads: int) -> list[BenchRecord]:
        if target.entry is None:
            return [
                target.row(
                    device=self.name,
                    batch_size=1,
                    threads=threads,
                    status="failed",
                    note=f"not listed in {ws.SITE_DIR}/models.json; export --format web again",
                )
            ]
        try:
            app = chromium_lib.open_app(self.chromium, self.url, target.entry["id"], threads, self.images)
        except ToolkitError as e:
            return [target.row(device=self.name, batch_size=1, threads=threads, status="failed", note=str(e)[:300])]
        try:
            state = app.state()
            self.info = self.info or {
                "name": self.name,
                "user_agent": state["userAgent"],
                "cross_origin_isolated": state["isolated"],
            }
            sizes = [b for b in self.settings.batch_sizes if state["batch"] in (None, b)]
            if not sizes:
                return [
                    target.row(
                        device=self.name,
                        batch_size=state["batch"],
                        threads=threads,
                        status="skipped",
                        note=f"the model has a fixed batch of {state['batch']}; not in --batch-sizes",
                    )
                ]
            rows = []
            for b in sizes:
                ms = app.time(b, warmup_for(b, self.settings.warmup), runs_for(b, self.settings.iterations))
                stats = stats_ms(np.round(ms * 1e6).astype(np.int64))
                rows.append(
                    target.row(
                        device=self.name,
                        batch_size=b,
                        threads=state["threads"],
                        load_ms=round(state["firstResultMs"], 1),
                        note=f"runtime load + compile + first run {state['engineMs']:.0f} ms",
                        **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
                    )
                )
            peak = app.peak_rss_mb()
            for row in rows:
                row.peak_rss_mb = round(peak, 1) if peak else None
            if state["threads"] != threads:
                rows[-1].note += f"; asked for {threads} threads, the runtime used {state['threads']}"
            return rows
        finally:
            app.close()

    def page_peak(self, threads: int) -> float | None:
        """The page's float32 peak on `threads` (WebAssembly SIMD is 128 bits wide, AVX2's 256, AVX-512's 512):
        the best of square MatMuls in ONNX Runtime Web, in a fresh page started with that thread count."""
        if threads in self.page_peaks:
            return self.page_peaks[threads]
        entry = next((t.entry for t in self.targets if t.entry and t.runtime == ORT_WEB), None)
        best = None
        if entry is not None:
            files = {f"{PEAK_PATH}{n}.onnx": matmul_model(n) for n in PEAK_SIZES}
            try:
                app = chromium_lib.open_app(self.chromium, self.url, entry["id"], threads, files=files)
            except ToolkitError:
                app = None
            if app is not None:
                try:
                    best = max(app.peak_gflops(f"{PEAK_PATH}{n}.onnx", n)["gflops"] for n in PEAK_SIZES)
                finally:
                    app.close()
        self.page_peaks[threads] = round(best, 2) if best else None
        return self.page_peaks[threads]

    def finish(self, report: BenchReport) -> None:
        report.browser = self.info
        report.versions["browser"] = self.name
        for row in report.results:
            if row.status == "ok" and row.device == self.name:
                row.page_peak_gflops = self.page_peak(row.threads)
                if row.page_peak_gflops:
                    row.fraction_of_page_peak = round(row.gflops_per_second / row.page_peak_gflops, 4)
