"""The card's last section: the commands, versions and checksums that made the files."""

from __future__ import annotations

from typing import Any

from toolkit.artifacts import RECIPES_FORMAT, VELA_FORMAT
from toolkit.card.header import Header
from toolkit.manifest import ArtifactRecord
from toolkit.training.config import command_line

# after the training command, which the card writes from metrics.json (train.command_line)
RELEASE_COMMANDS = """toolkit export --format all
toolkit verify
toolkit verify --browser
toolkit verify --arch arm64 --jobs 2
toolkit quantize
toolkit quantize --explain
toolkit benchmark --publish
toolkit benchmark --browser --publish
toolkit report"""


def provenance(
    header: Header, records: list[ArtifactRecord], metrics: dict[str, Any] | None, release: bool
) -> list[str]:
    """The commands, versions and checksums that made the files; the training command from metrics.json."""
    config = metrics.get("config") if isinstance(metrics, dict) else None
    train = command_line(config) if isinstance(config, dict) else "(trained elsewhere: no metrics.json)"
    commands = ["make release   # which runs:", train, RELEASE_COMMANDS] if release else [train, *_made(records)]
    return [
        "",
        "## How it was produced",
        "",
        "```",
        *commands,
        "```",
        "",
        *equalized(header),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in header.versions.items()) + ".",
        f"Source model `{header.file}`, SHA-256 `{header.sha256 or '?'}`;",
        "each file's SHA-256 is in `manifest.json`.",
    ]


def equalized(header: Header) -> list[str]:
    """The export's cross-layer equalization, where it changed the network the files were converted from."""
    if not header.equalized:
        return []
    where = "; ".join(
        f"`{e.layer}` ({e.channels} channels, between `{e.before}` and `{e.after}`)" for e in header.equalized
    )
    return [
        f"Before conversion, cross-layer equalization moved BatchNormalization gains into the ReLU layer before: "
        f"{where}. It computes the same function; every file is verified against `model.keras` as it is.",
        "",
    ]


def _made(records: list[ArtifactRecord]) -> list[str]:
    """The commands that made a workspace's files, from the formats its manifest lists (Vela's files come with
    the micro format, the recipes from `toolkit quantize`)."""
    formats = {r.format for r in records}
    exported = sorted(formats - {VELA_FORMAT, RECIPES_FORMAT})
    return ([f"toolkit export --format {','.join(exported)}"] if exported else []) + (
        ["toolkit quantize"] if RECIPES_FORMAT in formats else []
    )
