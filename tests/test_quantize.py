"""Quantization recipes and `toolkit quantize`: failures reported and skipped, the budget search keeps the smallest
passing file, calibration never reads a test image, recipe records in the manifest are judged by their budget, and
the CLI's errors are one line.

Two workspaces: a small CNN with random (seeded) weights, exported to float32 `.tflite` here (every check on it is
about the search, not about accuracy), and a copy of the committed release's float32 model, on which the measured
failures of ai-edge-quantizer's recipes are known (notes: microcontrollers-and-quantization.md).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import one_line_error
from toolkit import export, manifest, parity, verify
from toolkit.cli import app
from toolkit.errors import ToolkitError
from toolkit.quantize import backends, recipes
from toolkit.quantize import explain as explain_lib
from toolkit.quantize import search as search_lib
from toolkit.quantize.report import FAIL, NOT_SMALLER, PASS, QUANTIZE_FAILED, RUN_FAILED, SCREENED, Row

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "exported"
LIMIT = 300  # test images per verification here


def _guarded(dataset):
    """The dataset, whose test split raises when anything asks for it."""

    class Splits:
        def __init__(self, real):
            self.train, self.valid = real.train, real.valid

        @property
        def test(self):
            raise AssertionError("the test split was read")

    clone = copy.copy(dataset)
    real_splits = dataset.splits
    clone.splits = lambda: Splits(real_splits())
    return clone


def _image_keys(images: np.ndarray) -> set[bytes]:
    return {np.round(np.asarray(img) * 255).astype(np.uint8).tobytes() for img in images.reshape(-1, 28, 28)}


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory, mnist):
    """model.keras (conv1, dense1, probabilities; random weights) and its float32 .tflite in the manifest."""
    from toolkit.backend import keras as backend

    k = backend()
    k.utils.set_random_seed(0)
    inputs = k.Input(shape=(28, 28, 1), name="image")
    x = k.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = k.layers.MaxPooling2D(2, name="pool1")(x)
    x = k.layers.Flatten(name="flatten")(x)
    x = k.layers.Dense(64, activation="relu", name="dense1")(x)
    outputs = k.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = k.Model(inputs, outputs, name="mnist_cnn")
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 20, bias])  # a clear top class for each image
    workspace = tmp_path_factory.mktemp("small")
    model.save(workspace / "model.keras")
    export.export(workspace, mnist, "tflite", ["float32"], calibration_size=10)
    return workspace


@pytest.fixture(scope="module")
def release_float32(tmp_path_factory):
    """The committed model.keras, metrics.json and float32 .tflite, with the manifest cut down to that file."""
    workspace = tmp_path_factory.mktemp("release")
    for name in ("model.keras", "metrics.json", "mnist_cnn.float32.tflite"):
        shutil.copy(RELEASE / name, workspace / name)
    m = json.loads((RELEASE / "manifest.json").read_text())
    m["artifacts"] = {"mnist_cnn.float32.tflite": m["artifacts"]["mnist_cnn.float32.tflite"]}
    (workspace / "manifest.json").write_text(json.dumps(m))
    return workspace


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ws"
    shutil.copytree(source, target)
    return target


# ------------------------------------------------------------------------------------------ the recipes


def test_recipe_names_and_fallback_widening():
    layers = [
        recipes.Layer("conv1", "CONV_2D", "a;", (8, 3, 3, 1)),
        recipes.Layer("dense1", "FULLY_CONNECTED", "b;", (64, 1352)),
        recipes.Layer("probabilities", "FULLY_CONNECTED", "c;", (10, 64)),
    ]
    int4_dense = recipes.recipe_named("int4-dense")
    assert [int4_dense.type_of(layer, layers) for layer in layers] == ["int8", "int4", "int8"]
    wider = recipes.recipe_named("int4").widened("probabilities", "int8").widened("conv1", "int8")
    assert wider.name == "int4+probabilities-int8+conv1-int8"
    assert [wider.type_of(layer, layers) for layer in layers] == ["int8", "int4", "int8"]
    again = wider.widened("probabilities", "float")
    assert again.name == "int4+conv1-int8+probabilities-float"
    assert again.type_of(layers[2], layers) == "float"
    assert again.alone(layers[2], layers) is None  # a float layer has no error to measure
    assert not recipes.recipe_named("int16x8").widenable and not recipes.recipe_named("int4-matmulnbits").widenable
    with pytest.raises(ToolkitError, match="unknown recipe 'int3'"):
        recipes.recipe_named("int3")


def test_model_layers_of_the_release():
    layers = backends.model_layers((RELEASE / "mnist_cnn.float32.tflite").read_bytes())
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3", "conv4", "dense1", "dense2", "probabilities"]
    assert recipes.largest_dense(layers).name == "dense1" and recipes.largest_dense(layers).params == 410_112 - 512


def test_all_formats_leave_the_recipes_out():
    assert "recipes" not in [f for f, _ in export.parse_selection("all", None)]
    assert export.parse_selection("recipes", None) == [("recipes", list(recipes.VARIANTS))]
    assert export.parse_selection("recipes", ["int4"]) == [("recipes", ["int4"])]


# ------------------------------------------------------------------------------- failures: reported, skipped


def test_recipes_that_fail_are_reported_and_skipped(release_float32, tmp_path, mnist):
    """On the committed model (measured): Hadamard int4 fails in LiteRT's XNNPACK, blocks of 64 do not divide 800."""
    workspace = _copy(release_float32, tmp_path)
    outcome = search_lib.search(
        workspace, mnist, recipes=["int4-hadamard", "int4-block64", "int8-dynamic"], limit=LIMIT, out=tmp_path / "r"
    )
    rows = {r.recipe: r for r in outcome.rows}
    assert rows["int4-hadamard"].status == RUN_FAILED and "XNNPack" in rows["int4-hadamard"].message
    assert "fails in litert: " in rows["int4-hadamard"].result(None)
    assert rows["int4-block64"].status == QUANTIZE_FAILED and "block size 64" in rows["int4-block64"].message
    for row in (rows["int4-hadamard"], rows["int4-block64"]):
        assert "\n" not in row.message and row.bytes is None and not row.kept
    assert outcome.best.recipe == "int8-dynamic"
    files = sorted(p.name for p in workspace.iterdir())
    assert not [f for f in files if "hadamard" in f or "block64" in f or f.startswith(".quantize-")], files
    report = json.loads((tmp_path / "r" / "quantization-int4-hadamard-int4-block64-int8-dynamic.json").read_text())
    assert {r["recipe"]: r["status"] for r in report["rows"]}["int4-hadamard"] == RUN_FAILED


def test_export_format_recipes_skips_a_recipe_that_fails(release_float32, tmp_path, mnist):
    workspace = _copy(release_float32, tmp_path)
    said = []
    records = export.export(workspace, mnist, "recipes", ["int4-hadamard", "int8-dynamic"], progress=said.append)
    assert [r.variant for r in records] == ["int8-dynamic"]
    assert any("int4-hadamard: skipped, fails in litert" in line for line in said), said
    assert not (workspace / "mnist_cnn.int4-hadamard.tflite").exists()
    made = records[0].made_with
    assert made["source_origin"].startswith("the workspace's mnist_cnn.float32.tflite")  # not converted again
    assert made["accuracy_budget_pp"] == parity.RECIPE_BUDGET_PP


# ----------------------------------------------------------------------------------------- the search


def test_budget_search_keeps_the_smallest_passing_file(small_workspace, tmp_path, mnist):
    workspace = _copy(small_workspace, tmp_path)
    names = ["int8-dynamic", "int4", "int2"]
    # the small model has random weights: at chance level, so its parity is accepted explicitly
    kept = dict(limit=LIMIT, allow_chance=True)
    anything = search_lib.search(workspace, mnist, budget=100, recipes=names, out=tmp_path / "any", **kept)
    made = [r for r in anything.rows if r.recipe in names and r.bytes is not None]
    assert len(made) == 3 and anything.best.bytes == min(r.bytes for r in made)  # 100 pp: whatever runs passes

    workspace = _copy(small_workspace, tmp_path / "strict")
    outcome = search_lib.search(workspace, mnist, budget=0.0, recipes=names, out=tmp_path / "strict-r", **kept)
    best = outcome.best
    assert best is not None and best.passed and best.accuracy_delta_pp >= 0
    smaller = [r for r in outcome.rows if r.bytes is not None and r.bytes < best.bytes and r.status != "source"]
    assert all(r.status in (FAIL, SCREENED) for r in smaller), [(r.recipe, r.status) for r in smaller]
    for r in outcome.rows:
        if r.origin.startswith("fallback"):
            assert "+" in r.recipe and r.status in (PASS, FAIL, SCREENED, NOT_SMALLER)
    assert (workspace / best.kept).is_file()
    kept = [r for r in manifest.records(workspace) if r.format == "recipes"]
    assert [r.variant for r in kept] == [best.recipe]
    assert (tmp_path / "strict-r" / "quantization-int8-dynamic-int4-int2.png").is_file()


def test_recipe_records_in_the_manifest(small_workspace, tmp_path, mnist):
    workspace = _copy(small_workspace, tmp_path)
    outcome = search_lib.search(
        workspace, mnist, budget=100, recipes=["int8-dynamic"], limit=LIMIT, out=tmp_path / "r", allow_chance=True
    )
    (record,) = [r for r in manifest.records(workspace) if r.format == "recipes"]
    assert record.file == outcome.best.kept == "mnist_cnn.int8-dynamic.tflite"
    assert (record.variant, record.runtime) == ("int8-dynamic", "litert")
    made = record.made_with
    assert made["quantizer"].startswith("ai-edge-quantizer ") and made["recipe"] == "int8-dynamic"
    assert made["ai_edge_quantizer_recipe"] == "ai_edge_quantizer.recipe.dynamic_wi8_afp32()"
    assert made["layers"] == {"conv1": "int8", "dense1": "int8", "probabilities": "int8"}
    assert made["source"] == "mnist_cnn.float32.tflite" and made["accuracy_budget_pp"] == 100
    budget = "accuracy loss <= 100 pp"  # the random-weights model is at chance level, accepted explicitly
    assert record.verification["passed"] and record.verification["criteria"].startswith(budget)
    again = verify.check(workspace, mnist, [record.file], limit=LIMIT, allow_chance=True)  # judged by its budget
    assert again.passed and again.results[0].criteria.startswith(budget)
    assert not verify.check(workspace, mnist, [record.file], limit=LIMIT, write=False).passed  # never by itself


def test_recipe_criteria_come_from_the_budget_never_from_nothing():
    def record(fmt, variant, made_with):
        spec = {"name": "x", "shape": [-1, 28, 28, 1], "dtype": "float32"}
        entry = dict(file="f.tflite", format=fmt, variant=variant, runtime="litert", bytes=1, sha256="0" * 64)
        return manifest.ArtifactRecord.from_dict({**entry, "input": spec, "output": spec, "made_with": made_with})

    assert parity.criteria_of(record("recipes", "int4", {"accuracy_budget_pp": 0.5})) == {"max_accuracy_loss_pp": 0.5}
    for bad in ({}, {"accuracy_budget_pp": "lots"}, {"accuracy_budget_pp": True}, {"accuracy_budget_pp": -1}):
        assert parity.criteria_of(record("recipes", "int4+dense1-int8", bad)) == {"max_accuracy_loss_pp": 0.1}
    assert parity.criteria_of(record("tflite", "int8", {})) == parity.CRITERIA["int8"]


def test_pareto_front():
    rows = [
        Row("a", "litert", "", "recipe", bytes=100, accuracy=0.90),
        Row("b", "litert", "", "recipe", bytes=200, accuracy=0.99),
        Row("c", "litert", "", "recipe", bytes=300, accuracy=0.98),
        Row("d", "litert", "", "recipe", bytes=300, accuracy=0.995),
    ]
    search_lib.mark_pareto(rows)
    assert [r.recipe for r in rows if r.pareto] == ["a", "b", "d"]


# -------------------------------------------------------------------------------------------- calibration


def test_calibration_images_come_from_the_training_split_only(tiny_idx):
    from toolkit import data

    ds = data.load(tiny_idx, "idx")
    calibration = export.make_calibration(_guarded(ds), 30)
    train, _ = ds.splits().train
    assert _image_keys(calibration.images) <= _image_keys(train / 255.0)
    assert calibration.describe()["sampling"] == "class-balanced random sample of the train split"


def test_search_calibrates_on_training_images(release_float32, tmp_path, mnist, monkeypatch):
    seen = []
    real = backends.quantize_bytes

    def spy(recipe, source, calibration):
        seen.append(calibration.images)
        return real(recipe, source, calibration)

    monkeypatch.setattr(backends, "quantize_bytes", spy)
    workspace = _copy(release_float32, tmp_path)
    outcome = search_lib.search(
        workspace, mnist, recipes=["int8-static"], calibration_size=50, limit=LIMIT, out=tmp_path / "r"
    )
    assert seen and outcome.calibration["images"] == 50
    train_keys = _image_keys(mnist.splits().train[0] / 255.0)
    for images in seen:
        assert _image_keys(images) <= train_keys


def test_explain_never_reads_the_test_split(small_workspace, tmp_path, mnist):
    workspace = _copy(small_workspace, tmp_path)
    result = explain_lib.explain(workspace, _guarded(mnist), "int2", calibration_size=100, out=tmp_path / "r")
    assert [e.layer for e in result.layers] and {e.layer for e in result.layers} == {"conv1", "dense1", "probabilities"}
    snrs = [e.alone_snr_db for e in result.layers]
    assert snrs == sorted(snrs) and all(e.type == "int2" for e in result.layers)
    assert any(e.output_snr_db is not None and math.isfinite(e.output_snr_db) for e in result.layers)
    for kind in ("json", "markdown", "plot"):
        assert Path(result.files[kind]).is_file()


def test_a_changed_float32_source_is_refused(release_float32, tmp_path, mnist):
    workspace = _copy(release_float32, tmp_path)
    path = workspace / "mnist_cnn.float32.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # (the last byte is the packed label zip's, already 0)
    path.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match="no certified float32 .tflite of model.keras to quantize"):
        search_lib.search(workspace, mnist, recipes=["int4"], limit=LIMIT, out=tmp_path / "r")


# --------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--budget", "-1"], "--budget must be a number of percentage points from 0 to 100, got -1.0"),
        (["--budget", "nan"], "--budget must be"),
        (["--recipe", "int3"], "unknown recipe 'int3'; choose from: int8-dynamic"),
        (["--recipe", ","], "no recipe given"),
        (["--explain", "--recipe", "int4-matmulnbits"], "--explain works on LiteRT recipes"),
        (["--explain", "--recipe", "int4,int2"], "--explain takes one recipe"),
    ],
)
def test_cli_option_errors_are_one_line(args, fragment, tmp_path):
    one_line_error(CliRunner().invoke(app, ["quantize", *args, "--dir", str(tmp_path)]), fragment)


def test_cli_without_an_export_is_one_line(tmp_path, mnist_dir):
    result = CliRunner().invoke(app, ["quantize", "--dir", str(tmp_path), "--data-dir", str(mnist_dir)])
    one_line_error(result, "run `toolkit export` first")


def test_cli_help():
    result = CliRunner().invoke(app, ["quantize", "--help"])
    assert result.exit_code == 0 and "--budget" in result.output and "--explain" in result.output
