"""toolkit.report and toolkit.card: the report of one artifact (confusion matrix, per-class results, plots) and
the model card that gathers the manifest, the reports and the latest benchmark."""

from __future__ import annotations

import numpy as np

from toolkit import report


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
    text = card.write_model_card(ws, repo_root=tmp_path).read_text()
    assert "# Model card: mnist_cnn" in text and "mnist_cnn.int8.tflite" in text
    assert "report/mnist_cnn_int8_tflite.confusion.png" in text
    assert "scale 0.00392156886" in text  # the int8 input's quantization, from the manifest
