"""ARM64 under emulation (`toolkit arm64 setup`, `toolkit verify --arch arm64`): the images chosen, the CPUs'
features, the mirror, the manifest entry beside the x86 certificate, the card, clean one-line errors, and a run
that fell back to the host's Python refused. The slow tier sets the userland up (reused from the cache) and runs
the committed release's files and the two stand-alone examples in it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO
from tests.helpers import one_line_error
from toolkit import card, manifest
from toolkit.arm64 import cpus, scorer
from toolkit.arm64 import userland as ul
from toolkit.cli import app
from toolkit.errors import ToolkitError

RELEASE = REPO / "exported"
runner = CliRunner()


def test_a_spot_check_is_seeded_and_class_balanced():
    labels = np.repeat(np.arange(10), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    chosen = scorer.balanced(labels, 2000)
    assert len(chosen) == 2000 and np.all(np.bincount(labels[chosen]) == 200)
    assert np.array_equal(chosen, scorer.balanced(labels, 2000)) and np.all(np.diff(chosen) > 0)
    assert not np.array_equal(chosen, scorer.balanced(labels, 2000, seed=1))
    assert np.array_equal(scorer.balanced(labels, 10**6), np.arange(len(labels)))  # the whole split, in order


def test_int8_files_run_on_the_whole_split_and_float_files_on_a_spot_check():
    records = {r.variant: r for r in manifest.records(RELEASE)}
    assert scorer.images_for(records["int8"], None, 10_000) == 10_000
    assert scorer.images_for(records["float32"], None, 10_000) == scorer.FLOAT_IMAGES
    assert scorer.images_for(records["int8"], 300, 10_000) == 300
    assert "spot check" in scorer.sample_note(300, 10_000) and "whole" in scorer.sample_note(10_000, 10_000)


def test_features_come_from_the_hwcap_bits_and_make_an_arm64_cpuinfo():
    bits = 1 << cpus.HWCAP.index("asimd") | 1 << cpus.HWCAP.index("asimddp")
    assert cpus.names_of(bits, cpus.HWCAP) == ["asimd", "asimddp"]
    assert cpus.names_of(1 << 13, cpus.HWCAP2) == ["i8mm"]
    text = cpus.cpuinfo_text("neoverse-n1", ["fp", "asimd", "asimddp"], 2)
    assert text.count("processor\t:") == 2 and "Features\t: fp asimd asimddp" in text and "CPU part\t: 0xd0c" in text
    assert cpus.key_features(["fp", "i8mm", "asimddp"]) == ["asimddp", "i8mm"]


def test_debootstrap_uses_apts_own_mirror(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert ul.mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert ul.mirror(tmp_path) == "http://old.example/debian"
    assert ul.mirror(tmp_path / "none") == "http://deb.debian.org/debian"


def test_a_missing_prerequisite_is_one_line_that_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ul.shutil, "which", lambda tool: None if tool == "qemu-aarch64-static" else "/bin/true")
    result = runner.invoke(app, ["arm64", "setup"])
    one_line_error(result, "qemu-aarch64-static not found", "apt-get install qemu-user-static")


def test_verify_without_a_userland_or_with_bad_options_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["verify", "--arch", "arm64", "--dir", str(RELEASE)])
    one_line_error(result, "no ARM64 userland", "toolkit arm64 setup")
    one_line_error(runner.invoke(app, ["verify", "--arch", "riscv64", "--dir", str(RELEASE)]), "--arch riscv64")
    result = runner.invoke(app, ["verify", "--arch", "arm64", "--cpu", "m1", "--dir", str(RELEASE)])
    one_line_error(result, "--cpu m1", "neoverse-n1")
    assert runner.invoke(app, ["verify", "--jobs", "2", "--dir", str(RELEASE)]).exit_code == 2


def _entry(images: int, passed: bool = True) -> dict:
    return {"images": images, "passed": passed, "problems": [], "accuracy": 0.99, "agreement": 1.0}


def test_the_arm64_entry_sits_beside_the_x86_certificate(tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(RELEASE, ws, ignore=shutil.ignore_patterns("web", "report", "quantization"))
    name = "mnist_cnn.int8.tflite"
    before = manifest.read(ws)["artifacts"][name]["verification"]
    manifest.put_architecture(ws, "arm64", {name: _entry(10_000)}, 10_000)
    manifest.put_architecture(ws, "arm64", {name: _entry(500, passed=False)}, 10_000)  # fewer images: beside it
    entry = manifest.read(ws)["artifacts"][name]
    assert entry["verification"] == before
    held = entry["architectures"]["arm64"]
    assert held["verification"]["images"] == 10_000 and held["verification"]["full_split"]
    assert held["spot_check"]["images"] == 500 and not held["spot_check"]["passed"]
    record = next(r for r in manifest.records(ws) if r.file == name)
    assert record.architectures["arm64"]["verification"]["passed"]
    bad = {**entry, "architectures": {"arm64": {"verification": {"images": "all"}}}}
    with pytest.raises(TypeError, match="architectures.arm64.verification.images"):
        manifest.ArtifactRecord.from_dict(bad)


def test_the_card_and_the_benchmark_summary_show_it_without_a_time(tmp_path):
    from toolkit.bench.benchmark import arm64_rows
    from toolkit.bench.summary import arm64_lines

    ws = tmp_path / "ws"
    shutil.copytree(RELEASE, ws, ignore=shutil.ignore_patterns("web", "report", "quantization"))
    emulation = {"cpu": "neoverse-n1", "key_features": ["asimddp"], "machine": "aarch64", "images_chosen": "a subset"}
    result = {**_entry(2000), "runtime": "litert", "accuracy_delta_pp": 0.0, "max_abs_diff": 1e-6}
    result |= {"emulation": emulation, "cross_check": {"agreement": 1.0, "max_abs_diff": 0.0}}
    manifest.put_architecture(ws, "arm64", {"mnist_cnn.float32.tflite": result}, 10_000)
    text = card.model_card(ws, None)
    section = text.split("## On ARM64 kernels (emulated)")[1].split("\n## ")[0]
    assert "| `mnist_cnn.float32.tflite` | litert | 2,000 (spot check) | 0.9900 |" in section
    assert "`-cpu neoverse-n1`" in section and "no latency" in section and " ms" not in section
    lines = "\n".join(arm64_lines(arm64_rows(ws)))
    assert "| mnist_cnn.float32.tflite | litert | neoverse-n1 (asimddp) | 2,000 (spot check) | 100.00% |" in lines
    assert "not timed" in lines and " ms" not in lines


def _host_python(chroot, cpu, args, timeout):
    """What a broken emulator set-up would do: run the inside module with the host's own Python."""
    folder = chroot[-1]
    args = [a.replace(ul.INSIDE, folder) for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture()
def on_the_host(monkeypatch, tmp_path):
    """The userland's machinery replaced by the host: no root, no QEMU, the host's Python."""

    @contextlib.contextmanager
    def mounted(userland, folder, cpu=None):
        yield ["host", str(folder)]

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ul.Userland, "require", lambda self: self)
    monkeypatch.setattr(ul, "mounted", mounted)
    monkeypatch.setattr(ul, "run_python", _host_python)
    monkeypatch.setattr(ul, "qemu_version", lambda userland: "none")
    ws = tmp_path / "ws"
    shutil.copytree(RELEASE, ws, ignore=shutil.ignore_patterns("web", "report", "quantization"))
    return ws


def test_a_run_that_fell_back_to_the_hosts_python_is_refused(on_the_host, mnist):
    before = manifest.read(on_the_host)["artifacts"]["mnist_cnn.int8.tflite"].get("architectures")
    with pytest.raises(ToolkitError, match="not aarch64: it was not emulated"):
        scorer.check(on_the_host, mnist, files=["mnist_cnn.int8.tflite"], limit=50)
    assert manifest.read(on_the_host)["artifacts"]["mnist_cnn.int8.tflite"].get("architectures") == before


def test_each_file_must_have_run_on_aarch64(on_the_host, mnist, monkeypatch):
    about = {"machine": "aarch64", "features": ["asimddp"], "key_features": ["asimddp"], "qemu": "none"}
    about |= {"versions": {"python": "3.11.2", "onnxruntime": "x", "ai-edge-litert": "1.4.0", "numpy": "x"}}
    monkeypatch.setattr(ul, "describe", lambda *a: {**about, "cpu": "neoverse-n1", "cpu_description": "test"})
    outcome = scorer.check(on_the_host, mnist, files=["mnist_cnn.int8.tflite"], limit=50)
    result = next(r for r in outcome.results if r.file == "mnist_cnn.int8.tflite")
    assert not result.passed and "not an ARM64 result" in result.problems[0]
    held = manifest.read(on_the_host)["artifacts"]["mnist_cnn.int8.tflite"]["architectures"]["arm64"]
    failed = held.get("spot_check") or held["verification"]  # beside the release's result on more images, if any
    assert not failed["passed"] and failed["accuracy"] is None and failed["images"] == 50


# --------------------------------------------------------------------------- the userland itself (slow)


def _can_be_root() -> bool:
    return os.geteuid() == 0 or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


arm64_userland = pytest.mark.skipif(not _can_be_root(), reason="the ARM64 userland needs root or passwordless sudo")


@pytest.fixture(scope="module")
def userland():
    """The userland, made by `toolkit arm64 setup` (reused from the cache where an earlier run left it)."""
    result = runner.invoke(app, ["arm64", "setup", "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
@arm64_userland
def test_setup_is_idempotent_and_runs_aarch64(userland):
    again = ul.setup()
    assert again.steps_run == [] and set(again.steps_reused) == {"first-stage", "second-stage", "venv"}
    inside = userland["inside"]
    assert inside["machine"] == "aarch64" and inside["cpu"] == cpus.DEFAULT_CPU
    assert "asimddp" in inside["features"] and "i8mm" not in inside["features"]
    assert inside["versions"]["onnxruntime"] == "1.32.0" and inside["versions"]["ai-edge-litert"] == "1.4.0"
    folder = ul.Userland(ul.default_folder())
    assert "asimddp" not in ul.describe(folder, "cortex-a53")["features"]
    assert "i8mm" in ul.describe(folder, "max")["features"]
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(folder.root) in line]


@pytest.mark.slow
@arm64_userland
def test_the_release_files_verified_on_arm64(userland, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(RELEASE, ws, ignore=shutil.ignore_patterns("report", "quantization"))
    x86 = {name: a["verification"] for name, a in manifest.read(ws)["artifacts"].items()}
    args = ["verify", "--arch", "arm64", "--limit", "100", "--jobs", "2", "--dir", str(ws), "--json", "-"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    artifacts = manifest.read(ws)["artifacts"]
    phone = [n for n, a in artifacts.items() if a["format"] != "recipes" and n.endswith((".tflite", ".onnx", ".ort"))]
    phone = [n for n in phone if artifacts[n]["format"] != "vela"]
    assert len(phone) == 15 and {r["file"] for r in json.loads(result.stdout)["results"]} == set(phone)
    for name in phone:
        held = artifacts[name]["architectures"]["arm64"]
        v = held.get("spot_check") or held["verification"]  # beside the release's ARM64 result on more images
        assert artifacts[name]["verification"] == x86[name], name  # never replaces the x86 certificate
        assert v["passed"] and v["images"] == 100 and not v["full_split"] and v["cross_check"]["against"] == "x86_64", (
            name
        )
        assert v["emulation"]["machine"] == "aarch64" and "asimddp" in v["emulation"]["features"], name
        assert v["emulation"]["versions_inside"]["ai-edge-litert"] == "1.4.0" and "seconds" not in v, name
    assert "## On ARM64 kernels (emulated)" in card.model_card(ws, None)


@pytest.mark.slow
@arm64_userland
@pytest.mark.parametrize(
    "app_file, model", [("litert_app.py", "mnist_cnn.int8.tflite"), ("onnx_app.py", "mnist_cnn.int8.ort")]
)
def test_the_examples_pass_their_self_check_on_arm64(userland, app_file, model):
    folder = ul.Userland(ul.default_folder())
    digits = sorted((REPO / "examples" / "digits").glob("*.pgm"))
    with ul.locked(folder), ul.run_folder(folder) as run, ul.mounted(folder, run, cpus.DEFAULT_CPU) as chroot:
        shutil.copy(REPO / "examples" / app_file, run / app_file)
        shutil.copytree(RELEASE, run / "release", ignore=shutil.ignore_patterns("report", "quantization", "web"))
        shutil.copytree(REPO / "examples" / "digits", run / "digits")
        shutil.rmtree(run / "src")  # the example stands alone: no toolkit on its path
        machine = ul.run_python(chroot, cpus.DEFAULT_CPU, ["-c", "import platform; print(platform.machine())"], 120)
        images = [f"{ul.INSIDE}/digits/{p.name}" for p in digits]
        args = [f"{ul.INSIDE}/{app_file}", f"{ul.INSIDE}/release/manifest.json", model, *images]
        proc = ul.run_python(chroot, cpus.DEFAULT_CPU, args, 600)
    assert machine.stdout.strip() == "aarch64"
    assert proc.returncode == 0 and "self-check: 10 images as expected" in proc.stderr, proc.stderr
    got = dict(re.findall(r"label(\d)\.pgm: (\d) ", proc.stdout))
    assert len(got) == 10 and all(k == v for k, v in got.items()), proc.stdout
