"""The committed reference release in exported/: complete, checksums true, targets met, card present."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import REPO
from toolkit import manifest
from toolkit.training.config import command_line

RELEASE = REPO / "exported"
pytestmark = pytest.mark.skipif(not (RELEASE / "manifest.json").is_file(), reason="no release committed")


def test_manifest_checksums_match_the_committed_files():
    m = manifest.read(RELEASE)
    assert m["model"]["sha256"] == manifest.file_sha256(RELEASE / "model.keras")
    formats = Counter(a["format"] for a in m["artifacts"].values())
    assert formats == {"tflite": 4, "onnx": 2, "ort": 2, "micro": 2, "vela": 4, "web": 6, "recipes": 1}, formats
    assert m["self_check"]["shape"][0] == len(m["self_check"]["test_images"]) == 10
    for name, a in m["artifacts"].items():
        assert manifest.file_sha256(RELEASE / name) == a["sha256"], name
        assert (RELEASE / name).stat().st_size == a["bytes"]


def test_release_meets_its_targets():
    metrics = json.loads((RELEASE / "metrics.json").read_text())
    assert metrics["accuracy"]["test"] >= 0.994
    for name, a in manifest.read(RELEASE)["artifacts"].items():
        if a["format"] == "vela":  # runs on an Ethos-U NPU only: Vela's estimates, checked in test_micro_release
            continue
        v = a["verification"]
        assert v["passed"] and v["images"] == 10_000, name
        if a["variant"] == "int8":
            assert v["accuracy_delta_pp"] >= -0.1, name
        if a["format"] == "web":  # verified inside the web app, in the browser
            assert "Chromium" in v["where"] and v["runtime"] == a["runtime"], name


def test_micro_release():
    arts = manifest.read(RELEASE)["artifacts"]
    c = arts["mnist_cnn.micro.c"]
    # the same int8 file in tflite-micro's reference kernels and in LiteRT's XNNPACK: their rounding differs a little
    assert c["runtime"] == "litert-micro" and c["verification"]["cross_check"]["agreement"] >= 0.999
    assert c["made_with"]["arena_bytes_min"] < c["made_with"]["arena_bytes_recommended"]
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(c["made_with"]["operators"])
    vela = [a for a in arts.values() if a["format"] == "vela"]
    assert len(vela) >= 2 and all(a["made_with"]["estimates"]["method"].startswith("estimate:") for a in vela)
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert f"{c['made_with']['arena_bytes_min']:,} B" in card and "| Raspberry Pi Pico | RP2040 |" in card
    assert "estimates from Vela's performance model, not measurements" in card


def test_web_app_lists_the_committed_web_models():
    site = RELEASE / "web"
    listed = json.loads((site / "models.json").read_text())
    web = {n: a for n, a in manifest.read(RELEASE)["artifacts"].items() if a["format"] == "web"}
    assert {f"web/{m['file']}": m["sha256"] for m in listed["models"]} == {n: a["sha256"] for n, a in web.items()}
    for name in ("index.html", "app.mjs", "engines.mjs", "preprocess.mjs", "style.css", "isolation-sw.js"):
        assert (site / name).read_bytes() == (REPO / "toolkit" / "web" / "site" / name).read_bytes(), name


def test_browser_rows_are_in_the_reference_benchmark():
    rows = json.loads((REPO / "benchmarks/results/amd-epyc-2cpu/results.json").read_text())["results"]
    measured = {
        (r["artifact"], r["runtime"]) for r in rows if r["status"] == "ok" and r["device"].startswith("Chromium")
    }
    web = {(n, a["runtime"]) for n, a in manifest.read(RELEASE)["artifacts"].items() if a["format"] == "web"}
    assert web and web <= measured
    assert all(r["runs"] >= 500 for r in rows if r["device"].startswith("Chromium") and r["batch_size"] == 1)


def test_model_card_and_report_are_there():
    card = (RELEASE / "MODEL_CARD.md").read_text()
    for section in (
        "Intended use and limits",
        "Artifacts: accuracy on the test split",
        "Latency on the reference machine",
        "In a phone app",
        "Inputs and outputs",
        "Preprocessing for app developers",
        "How it was produced",
    ):
        assert f"## {section}" in card
    for runtime in ("LiteRT (ai_edge_litert Interpreter", "LiteRT CompiledModel API", "ONNX Runtime"):
        assert f"| `mnist_cnn.int8.{'ort' if runtime == 'ONNX Runtime' else 'tflite'}` | {runtime}" in card, runtime
    for link in [l.split("(")[1].rstrip(")") for l in card.splitlines() if l.startswith("![")]:
        assert (RELEASE / link).is_file(), link


def test_the_committed_card_is_what_the_card_writes_now():
    """The card is written from the records alone (each format's section from its own module), so the committed
    one is exactly what `toolkit report` writes for the committed release and its published benchmark results."""
    from toolkit import card

    bench = card.latest_benchmark(card.benchmark_files(RELEASE))
    assert card.model_card(RELEASE, bench) == (RELEASE / "MODEL_CARD.md").read_text()


def test_card_and_make_release_name_the_training_that_made_the_model():
    """The card lists what `make release` runs, its training command written from the committed model's own
    metrics.json: so running the card's commands trains with the options that made the model."""
    train = command_line(json.loads((RELEASE / "metrics.json").read_text())["config"])
    card = (RELEASE / "MODEL_CARD.md").read_text()
    listed = card.split("make release   # which runs:\n")[1].split("\n```")[0].splitlines()
    release_target = (REPO / "Makefile").read_text().split("\nrelease:")[1].split("\n\n")[0]
    made = [l.strip().removeprefix("$(BIN)/").removesuffix(" --dir exported") for l in release_target.splitlines()]
    assert listed[0] == train and listed == [l for l in made if l.startswith("toolkit ")]


def test_the_reference_benchmark_timed_the_committed_files():
    """Every published row names the SHA-256 of the bytes it timed: those of the release, not of an earlier one."""
    rows = json.loads((REPO / "benchmarks/results/amd-epyc-2cpu/results.json").read_text())["results"]
    m = manifest.read(RELEASE)
    committed = {name: a["sha256"] for name, a in m["artifacts"].items()} | {"model.keras": m["model"]["sha256"]}
    timed = [r for r in rows if r["status"] == "ok"]
    assert timed and {r["artifact"] for r in timed} <= set(committed)
    assert all(r["sha256"] == committed[r["artifact"]] for r in timed)


def test_the_phone_files_are_verified_on_arm64():
    """Every phone file ran on ARM64 kernels (emulated, aarch64 with the dot product): the int8 files on the whole
    split, the float ones on at least 2,000 images, each agreeing with Keras and with x86, beside the x86 result."""
    arts = manifest.read(RELEASE)["artifacts"]
    phone = {n: a for n, a in arts.items() if a["format"] in ("tflite", "onnx", "ort", "micro", "web")}
    phone = {n: a for n, a in phone.items() if n.endswith((".tflite", ".onnx", ".ort"))}
    assert len(phone) == 15
    for name, a in phone.items():
        v = a["architectures"]["arm64"]["verification"]
        assert v["passed"] and v["cross_check"]["against"] == "x86_64" and v["cross_check"]["passed"], name
        assert v["images"] == 10_000 and v["full_split"] if a["variant"] == "int8" else v["images"] >= 2000, name
        e = v["emulation"]
        assert e["machine"] == "aarch64" and "asimddp" in e["features"] and e["cpu"] == "neoverse-n1", name
        assert e["versions_inside"]["ai-edge-litert"] == "1.4.0" and "seconds" not in v, name
        assert a["verification"]["images"] == 10_000 and "arm64" not in a["verification"]["where"], name
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert "## On ARM64 kernels (emulated)" in card and "| `mnist_cnn.int8.ort` | onnxruntime | 10,000 |" in card
    summary = (REPO / "benchmarks/results/amd-epyc-2cpu/SUMMARY.md").read_text()
    assert "## ARM64 kernels under emulation: verified, not timed" in summary
