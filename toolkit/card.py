"""MODEL_CARD.md for a workspace, written from what was recorded: metrics.json, manifest.json, the report
files and the benchmark results. Nothing in it is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit import fsio, manifest
from toolkit import workspace as ws
from toolkit.artifacts import (
    LITERT_MICRO,
    ORT_FORMAT,
    RECIPES_FORMAT,
    TFLITE_FORMAT,
    VELA_FORMAT,
    runtime,
    second_runtime,
)
from toolkit.errors import ToolkitError, first_line
from toolkit.micro.boards import fits
from toolkit.preprocess import __doc__ as PREPROCESS_DOC
from toolkit.quantize import report as quantize_report
from toolkit.tables import markdown_table
from toolkit.train import command_line

# after the training command, which the card writes from metrics.json (train.command_line)
RELEASE_COMMANDS = """toolkit export --format all
toolkit verify
toolkit verify --browser
toolkit quantize
toolkit quantize --explain
toolkit benchmark --publish
toolkit benchmark --browser --publish
toolkit report"""


RELEASE = Path(__file__).resolve().parents[1] / "exported"  # the committed release, beside benchmarks/results


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


def _spec(t: dict[str, Any]) -> str:
    q = t.get("quantization")
    qs = f", scale {q['scale']:.9g}, zero point {q['zero_point']}" if q else ""
    return f"`{t['name']}` {t['dtype']} {t['shape']}{qs}"


def model_card(workspace: Path, bench: dict[str, Any] | None) -> str:
    """The card's text: one section per function below, each written from what was recorded."""
    workspace = Path(workspace)
    m = manifest.read(workspace)
    metrics = fsio.read_json(ws.metrics(workspace)) if ws.metrics(workspace).exists() else None
    arts = m.get("artifacts", {})
    sections = [
        _intro() if _is_reference(m) else _intro_own(m, metrics),
        _training_of(metrics, ws.metrics(workspace)) if metrics else [],
        _accuracy(arts),
        _latency(bench) if bench else [],
        _phone(arts, bench),
        _microcontrollers(arts),
        _quantization(workspace),
        _inputs_outputs(m, arts),
        _failures(workspace),
        _provenance(m, metrics, workspace.resolve() == RELEASE),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _is_reference(m: dict[str, Any]) -> bool:
    """The reference MNIST CNN (its card keeps the intended-use text written for it)."""
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    return model.get("name", "mnist_cnn") == "mnist_cnn" and "digit_centering" in (m.get("preprocessing") or {})


def _intro_own(m: dict[str, Any], metrics: dict[str, Any] | None) -> list[str]:
    """Which model and which data a card of a user's model describes, from the manifest and metrics.json."""
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    labels = [str(label) for label in m.get("labels") or []]
    shape = "x".join(str(s) for s in model.get("input_shape") or []) or "?"
    data = (
        f"{metrics.get('dataset', '?')} data from {metrics.get('data_source', '?')}, SHA-256 "
        f"{str(metrics.get('data_sha256', '?'))[:16]}..."
        if metrics
        else "data not recorded (no metrics.json: the model was trained elsewhere)"
    )
    return [
        f"# Model card: {model.get('name', 'model')}",
        "",
        f"An image classifier ({shape} input, {len(labels)} classes: {', '.join(labels[:20])}"
        f"{', ...' if len(labels) > 20 else ''}) exported for edge runtimes. Its model file is "
        f"`{model.get('file', 'model.keras')}` (SHA-256 {str(model.get('sha256', '?'))[:16]}...); its output: "
        f"{model.get('output', 'probabilities')}. Trained and verified on: {data}. Every file below was verified "
        "against the Keras model on that data's test split in the runtime an app uses.",
        "Generated by `toolkit report` from the recorded metrics, manifest, report and benchmark results.",
        "",
        "## Intended use and limits",
        "",
        "- It answers one of the classes above for any input, with no 'none of these' class; its confidence on "
        "an image unlike the training data is not meaningful.",
        "- Inputs must be prepared as *Preprocessing* below says (size, channels, scaling).",
        "",
    ]


def _intro() -> list[str]:
    """What the model is, what it is for, and its limits."""
    lines = ["# Model card: mnist_cnn", ""]
    lines += [
        "A small convolutional network that classifies a 28x28 grey image of one handwritten digit (0-9), exported",
        "for edge runtimes: TFLite/LiteRT (float32, float16, dynamic-range int8, full int8, and the int8 model as a C",
        "array for LiteRT for Microcontrollers) and ONNX (float32, int8), plus a web app (`web/`) that runs them in "
        "the",
        "browser with LiteRT.js and ONNX Runtime Web. Every file below was verified against the Keras model on the",
        "10,000 MNIST test images in the runtime an app uses (the web models inside the web app in headless Chromium).",
        "Generated by `toolkit report` from the recorded metrics, manifest, report and benchmark results.",
        "",
        "## Intended use and limits",
        "",
        "- For: recognising single, centred, handwritten digits, as in a form field or a drawing pad; a teaching",
        "  and reference model for edge deployment.",
        "- Not for: several digits at once, printed fonts, letters, or anything else: it always answers one of",
        "  0-9, with no 'none of these' class, and its confidence on a non-digit is not meaningful.",
        "- Its input must look like MNIST: white digit on black, the digit fitted into 20x20 and centred by its centre",
        "  of mass in 28x28 (see *Preprocessing*). Thick or thin strokes, rotation beyond ~15 degrees, or an",
        "  off-centre crop lower accuracy; the hardest test images below show what it still gets wrong.",
        "- Trained on MNIST only (US Census Bureau employees and high-school students, 1990s): other",
        "  handwriting styles may score lower than the test accuracy below.",
        "",
    ]
    return lines


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _training_of(metrics: Any, path: Path) -> list[str]:
    """The training section, or one line naming metrics.json and the field that is missing or of the wrong type."""
    try:
        return _training(metrics)
    except KeyError as e:
        raise ToolkitError(f"{path}: field {e} is missing") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ToolkitError(f"{path}: a field is of the wrong type ({first_line(e, 120)})") from None


def _training(metrics: dict[str, Any]) -> list[str]:
    """The data, the training run and the Keras model's accuracy, from metrics.json."""
    c = metrics["config"]
    acc, loss = metrics["accuracy"], metrics["loss"]
    if c.get("all_data"):
        split = f"train = all {metrics['train_images']:,} official training images (none held out), "
        split += "test = the official 10,000"
        kept = f"the last epoch ({metrics['best_epoch']}) is kept (`--all-data`)"
    else:
        split = "train = the first 48,000 official training images, valid = the last 12,000, test = the official "
        split += "10,000"
        kept = f"the best epoch by validation accuracy ({metrics['best_epoch']}) is kept"
    return [
        "## Data and training",
        "",
        f"- MNIST ({metrics['dataset']}, SHA-256 of the four files' content checked; "
        f"fingerprint `{metrics['data_sha256'][:16]}...`):",
        f"  {split}.",
        f"- Keras {metrics['versions']['keras']} on {metrics['backend']}, {metrics['device']}; "
        f"{metrics['params']:,} parameters,",
        f"  {metrics['flops_per_image'] / 1e6:.2f} MFLOP per image.",
        f"- Adam, {_schedule(c)}, batch {c['batch_size']}, "
        f"{metrics['epochs']} epochs, "
        f"random shifts of up to 2 pixels {'on' if c['augment'] else 'off'}, seed {c['seed']};",
        f"  {kept}. {metrics['seconds_per_epoch']} s per epoch on average.",
        f"- Keras model: accuracy train {acc['train']:.4f}, valid {_or_dash(acc['valid'])}, "
        f"**test {acc['test']:.4f}**; loss {loss['train']:.4f} / {_or_dash(loss['valid'])} / {loss['test']:.4f}.",
        "",
    ]


def _schedule(config: dict[str, Any]) -> str:
    """The learning-rate schedule as words; runs recorded before the warm-up option existed had none."""
    rate, epochs = config["learning_rate"], config.get("warmup_epochs") or 0
    if not epochs:
        return f"learning rate {rate:g} with cosine decay"
    return f"a linear warm-up over {epochs:g} epoch{'s' if epochs != 1 else ''} to {rate:g}, then cosine decay"


def _accuracy(arts: dict[str, Any]) -> list[str]:
    """Each artifact's verification: accuracy, change against Keras, agreement."""
    lines: list[str] = []
    lines += [
        "## Artifacts: accuracy on the test split",
        "",
        "| file | runtime | bytes | accuracy | Δ vs Keras | agreement | max abs Δp | verified |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, a in arts.items():
        v = a.get("verification") or {}
        if v.get("accuracy") is None:
            lines.append(f"| `{name}` | {a['runtime']} | {a['bytes']:,} | - | - | - | - | not verified |")
            continue
        lines.append(
            f"| `{name}` | {a['runtime']} | {a['bytes']:,} | {v['accuracy']:.4f} | {v['accuracy_delta_pp']:+.2f} pp | "
            f"{v['agreement']:.2%} | {v['max_abs_diff']:.1e} | {'pass' if v['passed'] else 'FAIL'} "
            f"({v['images']:,} images) |"
        )
    spots = [(name, a["spot_check"]) for name, a in arts.items() if isinstance(a.get("spot_check"), dict)]
    if spots:  # a check on part of the split, kept beside the result above, never in its place
        lines += ["", "Spot checks on part of the test split (`toolkit verify --limit`), beside the results above:", ""]
        lines += [
            f"- `{name}`: {'pass' if s.get('passed') else 'FAIL'} on {s.get('images', 0):,} images"
            + (f" ({'; '.join(s['problems'])})" if s.get("problems") else "")
            for name, s in spots
        ]
    return lines


def _latency(bench: dict[str, Any]) -> list[str]:
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


def _phone(arts: dict[str, Any], bench: dict[str, Any] | None) -> list[str]:
    """Which files a phone app embeds and with which API, with each one's size, verified accuracy and, where the
    benchmark measured it, its batch-1 latency on one thread of the reference machine (a desktop CPU, not a
    phone: the ratios between rows carry over, the milliseconds do not)."""
    phone = {n: a for n, a in arts.items() if a.get("format") in (TFLITE_FORMAT, ORT_FORMAT)}
    if not phone:
        return []
    ok = [r for r in (bench or {}).get("results", []) if r["status"] == "ok" and r["batch_size"] == 1]
    rows = []
    for name, a in sorted(phone.items(), key=lambda item: item[1]["bytes"]):
        v = a.get("verification") or {}
        accuracy = f"{v['accuracy']:.2%}" if v.get("images") else "-"
        for rt in filter(None, (a["runtime"], second_runtime(a["runtime"], a["format"]))):
            r = next((r for r in ok if r["artifact"] == name and r["runtime"] == rt and r["threads"] == 1), None)
            ms = f"{r['p50_ms']:.3f}" if r else "not measured"
            rows.append(f"| `{name}` | {runtime(rt).label} | {a['bytes']:,} | {accuracy} | {ms} |")
    return [
        "",
        "## In a phone app",
        "",
        "An Android or iOS app embeds a `.tflite` and runs it with LiteRT (the Interpreter, or the CompiledModel API",
        "for GPU and NPU delegation), or an `.ort` with ONNX Runtime Mobile (a reduced build keeps only the",
        "operators in `*.required_operators_and_types.config`). Labels and input normalisation are inside each file;",
        "`manifest.json` has self-check images with each file's expected outputs for a start-up check. Latency: batch",
        "1, one thread, p50 on the reference machine above (a desktop CPU; measure on the phone for its own figures).",
        "",
        "| file | embedded with | bytes | accuracy | p50 ms |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]


def _microcontrollers(arts: dict[str, Any]) -> list[str]:
    """The microcontroller artifact: its measured arena and flash, the operators to register, which boards it fits,
    and the Ethos-U NPU estimates of Vela (labelled as estimates)."""
    c = next((a for a in arts.values() if a.get("runtime") == LITERT_MICRO), None)
    if c is None:
        return []
    w = c["made_with"]
    lines = [
        "",
        "## Microcontrollers and NPUs",
        "",
        f"`{c['file']}` + `{w['header']}` hold `{w['source']}` (batch 1, full int8) for LiteRT for Microcontrollers;",
        f"it was run in that interpreter on the test split (see the accuracy table). Flash: {w['flash_bytes']:,} B "
        f"of model. RAM: a tensor arena of at least {w['arena_bytes_min']:,} B, measured by allocation "
        f"({w['arena_kernels']} kernels; optimised kernels such as CMSIS-NN can need a different figure); the",
        f"header recommends {w['arena_bytes_recommended']:,} B ({w['arena_margin']}). Operators to register: "
        + ", ".join(f"`{r}`" for r in w["resolver"])
        + ".",
        "",
        "| board | chip | RAM | flash | arena / RAM | model / flash | fits | datasheet |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for f in fits(w["arena_bytes_recommended"], w["flash_bytes"]):
        lines.append(
            f"| {f['board']} | {f['chip']} | {f['ram_bytes'] // 1024:,} KB | {f['flash_bytes'] // 1024:,} KB "
            f"| {f['ram_used']:.0%} | {f['flash_used']:.0%} | {'yes' if f['fits'] else '**no**'} "
            f"| {f['source']} |"
        )
    vela = [a for a in arts.values() if a.get("format") == VELA_FORMAT]
    if vela:
        lines += [
            "",
            "Arm Ethos-U NPUs: **estimates from Vela's performance model, not measurements** "
            "(the compiled files run only on an Ethos-U system):",
            "",
            "| file | NPU | clock | SRAM | flash or DRAM | inference | inferences/s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for a in vela:
            e = a["made_with"]["estimates"]
            lines.append(
                f"| `{a['file']}` | {e['accelerator']} | {e['clock_mhz']:g} MHz | {e['sram_bytes']:,} B "
                f"| {e['flash_bytes'] or e['dram_bytes']:,} B ({e['weights_storage']}) "
                f"| {e['inference_ms']:.3f} ms | {e['inferences_per_second']:,.0f} |"
            )
    return lines


def _quantization(workspace: Path) -> list[str]:
    """The quantization recipes `toolkit quantize` tried: every row, passing or not, and the file it kept."""
    outcome = quantize_report.read_report(workspace)
    if outcome is None:
        return []
    columns, rows, _ = quantize_report.table_rows(outcome)
    best = outcome.best
    kept = (
        f"it kept `{best.kept}`: {best.bytes:,} B, {best.percent_of_float32:.1f}% of the float32 file, "
        f"{best.accuracy:.2%} ({best.accuracy_delta_pp:+.2f} pp)."
        if best
        else "no recipe passed, so none was kept."
    )
    return [
        "",
        "## Quantization recipes",
        "",
        "`toolkit quantize` made each recipe from `mnist_cnn.float32.tflite` (ai-edge-quantizer; ONNX Runtime's",
        f"MatMulNBits for the `.onnx`), verified it on {outcome.images:,} test images against the Keras model with a "
        f"budget of {outcome.budget_pp:g} pp of accuracy loss, and kept the smallest file within it; {kept}",
        "Calibration and the per-layer errors used training images only "
        f"({outcome.calibration['images']:,}, {outcome.calibration['sampling']}). Failures are in the quantizer's or "
        "the runtime's own words; latency is a short batch-1 timing on one thread.",
        "",
        *markdown_table(columns, rows),
        "",
        f"![size against accuracy]({quantize_report.REPORT_DIR}/quantization.png)",
    ]


def _inputs_outputs(m: dict[str, Any], arts: dict[str, Any]) -> list[str]:
    """Every artifact's tensors, and how an app prepares an image for them."""
    lines: list[str] = []
    lines += ["", "## Inputs and outputs", "", "| file | input | output |", "|---|---|---|"]
    for name, a in arts.items():
        lines.append(f"| `{name}` | {_spec(a['input'])} | {_spec(a['output'])} |")
    pre = m.get("preprocessing", {})
    lines += [
        "",
        "- Input: " + pre.get("input", "") + "; " + pre.get("scaling", "") + "; " + pre.get("layout", "") + ".",
        "- int8 input (the int8 `.tflite` and the C array): " + pre.get("int8_input", "") + ".",
        "- int8 output: " + pre.get("int8_output", "") + ". The ONNX int8 model takes and returns float32, and so do",
        "  all web models (LiteRT.js has no int8 tensors); the web `.tflite` files have a fixed batch of 1.",
        "- Output: 10 probabilities (softmax), index = digit; labels " + ", ".join(m.get("labels", [])) + ".",
        "",
        "## Preprocessing for app developers",
        "",
        "`toolkit predict` prepares photos and drawings this way (`toolkit/preprocess.py`); an app should do the same:",
        "",
    ]
    lines += [("" if not l.strip() else l.rstrip()) for l in PREPROCESS_DOC.strip().splitlines()[2:]]
    return lines


def _current_reports(workspace: Path) -> list[dict[str, Any]]:
    """The reports `toolkit report` wrote of files that are still the bytes it read (the report records their
    SHA-256): a report of an earlier export of the same name is left out of the card, not shown as this one's."""
    reports = []
    report_dir = ws.report(workspace)
    for path in sorted(report_dir.glob("*.report.json")) if report_dir.is_dir() else []:
        try:
            r = json.loads(path.read_text())
            scores = [v["f1-score"] for v in r["per_class"].values()] + [r["errors"], r["images"]]
            readable = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores)
            artifact = manifest.artifact_path(workspace, Path(r["artifact"]).name)  # never a file outside
            if readable and artifact.is_file() and manifest.file_sha256(artifact) == r.get("sha256"):
                reports.append(r)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ToolkitError):
            continue  # a damaged report, or one of a file outside the workspace, is left out
    return reports


def _failures(workspace: Path) -> list[str]:
    """The report's pictures and weakest classes, where `toolkit report` wrote them for the current files."""
    reports = _current_reports(workspace)
    if not reports:
        return []
    lines = ["", "## Where it fails", ""]
    for r in reports:
        worst = sorted(r["per_class"].items(), key=lambda kv: kv[1]["f1-score"])[:3]
        lines += [
            f"`{r['artifact']}`: {r['errors']} errors in {r['images']:,} test images; weakest classes by F1: "
            + ", ".join(f"{k} ({v['f1-score']:.4f})" for k, v in worst)
            + ".",
            "",
        ]
    pictures = sorted({Path(f).name for r in reports for f in r.get("files", {}).values()})
    lines += [f"![{Path(p).stem}](report/{p})" for p in pictures if (ws.report(workspace) / p).is_file()]
    return lines


def _provenance(m: dict[str, Any], metrics: dict[str, Any] | None, release: bool) -> list[str]:
    """The commands, versions and checksums that made the files; the training command from metrics.json."""
    config = metrics.get("config") if isinstance(metrics, dict) else None
    train = command_line(config) if isinstance(config, dict) else "(trained elsewhere: no metrics.json)"
    commands = ["make release   # which runs:", train, RELEASE_COMMANDS] if release else [train, *_made(m)]
    lines: list[str] = []
    versions = m.get("versions", {})
    lines += [
        "",
        "## How it was produced",
        "",
        "```",
        *commands,
        "```",
        "",
        *_equalized(m),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Source model `{m.get('model', {}).get('file', 'model.keras')}`, "
        f"SHA-256 `{m.get('model', {}).get('sha256', '?')}`;",
        "each file's SHA-256 is in `manifest.json`.",
    ]
    return lines


def _equalized(m: dict[str, Any]) -> list[str]:
    """The export's cross-layer equalization, where it changed the network the files were converted from."""
    recorded = (m.get("model") or {}).get("equalized")
    names = ("layer", "before", "after")
    done = [
        e
        for e in (recorded if isinstance(recorded, list) else [])
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in names) and isinstance(e.get("channels"), int)
    ]  # a damaged record is left out of the card, as a report of an earlier file is
    if not done:
        return []
    where = "; ".join(
        f"`{e['layer']}` ({e['channels']} channels, between `{e['before']}` and `{e['after']}`)" for e in done
    )
    return [
        f"Before conversion, cross-layer equalization moved BatchNormalization gains into the ReLU layer before: "
        f"{where}. It computes the same function; every file is verified against `model.keras` as it is.",
        "",
    ]


def _made(m: dict[str, Any]) -> list[str]:
    """The commands that made a workspace's files, from the formats its manifest lists (Vela's files come with
    the micro format, the recipes from `toolkit quantize`)."""
    formats = {a.get("format") for a in m.get("artifacts", {}).values()}
    exported = sorted(formats - {VELA_FORMAT, RECIPES_FORMAT})
    return ([f"toolkit export --format {','.join(exported)}"] if exported else []) + (
        ["toolkit quantize"] if RECIPES_FORMAT in formats else []
    )


def write_model_card(workspace: Path) -> Path:
    workspace = Path(workspace)
    bench = latest_benchmark(benchmark_files(workspace))
    return fsio.write_text(ws.model_card(workspace), model_card(workspace, bench))
