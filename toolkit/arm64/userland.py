"""The ARM64 userland: Debian bookworm arm64 made by debootstrap, run by QEMU's user-mode emulator
(`qemu-aarch64-static`), with a virtual environment of PyPI's aarch64 wheels (ONNX Runtime, LiteRT, numpy).

Only Debian's packages and PyPI are used, and no runtime is built from source. It lives in the cache
(`toolkit.cache`, `arm64/`), is made once by `toolkit arm64 setup` (or `make arm64`) and reused: every step leaves a
stamp and is skipped when its stamp is there. Making it needs root or passwordless sudo (debootstrap, chroot,
mount); a missing tool is one line that says what to install. The wheels are downloaded on the host by its own pip
for the aarch64 platform and installed inside without a network, so the userland needs no DNS or proxy.

A run mounts `/proc`, `/sys`, an arm64-format `/proc/cpuinfo` for the emulated CPU (ONNX Runtime segfaults on the
host's x86 one under QEMU 7.2) and a host folder with the toolkit's source and the request at `/mnt/toolkit`, and
unmounts them all afterwards. The emulator is started explicitly with `-cpu`, so that a run never depends on
binfmt_misc and never silently runs the host's own Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit.arm64 import cpus
from toolkit.cache import cache_dir
from toolkit.errors import ToolkitError

SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")
WHEELS = ("onnxruntime==1.32.0", "ai-edge-litert==1.4.0", "numpy")  # ai-edge-litert 2.x has no Linux aarch64 wheel
AARCH64_TAGS = ("manylinux_2_17", "manylinux2014", "manylinux_2_28", "manylinux_2_34", "manylinux_2_36")
QEMU = "/usr/bin/qemu-aarch64-static"
VENV = "/opt/venv"
INSIDE = "/mnt/toolkit"  # where the host folder of a run (the toolkit's source, the request) appears inside
RUN_TIMEOUT = 3 * 3600.0  # one file on the whole split, emulated, with room to spare
INSTALL = "apt-get install qemu-user-static debootstrap binfmt-support"
PREREQUISITES = (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static"))
PREREQUISITES += (("update-binfmts", "binfmt-support"), ("chroot", "coreutils"), ("mount", "mount"))
Progress = Callable[[str], None]


def default_folder() -> Path:
    """Where the userland is kept: the toolkit's cache (TOOLKIT_CACHE_DIR, else ~/.cache/edge-toolkit), arm64/."""
    return cache_dir() / "arm64"


@dataclass
class Userland:
    """One userland in its cache folder: the root file system, the stamps of its steps, its wheels."""

    folder: Path

    @property
    def root(self) -> Path:
        return self.folder / "rootfs"

    @property
    def wheels(self) -> Path:
        return self.folder / "wheels"

    def stamp(self, step: str) -> Path:
        return self.folder / f".done-{step}"

    @property
    def ready(self) -> bool:
        return self.stamp("venv").is_file() and (self.root / VENV.lstrip("/") / "bin" / "python").exists()

    def require(self) -> Userland:
        """This userland, refused in one line where `toolkit arm64 setup` has not made it yet."""
        if not self.ready:
            raise ToolkitError(f"{self.folder}: no ARM64 userland there; run `toolkit arm64 setup` (or `make arm64`)")
        check_privileges()
        return self


@dataclass
class SetupResult:
    """What `toolkit arm64 setup` made or found: the folder, which steps ran now, and what runs inside."""

    folder: str
    mirror: str
    steps_run: list[str] = field(default_factory=list)
    steps_reused: list[str] = field(default_factory=list)
    inside: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_root() -> list[str]:
    """The prefix that runs a command as root: nothing for root, else passwordless sudo."""
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def check_privileges() -> None:
    """Root or passwordless sudo, and the tools of Debian's packages, each missing one named in one line."""
    for tool, package in PREREQUISITES:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise ToolkitError(f"{tool} not found (Debian package {package}): run `{INSTALL}` as root")
    if os.geteuid() != 0:
        sudo = shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
        if not sudo:
            raise ToolkitError("the ARM64 userland needs root or passwordless sudo (debootstrap, chroot, mount)")


def run(command: list[str], what: str, log: Path, timeout: float = 3600, env: dict | None = None) -> str:
    """Run a set-up or run command (as root where it needs to be), its output appended to `log`; a failure is one
    line naming the step and the command's last words."""
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(command)}\n".encode())
        sink.flush()
        try:
            proc = subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            raise ToolkitError(f"{what}: did not finish within {timeout:.0f} s (log: {log})") from None
        sink.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).decode(errors="replace").splitlines() if line.strip()]
        raise ToolkitError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else ''} (log: {log})")
    return proc.stdout.decode(errors="replace")


def mirror(etc: Path = Path("/etc/apt")) -> str:
    """apt's own Debian mirror for bookworm (sources.list and deb822 .sources files), else deb.debian.org."""
    found: list[str] = []
    for path in sorted(etc.glob("sources.list*")) + sorted((etc / "sources.list.d").glob("*")):
        if not path.is_file() or not path.name.endswith((".list", ".sources", "sources.list")):
            continue
        text = path.read_text(errors="replace")
        found += re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M)
        for stanza in re.split(r"\n\s*\n", text):
            uri, suites = re.search(r"^URIs:\s*(\S+)", stanza, re.M), re.search(r"^Suites:.*\bbookworm\b", stanza, re.M)
            if uri and suites:
                found.append(uri.group(1))
    plain = [uri for uri in found if "security" not in uri]
    return plain[0] if plain else "http://deb.debian.org/debian"


def enable_binfmt(log: Path) -> None:
    """binfmt_misc with QEMU's aarch64 entry: what lets debootstrap's second stage run arm64 programs."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "status").exists():
        run([*as_root(), "mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], "mounting binfmt_misc", log)
    entry = misc / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        run([*as_root(), "update-binfmts", "--enable", "qemu-aarch64"], "enabling QEMU's aarch64 binfmt entry", log)


def unmount_stale(userland: Userland) -> None:
    """Undo the mounts under the root that a killed run left behind, deepest first: set-ups and runs hold the
    userland's lock, so a mount found there by the holder is stale."""
    root = str(userland.root.resolve())
    points = [line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(root + "/")), key=len, reverse=True):
        subprocess.run([*as_root(), "umount", "-l", point], capture_output=True)


def remove_root(userland: Userland, log: Path) -> None:
    """Delete a root file system that a step left unfinished (its mounts undone first, never crossing into one)."""
    unmount_stale(userland)
    if userland.root.exists():
        run([*as_root(), "rm", "-rf", "--one-file-system", str(userland.root)], "removing an unfinished root", log)


def bootstrap(userland: Userland, source: str, log: Path, say: Progress) -> list[str]:
    """debootstrap's two stages: the packages unpacked on the host, then configured inside under emulation."""
    done: list[str] = []
    if not userland.stamp("first-stage").is_file():
        remove_root(userland, log)
        say(f"debootstrap, first stage: {SUITE} arm64 from {source}")
        include = ",".join(PACKAGES)
        command = ["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={include}"]
        run([*as_root(), *command, SUITE, str(userland.root), source], "debootstrap (first stage)", log)
        userland.stamp("first-stage").touch()
        done.append("first-stage")
    if not userland.stamp("second-stage").is_file():
        enable_binfmt(log)
        run([*as_root(), "cp", QEMU, str(userland.root / QEMU.lstrip("/"))], "copying QEMU into the root", log)
        say("debootstrap, second stage under emulation (about 8 minutes)")
        second = [*as_root(), "chroot", str(userland.root), "/debootstrap/debootstrap", "--second-stage"]
        try:
            run(second, "debootstrap (second stage)", log)
        except ToolkitError:
            userland.stamp("first-stage").unlink()  # the next setup starts again from a clean root
            raise
        userland.stamp("second-stage").touch()
        done.append("second-stage")
    return done


def download_wheels(userland: Userland, log: Path) -> None:
    """The aarch64 wheels, by the host's pip for the userland's platform (cp311, glibc 2.36)."""
    platforms = [arg for tag in AARCH64_TAGS for arg in ("--platform", f"{tag}_aarch64")]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", *platforms]
    command += ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3"]
    run([*command, "--abi", "none", "-d", str(userland.wheels), *WHEELS], "downloading the aarch64 wheels", log)


def install_venv(userland: Userland, log: Path, say: Progress) -> list[str]:
    """The virtual environment inside, from the downloaded wheels, without a network."""
    if userland.stamp("venv").is_file() and userland.stamp("venv").read_text() == " ".join(WHEELS):
        return []
    say(f"the aarch64 wheels ({', '.join(WHEELS)}) into {VENV} inside")
    fsio.ensure_dir(userland.wheels)
    download_wheels(userland, log)
    enable_binfmt(log)  # venv's ensurepip starts the userland's Python as a child
    with mounted(userland, userland.wheels) as chroot:
        run([*chroot, "/usr/bin/python3", "-m", "venv", VENV], "making the virtual environment inside", log)
        pip = [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--find-links", INSIDE, *WHEELS]
        run([*chroot, *pip], "installing the aarch64 wheels inside", log)
    fsio.write_text(userland.stamp("venv"), " ".join(WHEELS))
    return ["venv"]


@contextlib.contextmanager
def locked(userland: Userland) -> Iterator[None]:
    """One set-up or run at a time per userland: they share its mounts."""
    fsio.ensure_dir(userland.folder)
    with open(userland.folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def mounted(userland: Userland, folder: Path, cpu: str | None = None) -> Iterator[list[str]]:
    """/proc, /sys and the host `folder` (at INSIDE) mounted in the root, and with `cpu` an arm64 /proc/cpuinfo of
    that emulated CPU over the host's; yields the prefix that runs an environment-free command inside. Everything
    mounted is unmounted on the way out, also after an error."""
    root, log = userland.root, userland.folder / "run.log"
    targets = [root / "proc", root / "sys", root / INSIDE.lstrip("/")]
    commands = [["-t", "proc", "proc"], ["-t", "sysfs", "sysfs"], ["--bind", str(folder)]]
    environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", f"PYTHONPATH={INSIDE}/src"]
    environment.append("PYTHONDONTWRITEBYTECODE=1")
    chroot = [*as_root(), "env", "-i", *environment, "chroot", str(root)]
    done: list[Path] = []
    unmount_stale(userland)
    try:
        for target, how in zip(targets, commands):
            run([*as_root(), "mkdir", "-p", str(target)], f"making {target}", log)
            run([*as_root(), "mount", *how, str(target)], f"mounting {target}", log)
            done.append(target)
        if cpu is not None:
            found = run([*chroot, QEMU, "-cpu", cpu, "/usr/bin/python3", "-c", FEATURES_CODE], "reading features", log)
            info = fsio.write_text(folder / "cpuinfo", cpus.cpuinfo_text(cpu, found.split(), os.cpu_count() or 1))
            run([*as_root(), "mount", "--bind", str(info), str(root / "proc/cpuinfo")], "mounting cpuinfo", log)
            done.append(root / "proc/cpuinfo")
        yield chroot
    finally:
        for target in reversed(done):
            if subprocess.run([*as_root(), "umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run([*as_root(), "umount", "-l", str(target)], capture_output=True)


# the emulated CPU's features, read by the userland's own Python before any runtime is imported
FEATURES_CODE = "from toolkit.arm64 import cpus; print(*cpus.features())"


@contextlib.contextmanager
def run_folder(userland: Userland) -> Iterator[Path]:
    """A fresh host folder for one run, with the toolkit's own source in it (what the userland imports), removed
    afterwards."""
    fsio.ensure_dir(userland.folder / "runs")
    folder = Path(tempfile.mkdtemp(dir=userland.folder / "runs"))
    try:
        package = Path(__file__).resolve().parents[1]
        ignore = shutil.ignore_patterns("node_modules", "__pycache__", "*.pyc")
        shutil.copytree(package, folder / "src" / "toolkit", ignore=ignore)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_python(chroot: list[str], cpu: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The userland's Python (its virtual environment) with `args`, run by QEMU as `cpu`: the one way anything runs
    inside, so that it is never the host's own Python."""
    command = [*chroot, QEMU, "-cpu", cpu, f"{VENV}/bin/python", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def qemu_version(userland: Userland) -> str:
    """The version of the emulator that runs the userland (the copy inside it)."""
    out = subprocess.run([str(userland.root / QEMU.lstrip("/")), "--version"], capture_output=True, text=True)
    found = re.search(r"version (\S+)", out.stdout)
    return found.group(1) if found else "unknown"


def describe(userland: Userland, cpu: str, folder: Path | None = None, chroot: list[str] | None = None) -> dict:
    """What the userland runs on `cpu`: machine, features, versions (both runtimes imported), QEMU's version.
    Refused in one line where the machine is not aarch64: the emulator did not run it."""
    if folder is None or chroot is None:
        with locked(userland), run_folder(userland) as new, mounted(userland, new, cpu) as command:
            return describe(userland, cpu, new, command)
    about = run_inside(chroot, cpu, folder, {"about": "about.json"}, "describe")
    if about.get("machine") != "aarch64":
        raise ToolkitError(f"the ARM64 userland ran on {about.get('machine')!r}, not aarch64: it was not emulated")
    return {**about, "cpu": cpu, "qemu": qemu_version(userland), "cpu_description": cpus.CPUS[cpu][0]}


def run_inside(chroot: list[str], cpu: str, folder: Path, request: dict, name: str) -> dict:
    """Run one request in the userland under QEMU's `-cpu`; what the inside wrote about the run."""
    fsio.write_json(folder / f"{name}.json", request)
    try:
        proc = run_python(chroot, cpu, ["-m", "toolkit.arm64.inside", f"{INSIDE}/{name}.json"], RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ToolkitError(f"ARM64 run ({name}) did not finish within {RUN_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise ToolkitError(f"ARM64 run ({name}) failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    return fsio.read_json(folder / request["about"])


def setup(folder: str | Path | None = None, progress: Progress | None = None) -> SetupResult:
    """Make the userland in `folder` (default: the cache), or reuse what earlier runs made; then check it by
    running the toolkit inside on the default CPU."""
    say = progress or (lambda msg: None)
    userland = Userland(Path(folder) if folder else default_folder())
    check_privileges()
    source = mirror()
    result = SetupResult(str(userland.folder), source)
    with locked(userland):
        log = userland.folder / "setup.log"
        result.steps_run += bootstrap(userland, source, log, say)
        result.steps_run += install_venv(userland, log, say)
    result.steps_reused = [s for s in ("first-stage", "second-stage", "venv") if s not in result.steps_run]
    result.inside = describe(userland, cpus.DEFAULT_CPU)  # what a run needs, proved to run
    return result
