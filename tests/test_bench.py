"""toolkit.bench, the measurements the published numbers come from: the records carry every field, the numbers are
consistent, failures and GPUs are reported, and an ad-hoc run never touches the committed results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import clean_failure, one_line_error
from toolkit.bench import benchmark as bench
from toolkit.bench import summary
from toolkit.bench.driver import merge
from toolkit.cli import app
from toolkit.timing import runs_for, stats_ms

REQUIRED = [
    "artifact",
    "format",
    "variant",
    "runtime",
    "device",
    "batch_size",
    "threads",
    "load_ms",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "images_per_second",
    "bytes",
    "peak_rss_mb",
    "gflops_per_second",
]


def test_stats_are_percentiles_of_the_samples():
    samples = np.arange(1, 101, dtype=np.int64) * 1_000_000  # 1..100 ms
    st = stats_ms(samples)
    assert (
        st["p50_ms"] == pytest.approx(50.5)
        and st["p90_ms"] == pytest.approx(90.1)
        and st["p99_ms"] == pytest.approx(99.01)
    )
    assert st["mean_ms"] == pytest.approx(50.5) and st["runs"] == 100 and st["min_ms"] == 1.0
    assert runs_for(1, 1000) == 1000 and runs_for(256, 1000) == 20 and runs_for(32, 1000) == 32


def test_benchmark_of_two_artifacts(exported_workspace, mnist, tmp_path):
    workspace, _ = exported_workspace
    models = [workspace / "mnist_cnn.float32.tflite", workspace / "mnist_cnn.int8.onnx"]
    result = bench.measure(workspace, mnist, batch_sizes=[1, 4], threads=[1], iterations=50, warmup=5, models=models)
    d = result.to_dict()
    assert set(d) >= {"machine", "versions", "results"}
    ok = [r for r in d["results"] if r["status"] == "ok"]
    assert {(r["artifact"], r["batch_size"]) for r in ok} == {(m.name, b) for m in models for b in (1, 4)}
    for r in ok:
        for key in REQUIRED:
            assert r[key] is not None, key
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["images_per_second"] == pytest.approx(r["batch_size"] * 1000 / r["mean_ms"], rel=1e-3)
        assert r["bytes"] == (workspace / r["artifact"]).stat().st_size
        assert 20 < r["peak_rss_mb"] < 2000 and r["load_ms"] > 0
        assert r["runs"] == (50 if r["batch_size"] == 1 else 20)
        assert r["gflops_per_second"] == pytest.approx(
            d["settings"]["flops_per_image"] * r["images_per_second"] / 1e9, rel=1e-2
        )
        assert r["accuracy"] is not None  # from the manifest's verification
        floor = r["batch_size"] * d["settings"]["flops_per_image"] / (r["peak_gflops_per_second"] * 1e9) * 1e3
        assert r["floor_ms"] == pytest.approx(floor, rel=1e-3)
        assert r["ratio_to_floor"] == pytest.approx(r["p50_ms"] / r["floor_ms"], rel=1e-2)
    assert d["machine"]["cpus_usable"] >= 1 and "avx2" in d["machine"]["isa"] or d["machine"]["arch"] != "x86_64"
    assert float(d["machine"]["peak_float32_gflops"]["1"]) > 0
    hc = d["harness_check"]
    assert hc["artifact"] == "mnist_cnn.float32.tflite" and hc["bare_loop_p50_ms"] > 0
    if not d["machine"]["gpu"]["gpus"]:
        skipped = [r for r in d["results"] if r["status"] == "skipped"]
        assert [r["runtime"] for r in skipped] == ["onnxruntime-cuda"] and skipped[0]["note"] == "no GPU visible"
    paths = summary.write_benchmark_outputs(d, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["results"]
    assert "| mnist_cnn.float32.tflite | litert | 1 |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_time_budget_caps_the_calls_of_a_slow_target(exported_workspace, mnist):
    workspace, _ = exported_workspace
    result = bench.measure(
        workspace,
        mnist,
        batch_sizes=[1],
        threads=[1],
        iterations=2000,
        warmup=2,
        models=[workspace / "model.keras"],
        seconds_per_measurement=0.5,
    )
    (slow,) = [r for r in result.results if r.runtime == "keras-predict"]
    assert 20 <= slow.runs < 2000  # model.predict takes milliseconds a call: far fewer calls fit in 0.5 s
    assert result.settings["seconds_per_measurement"] == 0.5


def test_a_broken_artifact_is_a_failed_row_not_a_crash(tmp_path, mnist):
    bad = tmp_path / "broken.float32.tflite"
    bad.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(200))  # passes the header check, fails in LiteRT
    result = bench.measure(tmp_path, mnist, batch_sizes=[1], threads=[1], iterations=5, warmup=1, models=[bad])
    rows = {r.runtime: r for r in result.results if r.artifact == bad.name}
    assert set(rows) == {"litert", "litert-compiled"}  # a .tflite is measured in both of LiteRT's APIs
    assert all(r.status == "failed" and "broken.float32.tflite" in r.note for r in rows.values())


@pytest.mark.parametrize("args", [["--threads", "0"], ["--batch-sizes", "1,x"], ["--iterations", "0"]])
def test_bad_benchmark_options_exit_2(args):
    result = CliRunner().invoke(app, ["benchmark", *args])
    assert result.exit_code == 2


def test_layer_profile_gives_every_node_to_a_layer(exported_workspace, mnist):
    from toolkit.bench.profile import OVERHEAD, layer_of, profile
    from toolkit.model import flops_by_layer, flops_per_image, load_keras_model

    layers = ["conv1", "conv1_extra", "dense1", "dense10"]
    assert layer_of("mnist_cnn_1/conv1_1/Relu:0_nchwc", layers) == "conv1"
    assert layer_of("fused mnist_cnn_1/dense1_1/MatMul/MatMulAddFusion_", layers) == "dense1"
    assert layer_of("model/dense10/BiasAdd", layers) == "dense10"
    assert layer_of("ReorderOutput_token_9", layers) == OVERHEAD

    workspace, _ = exported_workspace
    result = profile(workspace, mnist, None, threads=1, calls=100)
    keras_model = load_keras_model(workspace / "model.keras")
    assert result.artifact == "mnist_cnn.float32.onnx" and result.calls == 100
    rows = {r.layer: r for r in result.rows}
    for name in ("conv1", "conv2", "conv3", "conv4", "dense1", "probabilities"):
        assert rows[name].microseconds > 0 and {"Conv", "FusedGemm", "Gemm"} & set(rows[name].ops), name
    assert sum(r.share for r in result.rows) == pytest.approx(1.0, abs=1e-2)
    assert sum(r.microseconds for r in result.rows) == pytest.approx(result.profiled_ms * 1e3, rel=1e-2)
    assert rows["dense1"].weight_bytes == 4 * keras_model.get_layer("dense1").count_params()  # float32 weights
    assert rows["conv2"].mflop == pytest.approx(flops_by_layer(keras_model)["conv2"] / 1e6, abs=1e-3)
    assert result.floor_ms == pytest.approx(flops_per_image(keras_model) / result.peak_gflops / 1e6, rel=1e-2)
    assert 0 < result.p50_ms and result.machine["cpus_usable"] >= 1

    out = CliRunner().invoke(app, ["profile", "--dir", str(workspace), "--model", "mnist_cnn.float32.tflite"])
    assert out.exit_code == 1 and "not an ONNX artifact" in out.output


def test_an_adhoc_benchmark_never_touches_committed_results(workspace, mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    published = tmp_path / "benchmarks" / "results"
    outcome = bench.benchmark(
        workspace,
        mnist,
        batch_sizes=[1],
        threads=[1],
        iterations=20,
        warmup=2,
        models=[workspace / "mnist_cnn.int8.onnx"],
    )
    assert outcome.files["json"] == workspace / "benchmark" / "results.json" and not published.exists()
    first = {(r["artifact"], r["runtime"]) for r in outcome.merged["results"]}
    again = bench.benchmark(
        workspace,
        mnist,
        batch_sizes=[1],
        threads=[1],
        iterations=20,
        warmup=2,
        models=[workspace / "mnist_cnn.float32.tflite"],
    )
    kept = {(r["artifact"], r["runtime"]) for r in again.merged["results"]}
    assert first <= kept and ("mnist_cnn.float32.tflite", "litert") in kept  # merged by (artifact, runtime, ...)
    assert not again.failed


def test_benchmark_exits_1_when_an_asked_for_artifact_fails(tmp_path, mnist_dir):
    bad = tmp_path / "broken.float32.tflite"
    bad.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(200))
    args = [
        "benchmark",
        "--model",
        str(bad),
        "--iterations",
        "5",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--batch-sizes",
        "1",
        "--dir",
        str(tmp_path / "ws"),
    ]
    out = clean_failure(CliRunner().invoke(app, args, env={"TOOLKIT_DATA_DIR": str(mnist_dir)}))
    assert "could not be measured: broken.float32.tflite" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "100000000000000000000000"], "threads must be from 1 to 1,024"),
        (["--batch-sizes", "20000"], "batch sizes must be from 1 to 4,096"),
        (["--batch-sizes", "32"], "batch size 32 is larger than the test split (20 images)"),
    ],
)
def test_absurd_benchmark_sizes_are_one_line(args, message, tmp_path, tiny_idx):
    data = ["--data-dir", str(tiny_idx), "--dataset", "idx"]
    result = CliRunner().invoke(app, ["benchmark", *args, *data, "--dir", str(tmp_path)])
    one_line_error(result, message)


def test_merge_drops_the_rows_of_a_file_measured_again_with_other_bytes(tmp_path):
    machine = {"cpu": "Some CPU", "arch": "x86_64", "cpus_usable": 2}

    def row(artifact, runtime, sha256, p50):  # the fields merge reads
        key = {"artifact": artifact, "runtime": runtime, "threads": 1, "batch_size": 1}
        return {**key, "sha256": sha256, "p50_ms": p50}

    earlier = [
        row("a.tflite", "litert", "old", 1.0),
        row("a.tflite", "litert-compiled", "old", 1.1),  # not measured again, but of the old bytes: dropped
        row("b.onnx", "onnxruntime", "b", 2.0),  # another file: kept
        row("c.tflite", "litert", "c", 3.0),
    ]
    (tmp_path / "results.json").write_text(json.dumps({"machine": machine, "results": earlier}))
    now = [row("a.tflite", "litert", "new", 0.9), row("c.tflite", "litert-compiled", "c", 3.1)]
    merged = merge({"machine": machine, "versions": {}, "results": now}, tmp_path / "results.json")
    assert sorted((r["artifact"], r["runtime"], r["sha256"]) for r in merged["results"]) == [
        ("a.tflite", "litert", "new"),
        ("b.onnx", "onnxruntime", "b"),
        ("c.tflite", "litert", "c"),  # same bytes, another runtime: kept beside this run's row
        ("c.tflite", "litert-compiled", "c"),
    ]
