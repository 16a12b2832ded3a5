"""Parity of one artifact's outputs with the Keras model's: the pass criteria, the record of a comparison, and
the Keras reference it is compared with (computed once per check).

float32 must match Keras up to float rounding; reduced-precision files are judged where Keras is confident and by
the change in accuracy; a quantization recipe by the accuracy budget it was kept under. `toolkit.verify` runs the
files and writes the results; this module only scores them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts
from toolkit.contract import UNIT, InputContract
from toolkit.manifest import ArtifactRecord

# Pass criteria per variant. float32 must match Keras exactly up to float rounding. A reduced-precision variant
# moves every probability a little; whether that flips a prediction depends on how many images sit near the
# decision boundary, which depends on the model and the dataset (a weak model has many). So agreement is
# required only on the images where Keras is confident (top probability >= CONFIDENT), where only a broken
# artifact disagrees, and the near-boundary images are judged by what users see: the change in accuracy.
CONFIDENT = 0.9
CRITERIA: dict[str, dict[str, float]] = {
    "float32": {"min_agreement": 0.9999, "max_abs_diff": 1e-4},
    "float16": {"min_confident_agreement": 0.999, "max_accuracy_loss_pp": 0.1},
    "dynamic": {"min_confident_agreement": 0.999, "max_accuracy_loss_pp": 0.1},
    "int8": {"max_accuracy_loss_pp": 0.2},
}
# A quantization recipe (format "recipes", `toolkit quantize`) is judged by the accuracy budget it was kept under,
# recorded in its made_with; where none is recorded, by the default budget: never by no criterion at all.
RECIPE_BUDGET_PP = 0.1


def criteria_of(record: ArtifactRecord) -> dict[str, float]:
    """The pass criteria of one artifact: its variant's, or a recipe's accuracy budget."""
    if record.format != artifacts.RECIPES_FORMAT:
        return CRITERIA.get(record.variant, {})
    budget = record.made_with.get("accuracy_budget_pp")
    valid = isinstance(budget, int | float) and not isinstance(budget, bool) and 0 <= budget <= 100
    return {"max_accuracy_loss_pp": float(budget) if valid else RECIPE_BUDGET_PP}


def on_split(c: dict[str, float], images: int, confident: int) -> tuple[dict[str, float], str]:
    """The criteria as they apply to a split of `images` (`confident` of them where Keras is confident): never
    stricter than one image, so that a single borderline image cannot fail a correct file on a small test split
    (on MNIST's 10,000 images every criterion already allows more than one); and why, where that changed them."""
    out, widened = dict(c), []
    if "max_accuracy_loss_pp" in c and images and 100 / images > c["max_accuracy_loss_pp"]:
        out["max_accuracy_loss_pp"] = round(100 / images, 4)
        widened.append("accuracy")
    if "min_confident_agreement" in c and confident and 1 - 1 / confident < c["min_confident_agreement"]:
        out["min_confident_agreement"] = round(1 - 1 / confident, 6)  # as the agreement itself is rounded
        widened.append("confident agreement")
    if "min_agreement" in c and images and 1 - 1 / images < c["min_agreement"]:
        out["min_agreement"] = round(1 - 1 / images, 6)
        widened.append("agreement")
    note = f" (one image allowed on this split of {images:,}: {', '.join(widened)})" if widened else ""
    return out, note


def describe_criteria(c: dict[str, float]) -> str:
    parts = []
    if "min_agreement" in c:
        parts.append(f"agreement >= {c['min_agreement'] * 100:g}%")
    if "min_confident_agreement" in c:
        parts.append(f"agreement >= {c['min_confident_agreement'] * 100:g}% where Keras p >= {CONFIDENT:g}")
    if "max_abs_diff" in c:
        parts.append(f"max |diff| <= {c['max_abs_diff']:g}")
    if "max_accuracy_loss_pp" in c:
        parts.append(f"accuracy loss <= {c['max_accuracy_loss_pp']:g} pp")
    return ", ".join(parts)


@dataclass
class ParityRecord:
    file: str
    format: str
    variant: str
    runtime: str  # a name of toolkit.artifacts.RUNTIMES
    images: int
    where: str = ""  # where the runtime ran: this machine's CPU, a named browser, tflite-micro's host build
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_delta_pp: float | None = None
    agreement: float | None = None
    disagreements: int | None = None
    confident_images: int | None = None  # images where Keras' top probability >= CONFIDENT
    confident_agreement: float | None = None
    max_abs_diff: float | None = None
    criteria: str = ""
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verified_at: str = ""
    data_sha256: str = ""  # fingerprint of the dataset whose test split was used
    cross_check: dict[str, Any] | None = None  # agreement with another runtime on the same model (micro vs LiteRT)
    self_check: dict[str, Any] | None = None  # this file's own outputs on the self-check images (see self_check_of)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reference:
    """The Keras model's probabilities on the verification images: computed once, compared with every artifact."""

    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    # desktop runs on these images by the file's SHA-256, so that a file is run once per check: the micro model's
    # .tflite is both an artifact of its own and the micro scorer's cross-check
    native_runs: dict[str, np.ndarray] = field(default_factory=dict)
    contract: InputContract = UNIT  # how the images were made from pixels (and are made back into them)
    allow_chance: bool = False  # --allow-chance: certify parity even where the Keras model is at chance level
    trained_accuracy: float | None = None  # metrics.json's test accuracy, where the toolkit trained the model here

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.probabilities.argmax(1) == self.labels))

    @cached_property
    def chance_level(self) -> float:
        """The accuracy no better than guessing on these images: the most frequent class's share, plus three
        standard errors of a guess at that rate (so a small test split is not judged by luck)."""
        share = float(np.bincount(self.labels).max() / len(self.labels))
        return share + 3 * float(np.sqrt(share * (1 - share) / len(self.labels)))

    @cached_property
    def at_chance(self) -> str | None:
        """Why parity with this reference proves nothing, or None: a Keras model at chance level on its own test
        split is broken for these inputs (most often an input contract that is not the one it was trained with),
        and every file that agrees with it is broken too."""
        fix = "give the model's own --input-contract (or --allow-chance for a model that is truly this weak)"
        if self.accuracy <= self.chance_level:
            return (
                f"the Keras model itself is at chance level on these inputs (accuracy {self.accuracy:.4f}, chance "
                f"{self.chance_level:.4f}) with inputs {self.contract.describe()}: {fix}"
            )
        if self.trained_accuracy is not None and self.accuracy < self.trained_accuracy - TRAINED_GAP:
            return (
                f"the Keras model scores {self.accuracy:.4f} on these inputs, far below the {self.trained_accuracy:.4f}"
                f" it was trained to (metrics.json), with inputs {self.contract.describe()}: {fix}"
            )
        return None

    @cached_property
    def self_check_images(self) -> list[int]:
        """The first test image of each class that Keras classifies correctly with p >= 0.99, at most
        SELF_CHECK_IMAGES: far from any decision boundary, so that every correct runtime, on any CPU, gives the
        same answer and nearly the same probabilities."""
        top, sure = self.probabilities.argmax(1), self.probabilities.max(1) >= 0.99
        chosen = []
        for c in range(self.probabilities.shape[1]):
            hits = np.flatnonzero((self.labels == c) & (top == c) & sure)
            if len(hits):
                chosen.append(int(hits[0]))
        return sorted(chosen[:SELF_CHECK_IMAGES])

    def self_check_inputs(self) -> dict[str, Any]:
        """The self-check images as an app gets them: uint8 pixels (the model inputs made back into pixels by the
        input contract), base64, with their shape."""
        pixels = self.contract.pixels(self.images[self.self_check_images])
        return {
            "test_images": self.self_check_images,
            "shape": list(pixels.shape),
            "pixels_uint8_base64": base64.b64encode(pixels.tobytes()).decode(),
        }

    def run_native(self, path: Path, sha256: str, run: Callable[[], np.ndarray]) -> np.ndarray:
        """`path`'s probabilities on the images in its desktop runtime (`run`), computed once per file content."""
        if sha256 not in self.native_runs:
            self.native_runs[sha256] = run()
        return self.native_runs[sha256]


SELF_CHECK_IMAGES = 10
# how far below its own test accuracy at training (metrics.json) the reference may score before the inputs are
# suspect: more than a part of the split can explain, far less than a wrong contract costs
TRAINED_GAP = 0.10
# how far a correct runtime on another machine may land from this file's own outputs here: float32 kernels differ
# in summation order; reduced-precision ones by a quantization step or two
SELF_CHECK_TOLERANCE = {"float32": 1e-4}
SELF_CHECK_DEFAULT_TOLERANCE = 0.02


def self_check_of(record: ArtifactRecord, probabilities: np.ndarray, ref: Reference) -> dict[str, Any]:
    """What an app checks at start-up: this file's probabilities on the self-check images (the manifest's
    `self_check` inputs), the same top class, and every probability within the tolerance."""
    return {
        "expected": [[round(float(p), 6) for p in probabilities[i]] for i in ref.self_check_images],
        "tolerance": SELF_CHECK_TOLERANCE.get(record.variant, SELF_CHECK_DEFAULT_TOLERANCE),
        "rule": "the same top class as expected, and every probability within tolerance of it",
    }


def compare(record: ArtifactRecord, probabilities: np.ndarray, ref: Reference) -> ParityRecord:
    """Score one artifact's probabilities against the reference and apply its variant's criteria."""
    predicted = probabilities.argmax(1)
    accuracy = float(np.mean(predicted == ref.labels))
    differs = predicted != ref.probabilities.argmax(1)
    disagreements = int(np.sum(differs))
    confident = ref.probabilities.max(1) >= CONFIDENT
    result = ParityRecord(
        file=record.file,
        format=record.format,
        variant=record.variant,
        runtime=record.runtime,
        images=len(ref.labels),
        accuracy=round(accuracy, 6),
        reference_accuracy=round(ref.accuracy, 6),
        accuracy_delta_pp=round((accuracy - ref.accuracy) * 100, 4),
        agreement=round(1 - disagreements / len(ref.labels), 6),
        disagreements=disagreements,
        max_abs_diff=float(np.max(np.abs(probabilities - ref.probabilities))),
        confident_images=int(confident.sum()),
        confident_agreement=round(1 - float(differs[confident].mean()), 6) if confident.any() else None,
    )
    c, widened = on_split(criteria_of(record), len(ref.labels), int(confident.sum()))
    result.criteria = describe_criteria(c) + widened
    if "min_agreement" in c and result.agreement < c["min_agreement"]:
        result.problems.append(f"agreement {result.agreement:.4%} < {c['min_agreement']:.2%}")
    wanted = c.get("min_confident_agreement")
    if wanted is not None and result.confident_agreement is not None and result.confident_agreement < wanted:
        result.problems.append(
            f"agreement {result.confident_agreement:.4%} < {wanted:.2%} on the "
            f"{result.confident_images:,} images where Keras is confident"
        )
    if "max_abs_diff" in c and result.max_abs_diff > c["max_abs_diff"]:
        result.problems.append(f"max |diff| {result.max_abs_diff:.2e} > {c['max_abs_diff']:g}")
    if "max_accuracy_loss_pp" in c and -result.accuracy_delta_pp > c["max_accuracy_loss_pp"]:
        result.problems.append(f"accuracy loss {-result.accuracy_delta_pp:.2f} pp > {c['max_accuracy_loss_pp']:g} pp")
    if ref.at_chance is not None:
        if ref.allow_chance:
            result.criteria += "; the Keras model is at chance level (accepted: --allow-chance)"
        else:
            result.problems.append(ref.at_chance)
    result.passed = not result.problems
    return result


def score(record: ArtifactRecord, probabilities: np.ndarray | None, ref: Reference) -> ParityRecord:
    """`compare` where the artifact gave probabilities; an empty record (to carry its problems) where it did not."""
    if probabilities is not None:
        return compare(record, probabilities, ref)
    return ParityRecord(
        file=record.file,
        format=record.format,
        variant=record.variant,
        runtime=record.runtime,
        images=len(ref.labels),
        criteria=describe_criteria(criteria_of(record)),
    )
