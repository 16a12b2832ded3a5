"""`toolkit verify --arch arm64`: the phone and edge files on ARM64 kernels, under emulation, beside x86.

The files are run in the ARM64 userland (`userland`) by the toolkit's own runners (`inside`), up to `jobs` at once,
and then go through the one verification loop (`verify.verify_artifact`) with a scorer that hands it the ARM64
probabilities: they are scored against the Keras model with the ordinary pass criteria, and, with the same
criteria, against the same file on x86 (the desktop runtime here). The result is a separate entry per file in
the manifest (`architectures.arm64`); it never replaces the x86 certificate.

Images are chosen honestly: an int8 file runs on the whole test split; a float file, several times slower under
emulation, on a stated, seeded, class-balanced subset (a spot check);
`--limit` takes that subset for every file. Emulated time is never a phone's time, so no latency is recorded.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import artifacts, manifest, runtimes, verify, versions
from toolkit.arm64 import cpus, inside
from toolkit.arm64 import userland as ul
from toolkit.data import Dataset
from toolkit.errors import ToolkitError
from toolkit.loader import Loader
from toolkit.manifest import ArtifactRecord
from toolkit.parity import Reference, compare
from toolkit.workspace import Workspace

ARCH = "arm64"
FLOAT_IMAGES = 2000  # a float file's spot check by default
SEED = 0
BATCH = 256  # images per call of a file that takes a batch (a fixed-batch web model runs image by image)
X86 = "x86_64"


def balanced(labels: np.ndarray, count: int, seed: int = SEED) -> np.ndarray:
    """A seeded, class-balanced subset of `count` test images (as equal a share of each class as there are), in
    split order; the whole split where `count` covers it."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng, classes = np.random.default_rng(seed), np.unique(labels)
    share, extra = divmod(count, len(classes))
    chosen = [
        rng.choice(np.flatnonzero(labels == c), min(share + (i < extra), int(np.sum(labels == c))), replace=False)
        for i, c in enumerate(classes)
    ]
    return np.sort(np.concatenate(chosen))


def images_for(record: ArtifactRecord, limit: int | None, split: int) -> int:
    """How many test images a file runs on: `limit` where given, else the whole split for an int8 file and
    FLOAT_IMAGES for a float one."""
    if limit is not None:
        return min(limit, split)
    return split if record.variant == "int8" else min(FLOAT_IMAGES, split)


def part_of(ref: Reference, chosen: np.ndarray) -> Reference:
    """The reference on the chosen images only (the same Keras outputs, not recomputed)."""
    if len(chosen) == len(ref.labels):
        return ref
    return Reference(
        ref.images[chosen],
        ref.labels[chosen],
        ref.probabilities[chosen],
        contract=ref.contract,
        allow_chance=ref.allow_chance,
        trained_accuracy=ref.trained_accuracy,
    )


def sample_note(images: int, split: int) -> str:
    """The images a result is on, as the card and the manifest state it."""
    if images == split:
        return f"the whole test split ({split:,} images)"
    return f"a spot check: a seeded (seed {SEED}), class-balanced subset of {images:,} of the {split:,} test images"


class Arm64Scorer:
    """Hands the verification loop each file's probabilities from the ARM64 userland (run beforehand by `run_all`),
    with the same file on x86 as the cross-check, judged by the same criteria."""

    def __init__(self, loader: Loader, userland: ul.Userland, cpu: str, folder: Path, chroot: list[str]):
        self.loader, self.userland, self.cpu, self.folder, self.chroot = loader, userland, cpu, folder, chroot
        self.about = ul.describe(userland, cpu, folder, chroot)
        key = ", ".join(self.about["key_features"]) or "no dot product, fp16 or i8mm"
        inner = self.about["versions"]
        self.where = (
            f"arm64 ({self.about['machine']}) emulated by QEMU {self.about['qemu']}, -cpu {cpu} ({key}), Debian "
            f"{ul.SUITE}; onnxruntime {inner['onnxruntime']}, ai-edge-litert {inner['ai-edge-litert']}"
        )
        self.outputs: dict[tuple[str, int], np.ndarray | str] = {}

    def run_all(self, plans: list[tuple[ArtifactRecord, Reference]], jobs: int) -> None:
        """Every file that is still the bytes its record names, on its images, up to `jobs` processes at once."""
        todo = {}
        for record, ref in plans:
            path = manifest.artifact_path(self.loader.workspace, record.file)
            if path.is_file() and self.loader.workspace.sha256(path) == record.sha256:
                todo.setdefault((record.sha256, len(ref.labels)), (record, ref, path))
        for n in {n for _, n in todo}:
            ref = next(r for (_, m), (_, r, _) in todo.items() if m == n)
            np.save(self.folder / f"images-{n}.npy", ref.images)
        self.loader.say(f"running {len(todo)} file(s) on ARM64 ({self.cpu}), {jobs} at a time")
        order = sorted(todo, key=lambda k: -k[1] * (1 if todo[k][0].variant == "int8" else 8))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for key, output in zip(order, pool.map(lambda k: self.run_one(*todo[k]), order)):
                self.outputs[key] = output

    def run_one(self, record: ArtifactRecord, ref: Reference, path: Path) -> np.ndarray | str:
        """One file in the userland; its probabilities, or the one line that says why there are none."""
        name = f"{record.sha256[:16]}-{len(ref.labels)}"
        shutil.copyfile(path, self.folder / f"{name}{path.suffix}")
        runtime = artifacts.NATIVE_BY_SUFFIX[path.suffix.lower()]
        request = {"file": f"{name}{path.suffix}", "runtime": runtime, "images": f"images-{len(ref.labels)}.npy"}
        request.update(batch=BATCH, out=f"{name}.npy", about=f"{name}.about.json")
        try:
            about = ul.run_inside(self.chroot, self.cpu, self.folder, request, name)
        except ToolkitError as e:
            return str(e)
        if about.get("machine") != "aarch64":  # never an x86 result passed off as an ARM64 one
            return f"ran on {about.get('machine')!r}, not aarch64: not an ARM64 result"
        self.loader.say(f"{record.file}: {len(ref.labels):,} images on ARM64 ({self.cpu})")
        return np.load(self.folder / request["out"])

    def score(self, record: ArtifactRecord, ref: Reference) -> verify.Scored:
        output = self.outputs.get((record.sha256, len(ref.labels)), "not run on ARM64")
        if isinstance(output, str):
            return verify.Scored(None, [output])
        path = self.loader.workspace / record.file
        x86 = ref.run_native(path, record.sha256, lambda: runtimes.predict(runtimes.load(path), ref.images))
        on_x86 = Reference(ref.images, ref.labels, x86, contract=ref.contract, allow_chance=True)
        against = compare(record, output, on_x86)  # the same criteria, with the x86 outputs as the reference
        runtime = artifacts.NATIVE_BY_SUFFIX[path.suffix.lower()]
        check = verify.cross_check(f"{runtime} on {X86}", record.file, output, x86)
        check.update(against=X86, accuracy_delta_pp=against.accuracy_delta_pp, criteria=against.criteria)
        check.update(passed=against.passed, problems=against.problems)
        return verify.Scored(output, [f"against {X86}: {p}" for p in against.problems], check)

    def emulation(self, images: int, split: int) -> dict[str, Any]:
        """What ran, for the manifest: architecture, emulated CPU and its features, QEMU, versions inside and on
        x86, the images, and that the time is emulated."""
        inner = self.about["versions"]
        host = versions.package_versions(inside.RUNTIME_PACKAGES)
        litert = f"LiteRT {inner['ai-edge-litert']} inside (the newest with a Linux aarch64 wheel)"
        return {
            "arch": ARCH,
            "machine": self.about["machine"],
            "cpu": self.cpu,
            "cpu_description": self.about["cpu_description"],
            "features": self.about["features"],
            "key_features": self.about["key_features"],
            "qemu": self.about["qemu"],
            "userland": f"Debian {ul.SUITE} arm64 (debootstrap), Python {inner['python']}",
            "versions_inside": inner,
            "versions_x86": host,
            "litert_versions": f"{litert}; {host['ai-edge-litert']} on x86",
            "images_chosen": sample_note(images, split),
            "timing": "emulated: not a phone's time, so no latency is recorded",
        }


def phone_records(workspace: Workspace, files: list[str] | None) -> list[ArtifactRecord]:
    """The files a phone or an edge board runs: every `.tflite`, `.onnx` and `.ort` of the phone formats."""
    kinds = (artifacts.NATIVE, artifacts.MICRO, artifacts.BROWSER)
    chosen = [
        r
        for r in verify.select_records(workspace, files, kinds)
        if r.format in artifacts.PHONE_FORMATS and Path(r.file).suffix.lower() in artifacts.PHONE_SUFFIXES
    ]
    if not chosen:
        raise ToolkitError(f"{workspace.manifest_path}: no phone files (.tflite, .onnx, .ort) to verify on ARM64")
    return chosen


def check(
    workspace: str | Path | Workspace,
    dataset: Dataset,
    cpu: str = cpus.DEFAULT_CPU,
    files: list[str] | None = None,
    limit: int | None = None,
    jobs: int = 1,
    progress=None,
    allow_chance: bool = False,
    folder: str | Path | None = None,
) -> verify.Verification:
    """Verify the phone files on ARM64 under emulation on `cpu`, through the one verification loop, and record
    the results in the manifest beside (never over) the x86 ones."""
    if cpu not in cpus.CPUS:
        raise ToolkitError(f"--cpu {cpu}: not one of {', '.join(cpus.CPUS)}")
    workspace, say = Workspace.of(workspace), progress or (lambda msg: None)
    userland = ul.Userland(Path(folder) if folder else ul.default_folder()).require()
    records = phone_records(workspace, files)
    verify.check_same_data(workspace, dataset)
    split = len(dataset.y_test)
    say(f"Keras reference on {split:,} test images")
    outcome, entries = verify.Verification([], arch=ARCH), {}
    with Loader(workspace, 1, say) as loader:
        full = verify.reference(workspace, dataset, None, loader, allow_chance)
        plans = [(r, part_of(full, balanced(full.labels, images_for(r, limit, split)))) for r in records]
        with ul.locked(userland), ul.run_folder(userland) as run, ul.mounted(userland, run, cpu) as chroot:
            scorer = Arm64Scorer(loader, userland, cpu, run, chroot)
            scorer.run_all(plans, jobs)
        for record, ref in plans:
            result = verify.verify_artifact(workspace, record, ref, scorer)
            result.data_sha256 = dataset.sha256
            result.runtime = artifacts.NATIVE_BY_SUFFIX[Path(record.file).suffix.lower()]  # what ran it there
            outcome.results.append(result)
            entries[record.file] = {**result.to_dict(), "emulation": scorer.emulation(len(ref.labels), split)}
            for name in ("self_check", "seconds"):  # an app checks the x86 certificate's; emulated time is no figure
                entries[record.file].pop(name)
    manifest.put_architecture(workspace, ARCH, entries, split)
    outcome.notes.append(f"ran on {scorer.where}; emulated, so no time is a phone's")
    return outcome
