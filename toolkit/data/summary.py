"""What `toolkit data` reports about a dataset: where it came from, how it was checked, its fingerprint, and per
split the count, the images per class and the pixel range. Apart from loading: only the reports need it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # toolkit.data imports this module (to re-export describe): a run-time import would be a cycle
    from toolkit.data import Dataset


@dataclass
class SplitSummary:
    name: str
    count: int
    class_counts: list[int]
    pixel_min: int | None
    pixel_max: int | None
    pixel_mean: float | None


@dataclass
class DataReport:
    dataset: str
    source: str
    location: str
    checksums: str
    sha256: str
    splits: list[SplitSummary]

    def to_dict(self) -> dict:
        return asdict(self)


def describe(ds: Dataset) -> DataReport:
    summaries = []
    for name, (x, y) in ds.splits().items():
        summaries.append(
            SplitSummary(
                name=name,
                count=int(len(y)),
                class_counts=np.bincount(y, minlength=ds.num_classes).astype(int).tolist(),
                pixel_min=int(x.min()) if len(x) else None,  # a split may be empty (--all-data, tiny data)
                pixel_max=int(x.max()) if len(x) else None,
                pixel_mean=round(float(x.mean()), 2) if len(x) else None,
            )
        )
    if ds.checksums_verified:
        checks = "MNIST SHA-256 verified for all 4 files"
    else:
        checks = "structure checked (MNIST checksums not applied)"
    return DataReport(
        dataset=ds.name, source=ds.source, location=ds.location, checksums=checks, sha256=ds.sha256, splits=summaries
    )
