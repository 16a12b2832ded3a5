"""The card's section on other instruction sets: each phone file's verification on ARM64 kernels under emulation
(`toolkit verify --arch arm64`), against Keras and against the same file on x86, with what ran it (the emulated
CPU and its features, QEMU, the runtimes inside) and how the images were chosen. It sits beside the x86
certificate above it, never in its place, and says that emulated time is no phone's time."""

from __future__ import annotations

from typing import Any

from toolkit.manifest import ArtifactRecord, architecture_results
from toolkit.tables import markdown_table


def row(record: ArtifactRecord, v: dict[str, Any]) -> list[str]:
    """One file's row: images (spot check or whole split), then against Keras, then against x86."""
    x86 = v.get("cross_check") or {}
    images = f"{v['images']:,}" + ("" if v.get("full_split") else " (spot check)")
    if v.get("accuracy") is None:
        return [f"`{record.file}`", v.get("runtime", ""), images, "-", "-", "-", "-", "-", "FAIL"]
    return [
        f"`{record.file}`",
        v["runtime"],
        images,
        f"{v['accuracy']:.4f}",
        f"{v['accuracy_delta_pp']:+.2f} pp",
        f"{v['agreement']:.2%}",
        f"{v['max_abs_diff']:.1e}",
        f"{x86['agreement']:.2%}" if "agreement" in x86 else "-",
        f"{x86['max_abs_diff']:.1e}" if "max_abs_diff" in x86 else "-",
        "pass" if v["passed"] else "FAIL",
    ]


def arm64(records: list[ArtifactRecord]) -> list[str]:
    """The ARM64 results, where `toolkit verify --arch arm64` recorded some."""
    found = architecture_results(records, "arm64")
    if not found:
        return []
    columns = ["file", "runtime", "images", "accuracy", "Δ vs Keras", "agreement with Keras", "max abs Δp"]
    columns += ["agreement with x86", "max abs Δp vs x86", "verified"]
    runs = sorted({_ran_on(v.get("emulation") or {}) for _, v in found})
    spot = next((v["emulation"]["images_chosen"] for _, v in found if not v.get("full_split")), None)
    failed = [f"- `{r.file}`: {'; '.join(v['problems'])}" for r, v in found if v.get("problems")]
    return [
        "",
        "## On ARM64 kernels (emulated)",
        "",
        "`toolkit verify --arch arm64` ran each phone file on the phone's instruction set, in a Debian arm64 userland "
        "under QEMU's user-mode emulation, with the toolkit's own runners, and scored it against the Keras model and "
        "against the same file on x86 with the same pass criteria. These results sit beside the x86 ones above, "
        "never in their place. Emulated time is not a phone's time, so no latency is given. No GPU or NPU delegate "
        "ran.",
        "",
        *[f"Ran on: {where}" for where in runs],
        "",
        *(
            [f"Rows marked spot check: {spot.removeprefix('a spot check: ')}; the others: the whole split.", ""]
            if spot
            else []
        ),
        *markdown_table(columns, [row(r, v) for r, v in found]),
        *(["", "Problems:", "", *failed] if failed else []),
    ]


def _ran_on(e: dict[str, Any]) -> str:
    """What ran the files: the emulated CPU and its features, QEMU, the userland and the runtimes' versions."""
    if not e:
        return "(not recorded)"
    inside = e.get("versions_inside", {})
    return (
        f"`-cpu {e.get('cpu')}` ({e.get('cpu_description')}; features from the auxiliary vector: "
        f"{', '.join(e.get('key_features', [])) or 'baseline NEON only'}), machine `{e.get('machine')}`, QEMU "
        f"{e.get('qemu')}, {e.get('userland')}; onnxruntime {inside.get('onnxruntime')}, numpy "
        f"{inside.get('numpy')}; {e.get('litert_versions')}."
    )
