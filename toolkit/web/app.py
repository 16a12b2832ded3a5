"""The web app's sources and its JavaScript runtimes, as pinned by `package.json` + `package-lock.json`.

`site/` holds the page (HTML, CSS, ES modules) that `toolkit export --format web` copies into DIR/web/.
The runtimes (LiteRT.js, ONNX Runtime Web) come from npm: `npm ci` installs exactly the locked versions,
into `toolkit/web/node_modules` (what `make setup` does) or, where that folder is absent or read-only, into
the user's cache; the needed files are then copied into DIR/web/vendor/. Nothing is fetched from a CDN.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.cache import cache_dir
from toolkit.errors import ToolkitError
from toolkit.web import server

HERE = Path(__file__).resolve().parent
SITE = HERE / "site"
PACKAGE_JSON = HERE / "package.json"
LOCK = HERE / "package-lock.json"
VENDOR = "vendor"


@dataclass(frozen=True)
class VendorFile:
    package: str
    source: str  # inside the package
    target: str  # inside DIR/web/vendor/


# Only what the page loads: ORT's WebAssembly build (SIMD + threads), LiteRT.js and its WebAssembly
# builds (relaxed SIMD, its threaded twin, and the "compat" one for browsers without relaxed SIMD).
VENDOR_FILES = (
    VendorFile("onnxruntime-web", "dist/ort.wasm.min.mjs", "onnxruntime-web/ort.wasm.min.mjs"),
    VendorFile("onnxruntime-web", "dist/ort-wasm-simd-threaded.mjs", "onnxruntime-web/ort-wasm-simd-threaded.mjs"),
    VendorFile("onnxruntime-web", "dist/ort-wasm-simd-threaded.wasm", "onnxruntime-web/ort-wasm-simd-threaded.wasm"),
    VendorFile("@litertjs/core", "dist/index.js", "litertjs/core/index.js"),
    VendorFile("@litertjs/wasm-utils", "dist/index.js", "litertjs/wasm-utils/index.js"),
    *(
        VendorFile(
            "@litertjs/core",
            f"wasm/litert_wasm{kind}_internal.{ext}",
            f"litertjs/wasm/litert_wasm{kind}_internal.{ext}",
        )
        for kind in ("", "_threaded", "_compat")
        for ext in ("js", "wasm")
    ),
)


def lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]


def locked_packages() -> dict[str, dict[str, str]]:
    """name -> {version, license, integrity} of the packages the page uses, from the lock file."""
    lock = json.loads(LOCK.read_text())
    meta = json.loads(PACKAGE_JSON.read_text())
    out = {}
    for name in meta["dependencies"]:
        entry = lock["packages"][f"node_modules/{name}"]
        out[name] = {
            "version": entry["version"],
            "license": entry.get("license", ""),
            "integrity": entry.get("integrity", ""),
        }
    return out


def _installed(node_modules: Path) -> bool:
    """node_modules holds exactly the locked versions (npm ci writes its own copy of the lock there)."""
    if not all((node_modules / f.package / f.source).is_file() for f in VENDOR_FILES):
        return False
    for name, info in locked_packages().items():
        try:
            if json.loads((node_modules / name / "package.json").read_text())["version"] != info["version"]:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


def _cache_root() -> Path:
    return cache_dir() / f"web-{lock_digest()}"


def _npm_ci(folder: Path, say) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolkitError("npm not found: install Node.js and npm (the web runtimes come from the npm registry)")
    fsio.ensure_dir(folder)
    if folder != HERE:
        shutil.copy2(PACKAGE_JSON, folder / "package.json")
        shutil.copy2(LOCK, folder / "package-lock.json")
    say(f"installing the web runtimes with npm ci in {folder}")
    proc = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).splitlines() if l.strip() and "Unknown user config" not in l]
        raise ToolkitError(f"npm ci in {folder} failed: {(lines or [f'exit code {proc.returncode}'])[-1][:300]}")


def node_modules(say=lambda msg: None) -> Path:
    """A node_modules folder with the locked runtimes: the source tree's, else the cache's; `npm ci` if needed."""
    for folder in (HERE, _cache_root()):
        if _installed(folder / "node_modules"):
            return folder / "node_modules"
    target = HERE if os.access(HERE, os.W_OK) else _cache_root()
    _npm_ci(target, say)
    if not _installed(target / "node_modules"):
        raise ToolkitError(f"{target / 'node_modules'}: npm ci finished but the runtime files are missing")
    return target / "node_modules"


def install_vendor(site: Path, say=lambda msg: None) -> list[dict[str, str | int]]:
    """Copy the runtime files into site/vendor/ (only those missing or different); return what is there."""
    modules = node_modules(say)
    packages = locked_packages()
    listed = []
    for f in VENDOR_FILES:
        source, target = modules / f.package / f.source, site / VENDOR / f.target
        data = source.read_bytes()
        if not target.is_file() or target.stat().st_size != len(data) or target.read_bytes() != data:
            fsio.write_bytes(target, data)
        listed.append(
            {
                "file": f"{VENDOR}/{f.target}",
                "package": f.package,
                "version": packages[f.package]["version"],
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    lines = [
        "# Third-party runtimes",
        "",
        "Copied by `toolkit export --format web` from npm packages installed with `npm ci`",
        "(versions pinned in toolkit/web/package-lock.json). Not edited.",
        "",
        "| package | version | license |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {info['version']} | {info['license']} |" for name, info in packages.items()]
    fsio.write_text(site / VENDOR / "README.md", "\n".join(lines) + "\n")
    return listed


def vendor_missing(site: Path) -> list[str]:
    return [f"{VENDOR}/{f.target}" for f in VENDOR_FILES if not (site / VENDOR / f.target).is_file()]


def copy_site(site: Path) -> list[str]:
    """Copy the page's own files (HTML, CSS, ES modules) into `site`; return their names."""
    names = []
    for src in sorted(SITE.iterdir()):
        if src.is_file() and not src.name.startswith("."):
            fsio.write_bytes(site / src.name, src.read_bytes())
            names.append(src.name)
    return names


def prepare_site(workspace: Path, say=lambda msg: None) -> Path:
    """DIR/web ready to serve: the page must have been exported; the runtime files are copied in from the locked
    npm packages when missing (a fresh clone of a release has no vendor/ folder; never a CDN)."""
    site = server.check_site(ws.site(workspace))
    if vendor_missing(site):
        install_vendor(site, say)
    return site
