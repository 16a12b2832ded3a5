"""The per-artifact report: per-class precision, recall and F1, the confusion matrix, the hardest test images and
sample images of each class, from the test split run in the artifact's own runtime (and, with --card, the model card
rewritten from them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import card as card_lib
from toolkit import fsio, runtimes
from toolkit import workspace as ws
from toolkit.contract import from_header
from toolkit.data import to_model_input
from toolkit.loader import open_file
from toolkit.plots import confusion_matrix_png, image_grid_png
from toolkit.predict import best_artifact
from toolkit.workspace import Workspace


def report_artifact(
    workspace: Path, dataset, artifact: Path | None = None, out_dir: Path | None = None, hardest: int = 30, card=False
) -> dict[str, Any]:
    """Per-class precision/recall/F1, confusion matrix, the hardest test images and sample images of each class;
    with `card`, the workspace's model card is rewritten from them."""
    import numpy as np
    from sklearn.metrics import classification_report, confusion_matrix

    workspace = Workspace.of(workspace)
    artifact = Path(artifact) if artifact else best_artifact(workspace)
    runner, _, header = open_file(artifact)  # a changed file that a manifest certified is refused before it runs
    out_dir = fsio.ensure_dir(Path(out_dir) if out_dir else ws.report(workspace))
    x, y = dataset.splits().test
    contract = from_header(header, str(workspace)) or workspace.input_contract()  # the artifact's own, if listed
    probabilities = runtimes.predict(runner, to_model_input(x, contract))
    predicted = probabilities.argmax(1)
    classes = probabilities.shape[1]
    named = header.get("labels")
    labels = named if isinstance(named, list) and len(named) == classes else dataset.class_names[:classes]
    per_class = classification_report(
        y, predicted, labels=list(range(classes)), target_names=labels, output_dict=True, zero_division=0
    )
    matrix = confusion_matrix(y, predicted, labels=list(range(classes)))
    stem = artifact.name.replace(".", "_")
    files = {
        "confusion_matrix": confusion_matrix_png(
            matrix, labels, f"{artifact.name}: confusion matrix (test split)", out_dir / f"{stem}.confusion.png"
        ),
    }
    wrong = np.flatnonzero(predicted != y)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:hardest]
    files["hardest"] = image_grid_png(
        x[wrong],
        [f"true {labels[y[i]]} → {labels[predicted[i]]}\n{probabilities[i, predicted[i]]:.2f}" for i in wrong],
        f"{artifact.name}: the {len(wrong)} most confident mistakes of {int((predicted != y).sum())}",
        out_dir / f"{stem}.hardest.png",
        colours=["firebrick"] * len(wrong),
    )
    samples = [i for c in range(min(classes, 20)) for i in np.flatnonzero(y == c)[:10]]
    files["samples"] = image_grid_png(
        x[samples], [labels[y[i]] for i in samples], "Test images of each class", out_dir / "samples.png"
    )
    result = {
        "artifact": artifact.name,
        "sha256": workspace.sha256(artifact),  # the card shows a report only while the file is still this one
        "images": int(len(y)),
        "accuracy": round(float((predicted == y).mean()), 6),
        "errors": int((predicted != y).sum()),
        "per_class": {label: {k: round(float(v), 4) for k, v in per_class[label].items()} for label in labels},
        "macro_avg": {k: round(float(v), 4) for k, v in per_class["macro avg"].items()},
        "confusion_matrix": matrix.tolist(),
        "files": {k: str(v) for k, v in files.items()},
    }
    fsio.write_json(out_dir / f"{stem}.report.json", result)
    if card:
        result["model_card"] = str(card_lib.write_model_card(workspace))
    return result
