"""The manifest's model-level fields that the card shows, as one typed value.

`manifest.read` checks the types of the fields other commands read (`manifest.check_header`); the card also shows
fields nobody else reads (the input shape, the equalization, the versions). Each default, and each leaving-out of a
damaged field, is decided here once, so that the sections format values instead of probing a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Equalization:
    """One cross-layer equalization of the export: `channels` gains moved into `layer`, between `before` and
    `after`."""

    layer: str
    channels: int
    before: str
    after: str


@dataclass(frozen=True)
class Header:
    name: str | None  # None: not recorded (the reference model's manifests predate the field)
    title: str | None  # the model's own name as the user wrote it (name is its file-name form)
    file: str
    sha256: str | None
    input_shape: list[int]
    output: str
    equalized: list[Equalization]
    labels: list[str]
    preprocessing: dict[str, str]
    versions: dict[str, Any]

    @classmethod
    def from_dict(cls, m: dict[str, Any]) -> Header:
        """The header of a manifest dict, as `manifest.read` returns it."""
        model = m.get("model") if isinstance(m.get("model"), dict) else {}
        shape = model.get("input_shape")
        versions = m.get("versions")
        return cls(
            name=model.get("name"),
            title=model.get("title") if isinstance(model.get("title"), str) else None,
            file=_text(model.get("file"), "model.keras"),
            sha256=model.get("sha256"),
            input_shape=shape if isinstance(shape, list) and all(isinstance(s, int) for s in shape) else [],
            output=_text(model.get("output"), "probabilities"),
            equalized=_equalizations(model.get("equalized")),
            labels=list(m.get("labels") or []),
            preprocessing=dict(m.get("preprocessing") or {}),
            versions=versions if isinstance(versions, dict) else {},
        )

    @property
    def is_reference(self) -> bool:
        """The reference MNIST CNN (its card keeps the intended-use text written for it)."""
        return self.name in (None, "mnist_cnn") and "digit_centering" in self.preprocessing


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _equalizations(recorded: Any) -> list[Equalization]:
    """The recorded equalizations; a damaged entry is left out of the card, as a report of an earlier file is."""
    names = ("layer", "before", "after")
    return [
        Equalization(e["layer"], e["channels"], e["before"], e["after"])
        for e in (recorded if isinstance(recorded, list) else [])
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in names) and isinstance(e.get("channels"), int)
    ]
