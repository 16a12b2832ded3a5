"""Pictures and summaries people read: the benchmark's Markdown summary and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import fsio


def _label(r: dict[str, Any]) -> str:
    return f"{r['artifact']} ({r['runtime']})"


def benchmark_markdown(report: dict[str, Any]) -> str:
    m, s, v = report["machine"], report["settings"], report["versions"]
    ok = [r for r in report["results"] if r["status"] == "ok"]
    isa = ", ".join(k for k, on in m["isa"].items() if on) or "none detected"
    lines = [
        "# Benchmark results",
        "",
        f"- Machine: {m['cpu']} ({m['arch']}), {m['cpus_usable']} usable CPU(s), {m['memory_gb']} GB; ISA: {isa}",
        f"- GPU: {', '.join(m['gpu']['gpus']) or 'none visible'}",
        "- float32 peak (numpy matmul): " + ", ".join(f"{g} GFLOP/s on {t} thread(s)" for t, g in m["peak_float32_gflops"].items()),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Started {s['started_at']}; warm-up {s['warmup']} calls; {s['iterations_batch1']} timed calls at batch 1; "
        f"{s['flops_per_image'] / 1e6:.2f} MFLOP per image",
        f"- Method: {s['method']}",
        f"- int8 on this CPU: {m['int8_note']}",
    ]
    hc = report.get("harness_check")
    if hc:
        lines.append(
            f"- Harness check ({hc['artifact']}, 1 thread, batch 1): harness p50 {hc['harness_p50_ms']:.4f} ms vs bare "
            f"set_tensor/invoke/get_tensor loop {hc['bare_loop_p50_ms']:.4f} ms: {hc['overhead_fraction']:+.1%} "
            f"({'within' if hc['within_10_percent'] else 'NOT within'} 10%)"
        )
    lines += ["", "## Batch-1 latency (ms)", "",
              "| artifact | runtime | threads | p50 | p90 | p99 | mean ± std | cold start | peak RSS MB | size KB | accuracy |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted((r for r in ok if r["batch_size"] == 1), key=lambda r: (r["threads"], r["p50_ms"])):
        acc = f"{r['accuracy']:.4f}" if r.get("accuracy") is not None else "-"
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['mean_ms']:.3f} ± {r['std_ms']:.3f} | {r['load_ms']:.0f} ms | {r['peak_rss_mb']:.0f} | {r['bytes'] / 1024:.0f} | {acc} |"
        )
    lines += ["", "## Throughput (images/s) and achieved GFLOP/s", "",
              "| artifact | runtime | threads | batch | images/s | GFLOP/s | of float32 peak |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(ok, key=lambda r: (r["artifact"], r["runtime"], r["threads"], r["batch_size"])):
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {r['threads']} | {r['batch_size']} | {r['images_per_second']:,.0f} "
            f"| {r['gflops_per_second']:.1f} | {r['fraction_of_peak']:.0%} |"
        )
    other = [r for r in report["results"] if r["status"] != "ok"]
    if other:
        lines += ["", "## Not measured", ""] + [f"- {r['runtime']} ({r['device']}): {r['status']}: {r['note']}" for r in other]
    return "\n".join(lines) + "\n"


def benchmark_plot(report: dict[str, Any], target: Path) -> Path:
    """Batch-1 latency per runtime and variant (p50 with p90/p99 whiskers), and size against accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        ax1.barh(ys, p50, height=width, xerr=[[0] * len(labels), p90], capsize=2, label=f"{t} thread(s), p50 (whisker: p90)")
        for y, l in zip(ys, labels):
            if l in rows:
                ax1.plot(rows[l]["p99_ms"], y, "k|", markersize=8)
    ax1.set_yticks([y + width * (len(threads) - 1) / 2 for y in range(len(labels))], labels, fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("batch-1 latency, ms (log scale; | = p99)")
    ax1.set_title("Latency per runtime and variant")
    ax1.legend(fontsize=8)
    sized = {}
    for r in ok:
        if r.get("accuracy") is not None and r["format"] != "keras":
            sized[r["artifact"]] = (r["bytes"] / 1024, r["accuracy"] * 100)
    for i, (name, (kb, acc)) in enumerate(sorted(sized.items())):
        ax2.scatter(kb, acc)
        ax2.annotate(name.replace("mnist_cnn.", ""), (kb, acc), fontsize=8, xytext=(4, 4 + 10 * (i % 2)), textcoords="offset points")
    ax2.set_xlabel("file size, KB")
    ax2.set_ylabel("test accuracy, % (from verification)")
    ax2.set_title("Size against accuracy")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{report['machine']['cpu']}, {report['machine']['cpus_usable']} CPU(s)")
    fig.tight_layout()
    with fsio.atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(target)


def write_benchmark_outputs(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder = fsio.ensure_dir(Path(folder))
    return {
        "json": fsio.write_json(folder / "results.json", report),
        "markdown": fsio.write_text(folder / "SUMMARY.md", benchmark_markdown(report)),
        "plot": benchmark_plot(report, folder / "benchmark.png"),
    }
