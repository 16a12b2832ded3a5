"""`toolkit benchmark --browser`: the web artifacts in their browser runtimes, in headless Chromium.

Per web artifact and thread count, a fresh browser context opens the app (cold cache, own renderer):
- cold start: `performance.now()` when the first result comes back, measured from the start of navigation
  (page, scripts, runtime WebAssembly, model download and compilation, first inference);
- latency: `performance.now()` around each awaited `engine.run()` inside the page, after a warm-up, on real
  test images; the page is cross-origin isolated, so the timer has 5 us resolution, not 100 us;
- throughput at larger batches where the runtime takes them (ONNX Runtime Web; LiteRT.js models are batch 1);
- peak memory: VmHWM of the page's renderer process, which holds the WebAssembly heap.
Rows use the native results' schema (`BenchRecord`), with `device` naming the browser and its version.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit import manifest
from toolkit.benchmark import BenchRecord, BenchReport, machine_info, machine_slug, measure_peak_gflops, usable_cpus
from toolkit.bench_worker import runs_for, stats_ms
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.versions import package_versions

WEB_RUNTIMES = ("litertjs-wasm", "onnxruntime-web-wasm")
METHOD = ("fresh browser context per artifact and thread count; performance.now() around each awaited engine.run() in the page "
          "(cross-origin isolated: 5 us resolution); inputs cycle through real test images; cold start = navigation start to "
          "first result; memory = VmHWM of the page's renderer process")


def benchmark_browser(
    workspace: str | Path,
    dataset: Dataset,
    batch_sizes: list[int] = (1, 32, 256),
    threads: list[int] | None = None,
    iterations: int = 1000,
    warmup: int = 100,
    files: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    from toolkit import browser, serve, web
    from toolkit.export.web import SITE_DIR
    from toolkit.model import build_model, flops_per_image
    from toolkit.verify import select_records

    say = progress or (lambda msg: None)
    if iterations < 500:
        raise ToolkitError(f"--iterations must be at least 500 for the browser (timer resolution and noise), got {iterations}")
    workspace = Path(workspace)
    records = select_records(workspace, files, browser=True)
    site = serve.check_site(workspace / SITE_DIR)
    if web.vendor_missing(site):
        web.install_vendor(site, say)
    entries = {e["file"]: e for e in json.loads((site / "models.json").read_text())["models"]}
    batch_sizes = sorted(set(batch_sizes))
    threads = sorted(set(threads or {1, usable_cpus()}))
    info = machine_info()
    flops = flops_per_image(build_model())
    say("measuring this machine's float32 peak (numpy matrix product)")
    peaks = {t: round(measure_peak_gflops(t), 2) for t in threads}
    info["peak_float32_gflops"] = {str(t): p for t, p in peaks.items()}
    images = dataset.x_test[: max(256, max(batch_sizes))].tobytes()
    report = BenchReport(
        machine=info, versions={**package_versions(("numpy",)), **{k: v["version"] for k, v in web.locked_packages().items()}},
        settings={"batch_sizes": batch_sizes, "threads": threads, "iterations_batch1": iterations, "warmup": warmup,
                  "flops_per_image": flops, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "method": METHOD},
    )
    with serve.serving(site) as url, browser.launch() as chromium:
        name = browser.browser_name(chromium)
        report.versions["browser"] = name
        for record in records:
            entry = entries.get(str(Path(record.file).relative_to(SITE_DIR)))
            base = dict(artifact=record.file, format=record.format, variant=record.variant, runtime=record.runtime,
                        device=name, bytes=record.bytes, accuracy=(record.verification or {}).get("accuracy"))
            for t in threads:
                say(f"{record.file} in {name} ({record.runtime}), {t} thread(s)")
                if entry is None:
                    report.results.append(BenchRecord(**base, batch_size=1, threads=t, status="failed",
                                                      note=f"not listed in {SITE_DIR}/models.json; export --format web again"))
                    continue
                try:
                    app = browser.open_app(chromium, url, entry["id"], t, images)
                except ToolkitError as e:
                    report.results.append(BenchRecord(**base, batch_size=1, threads=t, status="failed", note=str(e)[:300]))
                    continue
                try:
                    state = app.state()
                    report.browser = report.browser or {"name": name, "user_agent": state["userAgent"],
                                                        "cross_origin_isolated": state["isolated"]}
                    sizes = [b for b in batch_sizes if state["batch"] in (None, b)]
                    if not sizes:
                        report.results.append(BenchRecord(**base, batch_size=state["batch"], threads=t, status="skipped",
                                                          note=f"the model has a fixed batch of {state['batch']}; not in --batch-sizes"))
                        continue
                    for b in sizes:
                        runs = runs_for(b, iterations)
                        ms = app.time(b, warmup if b == 1 else max(3, warmup // b), runs)
                        stats = stats_ms(np.round(ms * 1e6).astype(np.int64))
                        rec = BenchRecord(**base, batch_size=b, threads=state["threads"],
                                          load_ms=round(state["firstResultMs"], 1), **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()})
                        rec.images_per_second = round(b / (stats["mean_ms"] / 1e3), 1)
                        rec.gflops_per_second = round(flops * rec.images_per_second / 1e9, 3)
                        rec.peak_gflops_per_second = peaks[t]
                        rec.fraction_of_peak = round(rec.gflops_per_second / peaks[t], 4)
                        rec.note = f"runtime load + compile + first run {state['engineMs']:.0f} ms"
                        report.results.append(rec)
                    peak = app.peak_rss_mb()
                    for rec in report.results[-len(sizes):]:
                        rec.peak_rss_mb = round(peak, 1) if peak else None
                    if state["threads"] != t:
                        report.results[-1].note += f"; asked for {t} threads, the runtime used {state['threads']}"
                finally:
                    app.close()
    return report


def is_browser_row(row: dict[str, Any]) -> bool:
    return row.get("runtime") in WEB_RUNTIMES


def merge_previous(report: dict[str, Any], previous: Path, browser: bool) -> dict[str, Any]:
    """Keep the other kind's rows (native or browser) from an earlier results.json of the same machine, so that
    the summary shows web runtimes beside native ones whichever was measured last."""
    try:
        prev = json.loads(Path(previous).read_text())
        same_machine = machine_slug(prev["machine"]) == machine_slug(report["machine"])
    except (OSError, ValueError, KeyError, TypeError):
        return report
    if not same_machine:
        return report
    kept = [r for r in prev.get("results", []) if is_browser_row(r) != browser]
    if not kept:
        return report
    if browser:  # the native run's machine, settings and harness check stay; the browser's come beside them
        return {**prev, "versions": {**prev.get("versions", {}), **report["versions"]}, "browser": report.get("browser"),
                "browser_settings": report["settings"], "results": [*kept, *report["results"]]}
    merged = {**report, "results": [*report["results"], *kept]}
    for key in ("browser", "browser_settings"):
        if prev.get(key):
            merged[key] = prev[key]
    merged["versions"] = {**{k: v for k, v in prev.get("versions", {}).items() if k not in report["versions"]}, **report["versions"]}
    return merged
