"""What a benchmark run leaves for people: results.json, SUMMARY.md (its tables) and benchmark.png, from one report.

The report dict is the driver's `BenchReport.to_dict()`; these functions only render it, so a committed
results.json can be rendered again (`toolkit benchmark --render`-style tests do) without measuring anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit.plots import pyplot, save_png


def _label(r: dict[str, Any]) -> str:
    return f"{r['artifact'].rsplit('/', 1)[-1]} ({r['runtime']})"


def _or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _floor(r: dict[str, Any]) -> str:
    """A row's p50 against its compute floor; rows measured before the floor was recorded have none."""
    return f"{r['ratio_to_floor']:.2f}x" if r.get("ratio_to_floor") is not None else "-"


def _setup_lines(report: dict[str, Any]) -> list[str]:
    """The run's bullets: the machine, its float32 peak, the versions and the settings the rows were timed with."""
    m, s, v = report["machine"], report["settings"], report["versions"]
    isa = ", ".join(k for k, on in m["isa"].items() if on) or "none detected"
    return [
        f"- Machine: {m['cpu']} ({m['arch']}), {m['cpus_usable']} usable CPU(s), {m['memory_gb']} GB; ISA: {isa}",
        f"- GPU: {', '.join(m['gpu']['gpus']) or 'none visible'}",
        "- float32 peak (numpy matmul): "
        + ", ".join(f"{g} GFLOP/s on {t} thread(s)" for t, g in m["peak_float32_gflops"].items()),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Started {s['started_at']}; warm-up {s['warmup']} calls; {s['iterations_batch1']} timed calls at batch 1; "
        f"{_or_dash(s['flops_per_image'] and s['flops_per_image'] / 1e6, '.2f')} MFLOP per image",
        f"- Method: {s['method']}",
        f"- int8 on this CPU: {m['int8_note']}",
    ]


def _browser_lines(report: dict[str, Any]) -> list[str]:
    """A bullet for the rows timed in a browser, with its own settings when that run kept them apart."""
    b = report.get("browser")
    if not b:
        return []
    bs = report.get("browser_settings", report["settings"])
    web = ", ".join(sorted({r["runtime"] for r in report["results"] if r["device"] == b["name"]}))
    return [
        f"- Browser rows ({web}): "
        f"{b['name']}, cross-origin isolated: {b['cross_origin_isolated']}; started {bs['started_at']}; "
        f"warm-up {bs['warmup']} calls, {bs['iterations_batch1']} timed calls at batch 1. Method: {bs['method']}"
    ]


def _harness_lines(hc: dict[str, Any] | None) -> list[str]:
    """A bullet for the harness check: the harness's p50 against a bare LiteRT loop, or why the check failed."""
    if hc and "error" in hc:
        return [f"- Harness check ({hc['artifact']}): failed: {hc['error']}"]
    if hc:
        return [
            f"- Harness check ({hc['artifact']}, 1 thread, batch 1): harness p50 {hc['harness_p50_ms']:.4f} ms vs bare "
            f"set_tensor/invoke/get_tensor loop {hc['bare_loop_p50_ms']:.4f} ms: {hc['overhead_fraction']:+.1%} "
            f"({'within' if hc['within_10_percent'] else 'NOT within'} 10%)"
        ]
    return []


def _latency_lines(ok: list[dict[str, Any]]) -> list[str]:
    """The batch-1 latency table, by threads then p50."""
    lines = [
        "",
        "## Batch-1 latency (ms)",
        "",
        "| artifact | runtime | threads | p50 | p90 | p99 | mean ± std | cold start | peak RSS MB | size KB "
        "| accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted((r for r in ok if r["batch_size"] == 1), key=lambda r: (r["threads"], r["p50_ms"])):
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} "
            f"| {r['p99_ms']:.3f} | {r['mean_ms']:.3f} ± {r['std_ms']:.3f} | {r['load_ms']:.0f} ms "
            f"| {'-' if r['peak_rss_mb'] is None else round(r['peak_rss_mb'])} "
            f"| {r['bytes'] / 1024:.0f} | {acc} |"
        )
    return lines


def _throughput_lines(ok: list[dict[str, Any]]) -> list[str]:
    """The throughput table at every batch size, with achieved GFLOP/s and the p50 against the compute floor."""
    return [
        "",
        "## Throughput (images/s) and achieved GFLOP/s",
        "",
        "| artifact | runtime | threads | batch | images/s | GFLOP/s | of float32 peak | p50 / compute floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ] + [
        f"| {r['artifact']} | {r['runtime']} | {r['threads']} | {r['batch_size']} | {r['images_per_second']:,.0f} "
        f"| {_or_dash(r.get('gflops_per_second'), '.1f')} | {_or_dash(r.get('fraction_of_peak'), '.0%')} "
        f"| {_floor(r)} |"
        for r in sorted(ok, key=lambda r: (r["artifact"], r["runtime"], r["threads"], r["batch_size"]))
    ]


def _not_measured_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Skipped and failed rows, each with its reason; nothing when every row was measured."""
    other = [r for r in rows if r["status"] in ("skipped", "failed")]
    if not other:
        return []
    return ["", "## Not measured", ""] + [
        f"- {r['runtime']} ({r['device']}): {r['status']}: {r['note']}" for r in other
    ]


def benchmark_markdown(report: dict[str, Any]) -> str:
    """SUMMARY.md: the run's machine and settings, the latency and throughput tables, then the rows shown apart."""
    ok = [r for r in report["results"] if r["status"] == "ok"]
    lines = ["# Benchmark results", "", *_setup_lines(report)]
    lines += _browser_lines(report) + _harness_lines(report.get("harness_check"))
    lines += _latency_lines(ok) + _throughput_lines(ok)
    lines += comparison_lines(report)
    lines += device_lines(report["results"]) + arm64_lines(report.get("arm64") or [])
    lines += _not_measured_lines(report["results"])
    return "\n".join(lines) + "\n"


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """The browser against native, from rows of one `toolkit benchmark --browser` run, and each web row against
    the page's own float32 peak (WebAssembly SIMD is 128 bits wide: the page's ceiling is below the CPU's)."""
    web = [r for r in report["results"] if r["status"] == "ok" and r.get("page_peak_gflops")]
    lines = []
    if report.get("comparison"):
        lines += [
            "",
            "## Browser against native (batch 1, one run)",
            "",
            "| threads | best web | p50 ms | best native | p50 ms | web / native |",
            "|---:|---|---:|---|---:|---:|",
        ]
        lines += [
            f"| {c['threads']} | {c['best_web']} | {c['best_web_p50_ms']:.3f} | {c['best_native']} "
            f"| {c['best_native_p50_ms']:.3f} | {c['web_over_native']:.2f}x |"
            for c in report["comparison"]
        ]
    if web:
        lines += [
            "",
            "## Web rows against the page's own float32 peak (a MatMul in ONNX Runtime Web)",
            "",
            "| artifact | runtime | threads | batch | GFLOP/s | page peak GFLOP/s | of page peak | p99 / p50 |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['artifact']} | {r['runtime']} | {r['threads']} | {r['batch_size']} "
            f"| {r['gflops_per_second']:.1f} | {r['page_peak_gflops']:.1f} | {r['fraction_of_page_peak']:.0%} "
            f"| {r['p99_ms'] / r['p50_ms']:.2f} |"
            for r in web
        ]
    return lines


def device_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Microcontroller and NPU rows: sizes measured at export, and Vela's estimates, kept apart from timed rows."""
    sized = [r for r in rows if r["status"] == "sized"]
    estimated = [r for r in rows if r["status"] == "estimate"]
    lines = []
    if sized:
        lines += [
            "",
            "## Microcontroller (LiteRT for Microcontrollers): RAM and flash, measured",
            "",
            "| artifact | tensor arena (RAM) | model (flash) | how |",
            "|---|---:|---:|---|",
        ]
        lines += [f"| {r['artifact']} | {r['ram_bytes']:,} B | {r['flash_bytes']:,} B | {r['method']} |" for r in sized]
    if estimated:
        lines += [
            "",
            "## Arm Ethos-U NPUs: ESTIMATES from Vela's performance model, not measurements",
            "",
            "| configuration | system / memory mode | clock MHz | NPU ops | CPU ops | SRAM B | flash/DRAM B | cycles "
            "| inference ms | inferences/s | MACs | method |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in estimated:
            e = r["estimate"]
            lines.append(
                f"| {e['accelerator']} | {e['system_config']} / {e['memory_mode']} | {e['clock_mhz']:g} "
                f"| {e['npu_ops']} | {e['cpu_ops']} | {e['sram_bytes']:,} | {r['flash_bytes']:,} "
                f"| {e['cycles']:,} | {e['inference_ms']:.3f} | {e['inferences_per_second']:,.0f} "
                f"| {e['macs']:,} | {r['method']} |"
            )
    return lines


def arm64_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The phone files verified on ARM64 kernels under emulation (from the manifest): agreement, never a time."""
    if not rows:
        return []
    lines = [
        "",
        "## ARM64 kernels under emulation: verified, not timed",
        "",
        "`toolkit verify --arch arm64` ran these files on ARM64 kernels in QEMU's user-mode emulation (manifest.json "
        "has the details). Emulated time is not a phone's time, so none is reported here or above.",
        "",
        "| artifact | runtime | emulated CPU | images | agreement with Keras | agreement with x86 | max abs Δp vs x86 "
        "| verified |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cpu = f"{r['cpu']} ({', '.join(r['key_features']) or 'baseline NEON'})"
        images = f"{r['images']:,}" + ("" if r["full_split"] else " (spot check)")
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {cpu} | {images} | {_or_dash(r['agreement'], '.2%')} "
            f"| {_or_dash(r['agreement_x86'], '.2%')} | {_or_dash(r['max_abs_diff_x86'], '.1e')} "
            f"| {'pass' if r['passed'] else 'FAIL'} |"
        )
    return lines


def benchmark_plot(report: dict[str, Any], target: Path) -> Path:
    """Batch-1 latency per runtime and variant (p50 with p90/p99 whiskers), and size against accuracy."""
    plt = pyplot()
    ok = [r for r in report["results"] if r["status"] == "ok" and r["batch_size"] == 1]
    threads = sorted({r["threads"] for r in ok})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    labels = sorted({_label(r) for r in ok}, key=lambda l: min(r["p50_ms"] for r in ok if _label(r) == l))
    width = 0.8 / max(1, len(threads))
    for i, t in enumerate(threads):
        rows = {_label(r): r for r in ok if r["threads"] == t}
        ys = [y + i * width for y in range(len(labels))]
        p50 = [rows[l]["p50_ms"] if l in rows else 0 for l in labels]
        p90 = [rows[l]["p90_ms"] - rows[l]["p50_ms"] if l in rows else 0 for l in labels]
        ax1.barh(
            ys, p50, height=width, xerr=[[0] * len(labels), p90], capsize=2, label=f"{t} thread(s), p50 (whisker: p90)"
        )
        for y, l in zip(ys, labels):
            if l in rows:
                ax1.plot(rows[l]["p99_ms"], y, "k|", markersize=8)
    ax1.set_yticks([y + width * (len(threads) - 1) / 2 for y in range(len(labels))], labels, fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("batch-1 latency, ms (log scale; | = p99)")
    ax1.set_title("Latency per runtime and variant")
    if threads:  # a run with nothing timed (every row failed or skipped) has no bars to name
        ax1.legend(fontsize=8)
    sized = {}
    for r in ok:
        if r.get("accuracy") is not None and r["format"] not in ("keras", "web"):  # web models: the same networks
            sized[r["artifact"]] = (r["bytes"] / 1024, r["accuracy"] * 100)
    for i, (name, (kb, acc)) in enumerate(sorted(sized.items())):
        ax2.scatter(kb, acc)
        ax2.annotate(
            name.replace("mnist_cnn.", ""),
            (kb, acc),
            fontsize=8,
            xytext=(4, 4 + 10 * (i % 2)),
            textcoords="offset points",
        )
    ax2.set_xlabel("file size, KB")
    ax2.set_ylabel("test accuracy, % (from verification)")
    ax2.set_title("Size against accuracy")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{report['machine']['cpu']}, {report['machine']['cpus_usable']} CPU(s)")
    fig.tight_layout()
    return save_png(fig, target, dpi=110)


def write_benchmark_outputs(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder = fsio.ensure_dir(Path(folder))
    return {
        "json": fsio.write_json(folder / "results.json", report),
        "markdown": fsio.write_text(folder / "SUMMARY.md", benchmark_markdown(report)),
        "plot": benchmark_plot(report, folder / "benchmark.png"),
    }
