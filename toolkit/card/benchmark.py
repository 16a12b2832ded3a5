"""The benchmark results a card shows: where a workspace's are, which run it shows, and its latency table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.errors import ToolkitError

RELEASE = Path(__file__).resolve().parents[2] / "exported"  # the committed release, beside benchmarks/results


def benchmark_files(workspace: Path) -> list[Path]:
    """Where a workspace's benchmark results are: its own benchmark/ folder, and for the committed release the
    published results beside it; never a folder outside the workspace otherwise."""
    files = [workspace / ws.BENCHMARK_DIR / "results.json"]
    if workspace.resolve() == RELEASE:
        files += sorted((RELEASE.parent / "benchmarks" / "results").glob("*/results.json"))
    return [f for f in files if f.is_file()]


def latest_benchmark(files: list[Path]) -> dict[str, Any] | None:
    """The results for the card: the run with the most timed rows (a full run beats a partial one), the newest on
    a tie. A results file that cannot be read or is not a benchmark's is left out (the card has no latency then)."""
    runs = []
    for path in files:
        try:
            results = fsio.read_json(path)
            rows = results["results"]
            timed = sum(1 for r in rows if isinstance(r, dict) and r.get("status") == "ok")
            results["machine"]["cpu"], results["settings"]["threads"]  # noqa: B018 (what the card reads)
        except (ToolkitError, KeyError, TypeError):
            continue
        runs.append((timed, path.stat().st_mtime, results))
    return max(runs, key=lambda run: run[:2])[2] if runs else None


def latency(bench: dict[str, Any]) -> list[str]:
    """Batch-1 latency of each artifact on the reference machine, from the benchmark results."""
    lines: list[str] = []
    mach = bench["machine"]
    ok = [r for r in bench["results"] if r["status"] == "ok" and r["batch_size"] == 1]
    threads = sorted({r["threads"] for r in ok})
    lines += [
        "",
        "## Latency on the reference machine",
        "",
        f"{mach['cpu']}, {mach['cpus_usable']} CPU(s), ISA {', '.join(k for k, on in mach['isa'].items() if on)}; "
        f"batch 1, p50 / p99 over {bench['settings']['iterations_batch1']} calls after "
        f"{bench['settings']['warmup']} warm-up calls "
        "(`toolkit benchmark`; method in benchmarks/README.md).",
        "",
        "| file | runtime | "
        + " | ".join(f"{t} thread(s): p50 / p99 ms" for t in threads)
        + " | cold start ms | peak RSS MB |",
        "|---|---|" + "---:|" * (len(threads) + 2),
    ]
    fastest = {}
    for r in ok:
        key = (r["artifact"], r["runtime"])
        fastest[key] = min(fastest.get(key, r["p50_ms"]), r["p50_ms"])
    keys = sorted(fastest, key=lambda k: (fastest[k], k))
    for art, rt in keys:
        cells = []
        for t in threads:
            r = next((r for r in ok if r["artifact"] == art and r["runtime"] == rt and r["threads"] == t), None)
            cells.append(f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}" if r else "-")
        first = next(r for r in ok if r["artifact"] == art and r["runtime"] == rt)
        rss = "-" if first.get("peak_rss_mb") is None else f"{first['peak_rss_mb']:.0f}"
        lines.append(f"| `{art}` | {rt} | " + " | ".join(cells) + f" | {first['load_ms']:.0f} | {rss} |")
    lines += ["", f"int8 on this CPU: {mach['int8_note']}"]
    return lines
