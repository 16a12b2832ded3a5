"""What `toolkit quantize` leaves for people: the records of a search (one row per recipe tried) and of an
explanation (one per layer), and their JSON, Markdown table and picture (the size-accuracy Pareto plot, the
per-layer bar chart) in DIR/quantization/. The model card reads the last search from here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.errors import ToolkitError
from toolkit.plots import pyplot, save_png
from toolkit.tables import markdown_table

REPORT_DIR = ws.QUANTIZATION_DIR

LATENCY_WARMUP, LATENCY_RUNS = 20, 200  # a short batch-1 timing, one thread (`toolkit benchmark` measures properly)

# row.status values
SOURCE, PASS, FAIL, QUANTIZE_FAILED, RUN_FAILED, SKIPPED, SCREENED, NOT_SMALLER = (
    "source",
    "pass",
    "fail",
    "fails to quantize",
    "fails to run",
    "skipped",
    "screened out",
    "not smaller",
)


@dataclass
class Row:
    """One recipe tried: its file, how it did on the test split, and why it stopped where it did."""

    recipe: str
    runtime: str
    summary: str
    origin: str  # "float32 source", "recipe", or "fallback from R: layer a -> b"
    status: str = PASS
    message: str = ""  # the failure, in the quantizer's or runtime's own words, or the criteria missed
    bytes: int | None = None
    percent_of_float32: float | None = None
    accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    agreement: float | None = None
    latency_p50_ms: float | None = None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> weight type
    pareto: bool = False
    kept: str | None = None  # the file written into the workspace, for the smallest passing row
    verification: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def result(self, best: str | None) -> str:
        """The table's last column."""
        if self.status in (PASS, FAIL):
            text = "pass" if self.passed else f"FAIL: {self.message}"
            return text + (", Pareto front" if self.pareto else "") + (", kept" if self.kept else "")
        if self.status == RUN_FAILED:
            return f"fails in {self.runtime}: {self.message}"
        if self.status == NOT_SMALLER:
            return f"not smaller than {best}: not verified"
        return f"{self.status}: {self.message}" if self.message else self.status


@dataclass
class Outcome:
    budget_pp: float
    images: int
    reference_accuracy: float
    calibration: dict[str, Any]
    machine: dict[str, Any]
    rows: list[Row]
    started_at: str
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.kept), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best"] = self.best.recipe if self.best else None
        return fsio.finite(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        fields = {k: v for k, v in d.items() if k not in ("rows", "best")}
        return cls(rows=[Row(**r) for r in d["rows"]], **fields)

    def raise_if_none_passed(self) -> None:
        if self.best is None:
            raise ToolkitError(
                f"no recipe within {self.budget_pp:g} pp of the Keras model's accuracy (the table says why); "
                "allow more with --budget"
            )

    def titled_rows(self) -> tuple[str, list[str], list[list[str]], list[str | None]]:
        """The results table as the console lays it out: title, columns, rows, row styles."""
        columns, rows, styles = table_rows(self)
        return f"Quantization recipes within {self.budget_pp:g} pp", columns, rows, styles

    def _repr_html_(self) -> str:
        """Jupyter shows the record as the CLI's table."""
        from toolkit.console import html_of

        return html_of(self)


@dataclass
class LayerError:
    """What quantizing one layer costs, on calibration images."""

    layer: str
    op: str
    params: int
    type: str  # its weight type in the recipe
    alone_snr_db: float  # output SNR when only this layer is quantized (inf: it stays float, or cannot be quantized)
    alone_agreement: float  # top-1 agreement with the float model, only this layer quantized
    output_snr_db: float | None = None  # SNR of this layer's output in the whole recipe (ai-edge-quantizer)
    output_mse: float | None = None


@dataclass
class Explanation:
    recipe: str
    summary: str
    images: int
    calibration: dict[str, Any]
    agreement: float | None  # the whole recipe against the float model on the calibration images
    layers: list[LayerError]
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return fsio.finite(asdict(self))


COLUMNS = ["recipe", "runtime", "bytes", "% of float32", "accuracy", "Δ pp", "agreement", "p50 ms", "result"]


def table_rows(outcome: Outcome) -> tuple[list[str], list[list[str]], list[str | None]]:
    """Columns, rows and row styles of the results table (CLI and Markdown): the source, then by size."""
    best = outcome.best.recipe if outcome.best else None

    def fmt(value, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    rows, styles = [], []
    for r in sorted(outcome.rows, key=lambda r: (r.status != SOURCE, r.bytes is None, r.bytes or 0)):
        rows.append(
            [
                r.recipe,
                r.runtime,
                fmt(r.bytes, ","),
                fmt(r.percent_of_float32, ".1f"),
                "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                fmt(r.accuracy_delta_pp, "+.2f"),
                "-" if r.agreement is None else f"{r.agreement:.2%}",
                fmt(r.latency_p50_ms, ".3f"),
                "float32 source" if r.status == SOURCE else r.result(best),
            ]
        )
        styles.append("bold green" if r.kept else "green" if r.passed else None if r.status == SOURCE else "red")
    return COLUMNS, rows, styles


def explain_rows(result: Explanation) -> tuple[list[str], list[list[str]]]:
    def db(value: float | None) -> str:
        if value is None:
            return "-"
        return "no error" if value == math.inf else "NaN output" if value == -math.inf else f"{value:.1f}"

    columns = ["layer", "op", "weights", "type", "alone: output SNR dB", "alone: agreement", "output SNR dB", "MSE"]
    rows = [
        [
            e.layer,
            e.op,
            f"{e.params:,}",
            e.type,
            db(e.alone_snr_db),
            "-" if e.alone_agreement is None else f"{e.alone_agreement:.2%}",
            db(e.output_snr_db),
            "-" if e.output_mse is None else f"{e.output_mse:.2e}",
        ]
        for e in result.layers
    ]
    return columns, rows


def markdown(outcome: Outcome) -> str:
    columns, rows, _ = table_rows(outcome)
    best = outcome.best
    lines = [
        "# Quantization recipes: the smallest model within the accuracy budget",
        "",
        f"Budget: accuracy loss <= {outcome.budget_pp:g} percentage points against the Keras model "
        f"({outcome.reference_accuracy:.2%}) on {outcome.images:,} test images, verified in each file's runtime. "
        f"Calibration and per-layer errors: {outcome.calibration['images']:,} images, "
        f"{outcome.calibration['sampling']} (seed {outcome.calibration['seed']}); never a test image. "
        f"Latency: batch-1 p50 over {LATENCY_RUNS} calls on one thread, {outcome.machine['cpu']} "
        f"({outcome.machine['cpus_usable']} CPUs usable); `toolkit benchmark` measures properly. "
        f"{outcome.started_at}, {outcome.seconds:g} s.",
        "",
        *markdown_table(columns, rows),
        "",
        f"**Kept**: `{best.kept}` ({best.bytes:,} bytes, {best.percent_of_float32:.1f}% of float32, "
        f"{best.accuracy:.2%}, {best.accuracy_delta_pp:+.2f} pp)."
        if best
        else "**Kept**: nothing passed the budget.",
        "",
        "Fallback rows say where they came from:",
        "",
        *[f"- `{r.recipe}`: {r.origin}" for r in outcome.rows if r.origin.startswith("fallback")],
        "",
    ]
    return "\n".join(lines)


def read_report(workspace: Path) -> Outcome | None:
    """The last full search's outcome in the workspace (DIR/quantization/quantization.json), if there is one."""
    path = Path(workspace) / REPORT_DIR / "quantization.json"
    return Outcome.from_dict(fsio.read_json(path)) if path.is_file() else None


def pareto_png(outcome: Outcome, target: Path) -> Path:
    """Size against accuracy: passing green, failing red, the front joined; points far below drawn at the bottom."""
    plt = pyplot()
    verified = [r for r in outcome.rows if r.accuracy is not None]
    reference = outcome.reference_accuracy * 100
    floor = reference - max(1.0, 5 * outcome.budget_pp)
    fig, ax = plt.subplots(figsize=(10, 6))
    ax.axhline(reference - outcome.budget_pp, color="grey", linestyle="--", linewidth=1)
    ax.text(
        min(r.bytes for r in verified) / 1000,
        reference - outcome.budget_pp,
        f" budget: -{outcome.budget_pp:g} pp",
        va="bottom",
        fontsize=8,
        color="grey",
    )
    front = sorted((r for r in verified if r.pareto), key=lambda r: r.bytes)
    ax.step(
        [r.bytes / 1000 for r in front],
        [max(r.accuracy * 100, floor) for r in front],
        where="post",
        color="tab:blue",
        linewidth=1,
        label="Pareto front",
    )
    placed: list[tuple[float, float]] = []
    for r in sorted(verified, key=lambda r: (r.bytes, -r.accuracy)):
        x, y = r.bytes / 1000, r.accuracy * 100
        color = "black" if r.status == SOURCE else "tab:green" if r.passed else "tab:red"
        marker = "s" if r.status == SOURCE else "v" if y < floor else "o" if r.passed else "x"
        ax.scatter(x, max(y, floor), color=color, marker=marker, s=60 if r.kept else 30, zorder=3)
        label = r.recipe + (f" ({y:.2f}%)" if y < floor else "") + (" - kept" if r.kept else "")
        near = sum(1 for px, py in placed if abs(math.log(x / px)) < 0.35 and abs(py - max(y, floor)) < 0.06)
        placed.append((x, max(y, floor)))
        ax.annotate(label, (x, max(y, floor)), fontsize=7, xytext=(5, 3 - 9 * near), textcoords="offset points")
    ax.set_xscale("log")
    ticks = [t for t in (100, 150, 200, 300, 500, 1000, 2000, 5000) if min(placed)[0] / 1.5 < t < max(placed)[0] * 1.5]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(floor - 0.05, reference + 0.15)
    ax.set_xlabel("file size (KB, log scale)")
    ax.set_ylabel(f"accuracy on {outcome.images:,} test images (%)")
    ax.set_title("Quantization recipes: size against accuracy (green: within budget, red: not)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, target)


def write_report(outcome: Outcome, folder: Path, stem: str) -> dict[str, str]:
    files = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md"}
    if any(r.accuracy is not None for r in outcome.rows):
        files["plot"] = folder / f"{stem}.png"
    outcome.files = {k: str(v) for k, v in files.items()}
    fsio.write_json(files["json"], outcome.to_dict())
    fsio.write_text(files["markdown"], markdown(outcome))
    if "plot" in files:
        pareto_png(outcome, files["plot"])
    return outcome.files


def write_explanation(result: Explanation, folder: Path) -> dict[str, str]:
    stem = f"explain-{result.recipe}"
    files = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md", "plot": folder / f"{stem}.png"}
    result.files = {k: str(v) for k, v in files.items()}
    fsio.write_json(files["json"], result.to_dict())
    columns, rows = explain_rows(result)
    agreement = "-" if result.agreement is None else f"{result.agreement:.2%}"
    text = [
        f"# Per-layer error of `{result.recipe}` ({result.summary})",
        "",
        f"On {result.images:,} calibration images ({result.calibration['sampling']}; no test image). "
        "*alone*: only this layer quantized, every other float: the SNR of the output probabilities and the top-1 "
        "agreement with the float model (sorted by this, costliest first). *output SNR/MSE*: this layer's output in "
        f"the whole recipe, errors of the layers before it included. The whole recipe agrees with float32 on "
        f"{agreement} of the calibration images.",
        "",
        *markdown_table(columns, rows),
        "",
        *[f"- {note}" for note in result.notes],
        "",
    ]
    fsio.write_text(files["markdown"], "\n".join(text))
    plt = pyplot()
    shown = [e for e in result.layers if e.alone_snr_db is not None and math.isfinite(e.alone_snr_db)]
    fig, ax = plt.subplots(figsize=(8, 0.5 * max(len(result.layers), 4) + 1.5))
    names = [f"{e.layer} ({e.type}, {e.params:,})" for e in result.layers]
    values = [e.alone_snr_db if e in shown else 0 for e in result.layers]
    bars = ax.barh(names, values, color=["tab:red" if e is result.layers[0] else "tab:blue" for e in result.layers])
    for bar, e in zip(bars, result.layers):
        if e not in shown:
            ax.text(
                0,
                bar.get_y() + bar.get_height() / 2,
                " no error" if e.alone_snr_db == math.inf else " NaN output",
                va="center",
                fontsize=8,
            )
    ax.invert_yaxis()
    ax.set_xlabel("output SNR in dB with only this layer quantized (lower: costs more)")
    ax.set_title(f"{result.recipe}: which layer costs accuracy ({result.images} calibration images)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_png(fig, files["plot"])
    return result.files
