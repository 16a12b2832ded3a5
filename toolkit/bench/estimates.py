"""The benchmark's rows for targets this machine cannot time as they will run: the microcontroller artifact (its RAM
and flash, measured at export by allocating in LiteRT for Microcontrollers) and the Vela-compiled Ethos-U models (the
estimates of Vela's performance model, recorded at export by `toolkit.micro.vela`). Every row says how its figures
were obtained, and the driver keeps these rows apart from timed ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from toolkit import artifacts, manifest
from toolkit import workspace as ws
from toolkit.bench.driver import Target
from toolkit.micro.vela import method
from toolkit.versions import package_versions


class EstimateBackend:
    """Rows for targets this machine cannot time as they will run: the microcontroller artifact (its RAM and flash,
    measured by allocating in LiteRT for Microcontrollers) and the Vela-compiled Ethos-U models (Vela's estimates,
    recorded at export). Their rows carry no latency of this machine; the driver keeps them apart from timed rows."""

    method = "sizes measured at export in LiteRT for Microcontrollers; NPU figures: Arm Vela's performance model"

    def __init__(self, workspace: Path, models: list[Path] | None = None):
        self.workspace, self.models = Path(workspace), models

    def versions(self) -> dict[str, str]:
        return package_versions(("tflite-micro", "ethos-u-vela"))

    @contextlib.contextmanager
    def open(self, settings, say) -> Iterator[EstimateSession]:
        records = manifest.records(self.workspace) if ws.manifest(self.workspace).exists() else []
        kinds = (artifacts.MICRO, artifacts.ESTIMATE)
        chosen = [r for r in records if artifacts.kind_of(r.runtime) in kinds]
        if self.models:  # with --model: only the estimates of the models named
            named = {Path(m).resolve() for m in self.models}
            chosen = [
                r
                for r in chosen
                if (self.workspace / r.file).resolve() in named
                or (self.workspace / str(r.made_with.get("source", ""))).resolve() in named
            ]
        yield EstimateSession([Target.of(self.workspace, r, {"made_with": r.made_with}) for r in chosen])


class EstimateSession:
    def __init__(self, targets):
        self.targets = targets

    def threads(self, settings) -> list[int]:
        return [0]  # no host threads: the figures belong to the device

    def describe(self, target, threads: int) -> str:
        return f"{target.artifact}: {target.runtime} figures recorded at export"

    def measure(self, target, threads: int):
        made = target.entry["made_with"]
        if "estimates" in made:
            e = made["estimates"]
            return [
                target.row(
                    device=e.get("accelerator", target.variant),
                    batch_size=1,
                    threads=0,
                    status="estimate",
                    method=e.get("method", method()),
                    ram_bytes=e.get("sram_bytes"),
                    flash_bytes=e.get("flash_bytes") or e.get("dram_bytes"),
                    estimate=e,
                    note=f"{e.get('inference_ms', 0):.3f} ms, {e.get('inferences_per_second', 0):,.0f} "
                    f"inferences/s at {e.get('clock_mhz', 0):g} MHz ({e.get('weights_storage', '')})",
                )
            ]
        return [
            target.row(
                device="microcontroller",
                batch_size=1,
                threads=0,
                status="sized",
                method=f"arena measured by allocation in {made.get('arena_measured_with', 'tflite-micro')}",
                ram_bytes=made.get("arena_bytes_min"),
                flash_bytes=made.get("flash_bytes"),
                note=f"tensor arena >= {made.get('arena_bytes_min', 0):,} B ({made.get('arena_kernels')} "
                f"kernels; reserve {made.get('arena_bytes_recommended', 0):,} B), model "
                f"{made.get('flash_bytes', 0):,} B in flash",
            )
        ]

    def finish(self, report) -> None:
        return None
