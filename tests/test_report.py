"""toolkit.report and toolkit.card: the report of one artifact (confusion matrix, per-class results, plots) and
the model card that gathers the manifest, the reports and the latest benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tests.helpers import one_line_error
from toolkit import report
from toolkit.cli import app


def test_report_and_model_card(exported_workspace, mnist, tmp_path):
    import shutil

    from toolkit import card

    ws = tmp_path / "ws"
    shutil.copytree(exported_workspace[0], ws)
    result = report.report_artifact(ws, mnist, ws / "mnist_cnn.int8.tflite")
    assert sum(map(sum, result["confusion_matrix"])) == 10_000
    assert set(result["per_class"]) == {str(d) for d in range(10)}
    assert result["errors"] == 10_000 - int(np.trace(result["confusion_matrix"]))
    for path in result["files"].values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = card.write_model_card(ws).read_text()
    assert "# Model card: mnist_cnn" in text and "mnist_cnn.int8.tflite" in text
    assert "report/mnist_cnn_int8_tflite.confusion.png" in text
    assert "scale 0.00392156886" in text  # the int8 input's quantization, from the manifest
    produced = text.split("## How it was produced")[1]  # what made these files, not what makes the release
    assert "make release" not in produced and "toolkit export --format micro,onnx,ort,tflite,web\n" in produced


def test_report_never_writes_through_a_symlink_out_of_the_workspace(tmp_path, mnist_dir):
    import shutil

    workspace, outside = tmp_path / "ws", tmp_path / "outside.md"
    release = Path(__file__).resolve().parents[1] / "exported"
    shutil.copytree(release, workspace, ignore=shutil.ignore_patterns("web", "checkpoint"))
    (workspace / "MODEL_CARD.md").unlink()
    outside.write_text("someone else's file\n")
    (workspace / "MODEL_CARD.md").symlink_to(outside)
    result = CliRunner().invoke(app, ["report", "--data-dir", str(mnist_dir), "--dir", str(workspace)])
    one_line_error(result, "MODEL_CARD.md: a symlink leads out of the workspace")
    assert outside.read_text() == "someone else's file\n"


def test_the_card_reads_benchmarks_of_its_own_workspace_only(tmp_path):
    from toolkit import card

    (tmp_path / "benchmarks" / "results" / "m").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "m" / "results.json").write_text("{broken")  # beside, outside --dir
    workspace = tmp_path / "ws"
    (workspace / "benchmark").mkdir(parents=True)
    assert card.benchmark_files(workspace) == []
    (workspace / "benchmark" / "results.json").write_text('{"results": "not rows"}')
    assert card.benchmark_files(workspace) == [workspace / "benchmark" / "results.json"]
    assert card.latest_benchmark(card.benchmark_files(workspace)) is None  # unreadable as a benchmark: left out
    assert card.benchmark_files(card.RELEASE)[-1].parent.parent.name == "results"  # the release: the published ones


def test_the_card_leaves_out_a_report_of_an_earlier_file_of_the_same_name(tmp_path):
    from toolkit import manifest
    from toolkit.card import findings

    (tmp_path / "report").mkdir()
    (tmp_path / "m.tflite").write_bytes(b"the file exported now")
    (tmp_path / "report" / "samples.png").write_bytes(b"png")
    row = {"per_class": {"0": {"f1-score": 0.9}}, "errors": 3, "images": 10, "files": {"samples": "x/samples.png"}}
    now = {**row, "artifact": "m.tflite", "sha256": manifest.file_sha256(tmp_path / "m.tflite")}
    (tmp_path / "report" / "now.report.json").write_text(json.dumps(now))
    (tmp_path / "report" / "old.report.json").write_text(json.dumps({**now, "sha256": "0" * 64, "errors": 99}))
    (tmp_path / "report" / "older.report.json").write_text(json.dumps({**row, "artifact": "m.tflite"}))  # no SHA
    (tmp_path / "report" / "damaged.report.json").write_text(json.dumps({**now, "per_class": {"0": {}}}))
    assert findings.current_reports(tmp_path) == [now]
    lines = findings.failures(tmp_path)
    assert "`m.tflite`: 3 errors in 10 test images; weakest classes by F1: 0 (0.9000)." in lines
    assert lines[-1] == "![samples](report/samples.png)" and not any("99 errors" in l for l in lines)


def test_the_card_names_the_equalized_layers_and_ignores_a_damaged_record():
    from toolkit.card.header import Header
    from toolkit.card.provenance import equalized

    good = {"layer": "norm", "before": "d2", "after": "out", "channels": 64}
    (line, _) = equalized(Header.from_dict({"model": {"equalized": [good]}}))
    assert "`norm` (64 channels, between `d2` and `out`)" in line
    for damaged in ("x", [{"layer": 1}], [None], {"layer": "norm"}):
        assert equalized(Header.from_dict({"model": {"equalized": damaged}})) == []
