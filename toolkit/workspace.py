"""The layout of a workspace (`--dir`): every file and folder name the toolkit writes or reads in it, in one place.

A workspace holds the trained model, its metrics, the exported artifacts, the manifest that certifies them, the
web app and the reports. Functions take the workspace folder and return paths; nothing here reads or writes.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"
CHECKPOINT_DIR = "checkpoint"
SITE_DIR = "web"  # the web app: the page, models.json, models/, vendor/
SITE_MODELS_DIR = "models"
REPORT_DIR = "report"
QUANTIZATION_DIR = "quantization"  # `toolkit quantize`: the recipe table, the Pareto plot, --explain
BENCHMARK_DIR = "benchmark"  # results of an ad-hoc `toolkit benchmark` run
MODEL_CARD = "MODEL_CARD.md"


def model(workspace: str | Path) -> Path:
    return Path(workspace) / MODEL_FILE


def metrics(workspace: str | Path) -> Path:
    return Path(workspace) / METRICS_FILE


def manifest(workspace: str | Path) -> Path:
    return Path(workspace) / MANIFEST_FILE


def checkpoint(workspace: str | Path) -> Path:
    return Path(workspace) / CHECKPOINT_DIR


def site(workspace: str | Path) -> Path:
    return Path(workspace) / SITE_DIR


def report(workspace: str | Path) -> Path:
    return Path(workspace) / REPORT_DIR


def model_card(workspace: str | Path) -> Path:
    return Path(workspace) / MODEL_CARD
