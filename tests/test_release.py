"""The committed reference release in exported/: complete, checksums true, targets met, card present."""

from __future__ import annotations

import json

import pytest

from toolkit import manifest
from tests.conftest import REPO

RELEASE = REPO / "exported"
pytestmark = pytest.mark.skipif(not (RELEASE / "manifest.json").is_file(), reason="no release committed")


def test_manifest_checksums_match_the_committed_files():
    m = manifest.read(RELEASE)
    assert m["model"]["sha256"] == manifest.file_sha256(RELEASE / "model.keras")
    assert len(m["artifacts"]) == 7
    for name, a in m["artifacts"].items():
        assert manifest.file_sha256(RELEASE / name) == a["sha256"], name
        assert (RELEASE / name).stat().st_size == a["bytes"]


def test_release_meets_its_targets():
    metrics = json.loads((RELEASE / "metrics.json").read_text())
    assert metrics["accuracy"]["test"] >= 0.994
    for name, a in manifest.read(RELEASE)["artifacts"].items():
        v = a["verification"]
        assert v["passed"] and v["images"] == 10_000, name
        if a["variant"] == "int8":
            assert v["accuracy_delta_pp"] >= -0.1, name


def test_model_card_and_report_are_there():
    card = (RELEASE / "MODEL_CARD.md").read_text()
    for section in ("Intended use and limits", "Artifacts: accuracy on the test split", "Latency on the reference machine",
                    "Inputs and outputs", "Preprocessing for app developers", "How it was produced"):
        assert f"## {section}" in card
    for link in [l.split("(")[1].rstrip(")") for l in card.splitlines() if l.startswith("![")]:
        assert (RELEASE / link).is_file(), link
