"""What survives an interrupt: after each epoch the model with its optimizer state (`last.keras`), the best epoch so
far (`best.keras`) and the run's state (`state.json`); and reading them back for `--resume`.

Its own module because the checkpoint is a file format: one written by an earlier version must still resume, so
the state is a dataclass whose fields are the keys of state.json, and what is read back is checked field by field
(a damaged or foreign checkpoint is one line, not a traceback).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fsio
from toolkit import workspace as ws
from toolkit.backend import keras as _keras
from toolkit.data import Dataset
from toolkit.errors import Interrupted, ToolkitError, first_line
from toolkit.manifest import file_sha256
from toolkit.training.config import TrainConfig

STATE = "state.json"
# the types state.json must hold before it is trusted (later keys may be missing from older checkpoints)
_SAVED_TYPES = {
    "epoch": int,
    "best_epoch": int,
    "best_val_accuracy": (int, float),
    "history": dict,
    "epoch_seconds": list,
    "config": dict,
    "data_sha256": str,
}
# what the checkpoint adds to an epoch's logs for the progress line: rates of this machine, not history
_RATES = ("gflop_per_s", "fraction_of_peak")


@dataclass(kw_only=True)
class TrainState:
    """A run so far, as `checkpoint/state.json` holds it: the fields are its keys, in its order."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0  # the epoch best.keras holds (1-based; 0: none yet)
    best_val_accuracy: float = -1.0
    history: dict[str, list[float]] = field(default_factory=dict)  # each logged metric, one value per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    config: TrainConfig
    data_sha256: str
    replicas: dict[str, Any] | None = None  # how this call's batches split (split_batches, and the devices)
    efficiency: dict[str, Any] | None = None  # the arithmetic of an epoch and the machine's peak, set before the fit
    epoch_gflops: list[float] = field(default_factory=list)

    def record_epoch(self, number: int, seconds: float, gflops: float, logs: dict[str, Any]) -> bool:
        """Add epoch `number`'s time, rate and logged metrics; True where it is the best so far by validation
        accuracy (without validation, every epoch is: the last one is kept)."""
        self.epoch_seconds.append(round(seconds, 2))
        self.epoch_gflops.append(round(gflops, 2))
        for key, value in logs.items():
            if key not in _RATES:
                self.history.setdefault(key, []).append(float(value))
        val_acc = float(logs.get("val_accuracy", -1.0))
        if val_acc > self.best_val_accuracy or "val_accuracy" not in logs:
            self.best_val_accuracy, self.best_epoch = val_acc, number
            return True
        return False

    def save(self, ckpt_dir: Path) -> None:
        fsio.write_json(ckpt_dir / STATE, asdict(self))


def checkpoint_callback(
    ckpt_dir: Path, state: TrainState, work: dict[str, int], peak_gflops: float | None, writes: bool = True
):
    """The Keras callback that times each epoch and checkpoints it (`state` is updated in place). With `writes`
    False (every process of a run but rank 0), the same saves go to a folder that is removed at once: saving a model
    whose variables span several JAX processes is a collective step that every process must take, in step."""

    class Checkpoint(_keras().callbacks.Callback):
        """After each epoch: the last state (for --resume) and, when validation accuracy improved (or without
        validation, always), the best."""

        def _save(self, name: str) -> None:
            if writes:
                with fsio.atomic_path(ckpt_dir / name) as tmp:
                    self.model.save(tmp)
                return
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save(Path(scratch) / name)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {} if logs is None else logs
            seconds = time.perf_counter() - self._t0
            gflops = work["flop_per_epoch"] / seconds / 1e9
            logs["gflop_per_s"] = gflops  # later callbacks (the progress line) show it
            if peak_gflops:
                logs["fraction_of_peak"] = gflops / peak_gflops
            if state.record_epoch(epoch + 1, seconds, gflops, logs):
                self._save("best.keras")
            self._save("last.keras")
            state.epoch = epoch + 1  # only now: an interrupt before this line kept no new epoch
            if writes:
                state.save(ckpt_dir)

    return Checkpoint()


def resumed_state(ckpt_dir: Path, dataset: Dataset, config: TrainConfig) -> TrainState:
    """The interrupted run's state and its configuration (with this call's epochs and eval_limit, where given)."""
    saved = _saved(ckpt_dir, dataset)
    damaged = f"{ckpt_dir / STATE}: the checkpoint state is damaged"
    # the devices are this call's: a run checkpointed on N replicas goes on with 1, or the other way round
    kept = {k: v for k, v in saved["config"].items() if k not in ("epochs", "eval_limit", "devices")}
    epochs = config.epochs if config.epochs is not None else saved["config"].get("epochs")
    try:
        restored = TrainConfig(**{**kept, "epochs": epochs, "eval_limit": config.eval_limit, "devices": config.devices})
        restored.validate()
    except (TypeError, ToolkitError) as e:
        raise ToolkitError(f"{damaged} (its configuration: {e}); start without --resume") from None
    if restored.epochs is None or saved["epoch"] < 0:
        raise ToolkitError(f"{damaged} (epoch {saved['epoch']} of {restored.epochs}); start without --resume")
    return TrainState(
        epoch=saved["epoch"],
        best_epoch=saved["best_epoch"],
        best_val_accuracy=saved["best_val_accuracy"],
        history=saved["history"],
        epoch_seconds=saved["epoch_seconds"],
        config=restored,
        data_sha256=dataset.sha256,
        epoch_gflops=list(saved.get("epoch_gflops") or []),
    )


def _saved(ckpt_dir: Path, dataset: Dataset) -> dict[str, Any]:
    """state.json as written, once it holds every field with its type and was trained on `dataset`."""
    state_path = ckpt_dir / STATE
    if not (state_path.is_file() and (ckpt_dir / "last.keras").is_file()):
        raise ToolkitError(f"{ckpt_dir}: no checkpoint to resume from; start without --resume")
    damaged = f"{state_path}: the checkpoint state is damaged"
    try:
        saved = fsio.read_json(state_path)
    except ToolkitError as e:
        raise ToolkitError(f"{damaged} ({e}); start without --resume") from None
    if not isinstance(saved, dict) or any(not isinstance(saved.get(k), t) for k, t in _SAVED_TYPES.items()):
        raise ToolkitError(f"{damaged} (missing or wrong fields); start without --resume")
    if saved["data_sha256"] != dataset.sha256:
        raise ToolkitError(f"{state_path}: the checkpoint was trained on other data; start without --resume")
    return saved


def load_checkpoint(path: Path):
    """The checkpointed model with its optimizer state; a damaged file is one line, not a traceback."""
    try:
        return _keras().saving.load_model(path, safe_mode=True)
    except Exception as e:  # Keras raises many types for a damaged archive
        raise ToolkitError(
            f"{path}: damaged checkpoint ({first_line(e, 200)}); remove {path.parent} to train from the start"
        ) from None


def finished(workspace: Path, state: TrainState) -> bool:
    """Did the run of this checkpoint write its model.keras and metrics.json (the last step, after the epochs)?"""
    try:
        metrics = fsio.read_json(ws.metrics(workspace))
        return (
            isinstance(metrics, dict)
            and metrics.get("epochs") == state.epoch
            and metrics.get("model_sha256") == file_sha256(ws.model(workspace))
        )
    except (ToolkitError, OSError):
        return False


def interrupted(ckpt_dir: Path, kept: bool) -> Interrupted:
    """What an interrupt leaves: the last finished epoch of this run (resumable), or nothing."""
    if kept and (ckpt_dir / "last.keras").is_file():
        return Interrupted(
            f"interrupted; the last finished epoch is kept in {ckpt_dir}: continue with `toolkit train --resume`"
        )
    return Interrupted("interrupted before the first epoch finished; nothing was kept: start again")
