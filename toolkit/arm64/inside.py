"""What the ARM64 userland runs: `python -m toolkit.arm64.inside REQUEST.json`, under QEMU, with the toolkit's own
source on its path. It opens one file with the toolkit's ordinary runner (`toolkit.runtimes.load`: the same LiteRT
and ONNX Runtime classes, the same int8 quantization of inputs and outputs as on x86), runs the images it is given
and writes their probabilities; the host scores them with the ordinary parity code (`toolkit.verify`,
`toolkit.parity`), so there is no second copy of the verification logic.

It also says what really ran: `platform.machine()`, the CPU's features from the auxiliary vector, and the versions
of Python and the runtimes. The host refuses a result whose machine is not aarch64, so a run that fell back to the
host's own Python can never pass as an ARM64 one. A request without a file only describes the userland (and
imports both runtimes, which is where a bad /proc/cpuinfo crashes ONNX Runtime).
"""

from __future__ import annotations

import io
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fsio, runtimes, versions
from toolkit.arm64 import cpus
from toolkit.errors import ToolkitError

RUNTIME_PACKAGES = ("onnxruntime", "ai-edge-litert", "numpy")


def describe() -> dict[str, Any]:
    """What this process runs on: the machine, the CPU's features, Python's and the runtimes' versions."""
    import ai_edge_litert.interpreter  # noqa: F401  both runtimes load, as a verification needs them
    import onnxruntime  # noqa: F401

    found = cpus.features()
    return {
        "machine": platform.machine(),
        "features": found,
        "key_features": cpus.key_features(found),
        "versions": versions.package_versions(RUNTIME_PACKAGES),
    }


def run(request: dict[str, Any], folder: Path) -> None:
    """One file in its runtime on the request's images; their probabilities as a .npy file beside the request."""
    runner = runtimes.load(folder / request["file"], threads=1, probe=False, runtime_name=request["runtime"])
    images = np.load(folder / request["images"])
    probabilities = runtimes.predict(runner, images, batch_size=int(request["batch"]))
    buffer = io.BytesIO()
    np.save(buffer, probabilities)
    fsio.write_bytes(folder / request["out"], buffer.getvalue())


def main(argv: list[str]) -> int:
    """Run the request named by argv[0]; write what ran into its `about` file; a ToolkitError is one line."""
    path = Path(argv[0])
    request = json.loads(path.read_text())
    try:
        about = describe()
        if request.get("file"):
            run(request, path.parent)
    except ToolkitError as e:
        print(e, file=sys.stderr)
        return 1
    fsio.write_json(path.parent / request["about"], about)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
