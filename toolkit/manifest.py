"""`DIR/manifest.json`: everything an app developer needs to use each artifact, and how it was made.

The file is rewritten atomically under an exclusive lock (`DIR/.manifest.lock`), so two toolkit processes on
the same workspace merge their changes instead of losing one; re-exporting one variant keeps the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.artifacts import BROWSER, TensorSpec, kind_of
from toolkit.contract import InputContract
from toolkit.errors import ToolkitError
from toolkit.workspace import Workspace

MANIFEST_FILE = ws.MANIFEST_FILE
SCHEMA_VERSION = ws.SCHEMA_VERSION

PREPROCESSING = {
    "input": "grey image, white digit on black background, 28x28 pixels",
    "scaling": "float32 = uint8 pixel / 255, range [0, 1]",
    "layout": "NHWC: (batch, 28, 28, 1)",
    "int8_input": "q = clip(round(x / scale) + zero_point, -128, 127) with the input's scale and zero_point",
    "int8_output": "probability = (q - zero_point) * scale with the output's scale and zero_point",
    "digit_centering": "as in MNIST: the digit fitted into 20x20, centred by its centre of mass in 28x28",
}


@dataclass
class ArtifactRecord:
    file: str
    format: str
    variant: str
    runtime: str
    bytes: int
    sha256: str
    input: TensorSpec
    output: TensorSpec
    made_with: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None
    spot_check: dict[str, Any] | None = None  # a later check on part of the test split (verify --limit)
    # checks on other instruction sets, by architecture (verify --arch arm64: {"verification", "spot_check"}), kept
    # beside the certificate above, never over it
    architectures: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactRecord:
        """A record from manifest JSON, whose types are checked: a manifest is input from whoever shipped it."""
        if not isinstance(d, dict):
            raise TypeError(f"an entry is a {type(d).__name__}, not an object")
        d = dict(d)
        for name in ("input", "output"):
            spec = d.get(name)
            if (
                not isinstance(spec, dict)
                or not isinstance(spec.get("shape"), list)
                or not all(isinstance(x, int) for x in spec["shape"])
            ):
                raise TypeError(f"'{name}' is not a tensor description")
            d[name] = TensorSpec(**spec)
        record = cls(**d)
        _check_record(record)
        return record


def _check_record(record: ArtifactRecord) -> None:
    """Every field of a record that a command reads has its type and range (TypeError naming it otherwise)."""
    for name in ("file", "format", "variant", "runtime", "sha256"):
        if not isinstance(getattr(record, name), str) or not getattr(record, name):
            raise TypeError(f"'{name}' is not a non-empty string")
    if not _whole(record.bytes, 0, 1 << 40):
        raise TypeError("'bytes' is not a file size")
    if not re.fullmatch(r"[0-9a-f]{64}", record.sha256):
        raise TypeError("'sha256' is not a SHA-256 in hex")
    for name in ("input", "output"):
        _check_tensor(name, getattr(record, name))
    if (
        not isinstance(record.made_with, dict)
        or not isinstance(record.verification, dict | None)
        or not isinstance(record.spot_check, dict | None)
    ):
        raise TypeError("'made_with' or 'verification' is not an object")
    for name in ("verification", "spot_check"):
        _check_fields(name, getattr(record, name) or {}, VERIFICATION_FIELDS)
    _check_architectures(record.architectures)
    _check_fields("made_with", record.made_with, MADE_WITH_FIELDS)
    estimates = record.made_with.get("estimates")
    if estimates is not None and not isinstance(estimates, dict):
        raise TypeError("'made_with.estimates' is not an object")
    _check_fields("made_with.estimates", estimates or {}, ESTIMATE_FIELDS)


# The fields a command reads, and what each must be: one schema, checked when a manifest is read.
_NUMBER = (int, float)
VERIFICATION_FIELDS = {
    "images": (int, 0, 10**9),
    "accuracy": (_NUMBER, 0, 1),
    "reference_accuracy": (_NUMBER, 0, 1),
    "accuracy_delta_pp": (_NUMBER, -100, 100),
    "agreement": (_NUMBER, 0, 1),
    "max_abs_diff": (_NUMBER, 0, 1e6),
    "passed": (bool, None, None),
    "problems": (list, None, None),
}
MADE_WITH_FIELDS = {  # a recipe's accuracy_budget_pp is checked where it is used (verify.criteria_of: a default)
    "flash_bytes": (int, 0, 1 << 40),
    "arena_bytes_min": (int, 0, 1 << 31),
    "arena_bytes_recommended": (int, 0, 1 << 31),
    "header": (str, None, None),
    "source": (str, None, None),
}
ESTIMATE_FIELDS = {
    name: (_NUMBER, 0, 1e15)
    for name in ("inference_ms", "inferences_per_second", "clock_mhz", "cycles", "macs", "sram_bytes", "flash_bytes")
}


def _check_architectures(found: Any) -> None:
    """`architectures`: an object of architectures, each an object of verification results."""
    if found is None:
        return
    if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
        raise TypeError("'architectures' is not an object of objects")
    for arch, held in found.items():
        for name in ("verification", "spot_check"):
            result = held.get(name)
            if not isinstance(result, dict | None):
                raise TypeError(f"'architectures.{arch}.{name}' is not an object")
            _check_fields(f"architectures.{arch}.{name}", result or {}, VERIFICATION_FIELDS)


def _whole(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_fields(where: str, values: dict[str, Any], schema: dict[str, tuple]) -> None:
    """Each field of `schema` present in `values` has its type and lies in its range (None is "not measured")."""
    for name, (kind, low, high) in schema.items():
        value = values.get(name)
        if value is None:
            continue
        wrong = not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
        if not wrong and low is not None:
            wrong = not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value))
        if wrong:
            raise TypeError(
                f"'{where}.{name}' is {str(value)[:40]!r}, not a {getattr(kind, '__name__', 'number')}"
                + (f" from {low:g} to {high:g}" if low is not None else "")
            )


def _check_tensor(name: str, spec: TensorSpec) -> None:
    if not isinstance(spec.name, str) or not isinstance(spec.dtype, str) or not 1 <= len(spec.shape) <= 8:
        raise TypeError(f"'{name}' is not a tensor description")
    if not all(_whole(s, -1, 1 << 31) for s in spec.shape):
        raise TypeError(f"'{name}.shape' has a dimension out of range")
    q = spec.quantization
    if q is not None:
        scale, zero = (q.get("scale"), q.get("zero_point")) if isinstance(q, dict) else (None, None)
        if not (
            isinstance(scale, _NUMBER) and math.isfinite(scale) and scale > 0 and _whole(zero, -(1 << 31), 1 << 31)
        ):
            raise TypeError(f"'{name}.quantization' is not a scale and a zero point")


def check_header(m: dict[str, Any], path: Path) -> None:
    """The manifest's model-level fields that commands read: labels, preprocessing, model."""
    labels = m.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise ToolkitError(f"{path}: 'labels' is not a list of strings")
    preprocessing = m.get("preprocessing")
    if preprocessing is not None and (
        not isinstance(preprocessing, dict) or not all(isinstance(v, str) for v in preprocessing.values())
    ):
        raise ToolkitError(f"{path}: 'preprocessing' is not an object of strings")
    if m.get("input_contract") is not None:
        InputContract.from_dict(m["input_contract"], str(path))  # a damaged contract: one line naming the file
    data = m.get("data")
    if data is not None and (
        not isinstance(data, dict)
        or not all(isinstance(data.get(k), str | None) for k in ("dataset", "source", "data_dir", "sha256"))
        or not isinstance(data.get("image_size"), list | None)
        or not all(_whole(v, 1, 1 << 16) for v in data.get("image_size") or [])
    ):
        raise ToolkitError(f"{path}: 'data' is not a description of the data (dataset, data_dir, image_size)")
    model = m.get("model")
    if model is not None and not isinstance(model, dict):
        raise ToolkitError(f"{path}: 'model' is not an object")
    for name, kind in (("name", str), ("file", str), ("sha256", str), ("flops_per_image", int), ("classes", int)):
        value = (model or {}).get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ToolkitError(f"{path}: 'model.{name}' is not a {kind.__name__}")


file_sha256 = fsio.file_sha256  # the hashing itself; a command hashes through its Workspace (once per file)


def read(workspace: str | Path | Workspace) -> dict[str, Any]:
    """The manifest (checked: its header fields have their types), or an empty one where none was written yet.
    Read from disk once per command: the Workspace keeps it until another process changes the file."""
    w = Workspace.of(workspace)
    found = w.read_manifest()
    check_header(found, w.manifest_path)
    return found


def update(workspace: str | Path | Workspace, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write under the lock, written atomically; `change` edits the manifest dict in place."""
    w = Workspace.of(workspace)
    return w.update_manifest(change, check=lambda m: check_header(m, w.manifest_path))


def records(workspace: str | Path | Workspace) -> list[ArtifactRecord]:
    """Every artifact record, each checked: well-typed, and its file inside the workspace."""
    manifest = read(workspace)
    out = []
    for key, entry in manifest["artifacts"].items():
        try:
            record = ArtifactRecord.from_dict(entry)
        except (TypeError, KeyError, ValueError) as e:
            raise ToolkitError(f"{ws.manifest(workspace)}: malformed artifact entry {str(key)[:80]!r} ({e})") from None
        artifact_path(workspace, record.file)
        out.append(record)
    return out


def artifact_path(workspace: Path, file: str) -> Path:
    """The path of a manifest's `file` inside the workspace. A manifest comes from whoever shipped the folder:
    an absolute path, a `..` or a symlink that leads out of the workspace is refused, never read."""
    workspace = Path(workspace)
    where = ws.manifest(workspace)
    relative = Path(file)
    if "\0" in file or relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ToolkitError(f"{where}: artifact path {file[:200]!r} is not inside the workspace; refused")
    try:
        inside = (workspace / relative).resolve().is_relative_to(workspace.resolve())
    except (OSError, RuntimeError, ValueError):
        inside = False
    if not inside:
        raise ToolkitError(f"{where}: artifact path {file[:200]!r} leads out of the workspace; refused")
    return workspace / relative


NOT_CERTIFIED = "SHA-256 differs from the manifest: file changed since export, not certified"


def certified(workspace: str | Path | Workspace, record: ArtifactRecord) -> Path:
    """The record's file, after checking that it exists and is byte for byte what was exported and verified."""
    path = artifact_path(workspace, record.file)
    if not path.is_file():
        raise ToolkitError(f"{path}: file missing (listed in {ws.manifest(workspace)})")
    if Workspace.of(workspace).sha256(path) != record.sha256:
        raise ToolkitError(f"{path}: {NOT_CERTIFIED}")
    return path


def record_of(path: Path) -> ArtifactRecord | None:
    """The manifest record of a file given by path, checked against its checksum (ToolkitError if it changed, or if
    a symlink leads out of its workspace); None for a file that no manifest lists (it may run, labelled "not
    certified"). A workspace's model.keras is checked against the checksum the manifest records for it."""
    path = Path(path)
    target = path.resolve()
    for folder in Workspace.candidates(path):
        folder = Workspace(folder)
        if path.suffix == ".keras":
            model = read(folder).get("model")
            if isinstance(model, dict) and (folder / str(model.get("file", ""))).resolve() == target:
                if folder.sha256(path) != model.get("sha256"):
                    raise ToolkitError(f"{path}: differs from the model the manifest was exported from; not certified")
            continue
        for record in records(folder):  # refuses a manifest whose entries lead out of the workspace
            if artifact_path(folder, record.file).resolve() == target:
                certified(folder, record)
                return record
    return None


def header_of(path: Path) -> dict[str, Any]:
    """The manifest of the workspace a file belongs to (model.keras or an artifact, also under web/models/), or {}
    for a file in no workspace: what predict and report need of the model (labels, preprocessing)."""
    found = Workspace.containing(path)
    return read(found) if found is not None else {}


def put_artifacts(
    workspace: str | Path | Workspace, new: list[ArtifactRecord], header: dict[str, Any]
) -> dict[str, Any]:
    """Add or replace artifact entries (keyed by file name) and refresh the model-level fields."""

    def change(m: dict[str, Any]) -> None:
        before = m.get("model") if isinstance(m.get("model"), dict) else {}
        after = header.get("model") if isinstance(header.get("model"), dict) else {}
        if before.get("sha256") and after.get("sha256") and before["sha256"] != after["sha256"]:
            m["artifacts"] = {}  # another model's artifacts certify nothing about this one: they are dropped
        m.update(header)
        for rec in new:
            m["artifacts"][rec.file] = rec.to_dict()
        m["artifacts"] = dict(sorted(m["artifacts"].items()))

    return update(workspace, change)


def put_verification(
    workspace: str | Path | Workspace,
    results: dict[str, dict[str, Any]],
    full_split: bool = True,
    self_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record verification results. A check on fewer images (`--limit`) never replaces a result earned on more,
    passing or failing: it is kept beside it as `spot_check`, and both are shown. Only a file that changed or went
    missing loses its certificate at once (the certificate was for other bytes). `self_check`: the images whose
    expected outputs each result carries (a full-split check only)."""

    def change(m: dict[str, Any]) -> None:
        if self_check is not None:
            m["self_check"] = self_check
        for file, result in results.items():
            entry = m["artifacts"].get(file)
            if isinstance(entry, dict):
                place(entry, result, full_split)

    return update(workspace, change)


def place(holder: dict[str, Any], result: dict[str, Any], full_split: bool) -> None:
    """Put one result into `holder` (an artifact entry, or one architecture's results): as its `verification`, or
    as a `spot_check` beside it where the earlier verification was on more images and the file has not changed."""
    earlier = holder.get("verification")
    earlier_images = earlier.get("images") if isinstance(earlier, dict) else None
    more_before = isinstance(earlier_images, int) and earlier_images > result["images"]
    file_gone = any(p.startswith((NOT_CERTIFIED, "file missing")) for p in result.get("problems", []))
    if full_split or file_gone or not more_before:
        holder["verification"] = {**result, "full_split": full_split}
        holder.pop("spot_check", None)
    else:
        holder["spot_check"] = {**result, "full_split": False}


def put_architecture(
    workspace: str | Path | Workspace, arch: str, results: dict[str, dict[str, Any]], split: int
) -> dict[str, Any]:
    """Record verification results on another architecture (`verify --arch`) under each artifact's
    `architectures[arch]`, by the same rule as `put_verification` (a result on all `split` test images is a
    verification; one on fewer never replaces one on more); the artifact's own certificate is not touched."""

    def change(m: dict[str, Any]) -> None:
        for file, result in results.items():
            entry = m["artifacts"].get(file)
            if isinstance(entry, dict):
                held = entry.setdefault("architectures", {}).setdefault(arch, {})
                place(held, result, result["images"] == split)

    return update(workspace, change)


def architecture_results(records: list[ArtifactRecord], arch: str) -> list[tuple[ArtifactRecord, dict[str, Any]]]:
    """Each record's result on `arch` (`verify --arch`): its verification there, else its spot check there."""
    found = []
    for r in records:
        held = (r.architectures or {}).get(arch) or {}
        result = held.get("verification") or held.get("spot_check")
        if isinstance(result, dict) and result.get("images"):
            found.append((r, result))
    return found


def select(workspace: str | Path | Workspace, files: list[str] | None, kinds: tuple[str, ...]) -> list[ArtifactRecord]:
    """The manifest's artifacts whose runtime is of one of `kinds` (toolkit.artifacts: native, browser, micro), or
    those of them named in `files` (by manifest path, file name, or a path to the file)."""
    chosen = [r for r in records(workspace) if kind_of(r.runtime) in kinds]
    if not chosen:
        what = (
            "web artifacts (run `toolkit export --format web`)"
            if kinds == (BROWSER,)
            else "artifacts to verify; run `toolkit export` first"
        )
        raise ToolkitError(f"{ws.manifest(workspace)}: no {what}")
    if files is None:
        return chosen

    def named(record: ArtifactRecord, f: str) -> bool:
        return f in (record.file, Path(record.file).name) or Path(f).resolve() == (workspace / record.file).resolve()

    unknown = [f for f in files if not any(named(r, f) for r in chosen)]
    if unknown:
        kind = "web artifact" if kinds == (BROWSER,) else "native artifact"
        raise ToolkitError(f"{unknown[0]}: not a {kind} in {ws.manifest(workspace)}; export it first")
    return [r for r in chosen if any(named(r, f) for f in files)]
