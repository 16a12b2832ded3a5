"""Train the reference CNN with plain Keras 3 (TensorFlow, JAX or PyTorch backend), on a GPU when one is visible.

Writes `DIR/model.keras` (the best epoch by validation accuracy, or with `all_data` the last; without optimizer
state) and `DIR/metrics.json`; keeps `DIR/checkpoint/` (the last finished epoch with its optimizer state) so that an
interrupted run continues with `resume=True`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__, fsio
from toolkit import workspace as ws
from toolkit.backend import keras as _keras
from toolkit.bench.machine import measure_peak_gflops, usable_cpus
from toolkit.data import Dataset, to_model_input
from toolkit.errors import Interrupted, ToolkitError, first_line
from toolkit.manifest import file_sha256
from toolkit.model import (
    LOGITS,
    build_model,
    check_fits,
    count_params,
    flops_per_image,
    interface_of,
    load_keras_model,
)

DEFAULT_EPOCHS = 12  # with the one-cycle default below: 99.62% test accuracy (15 cosine epochs gave 99.57%)
# upper bounds of the options: far beyond any real run, low enough for every backend's integer types
LIMITS = {
    "epochs": 10_000,
    "batch_size": 1_000_000,
    "limit": 1_000_000_000,
    "eval_limit": 1_000_000_000,
    "seed": 2**32 - 1,
}


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or on resume the checkpoint's own number
    batch_size: int = 128
    learning_rate: float = 3e-3  # Adam's peak rate, then cosine-decayed
    warmup_epochs: float = 1.0  # linear warm-up from a tenth of the peak rate (one-cycle; at most half the run)
    seed: int = 42
    limit: int | None = None  # train on the first N training images only
    eval_limit: int | None = None  # evaluate on the first N images of each split only (tests)
    augment: bool = True  # random shifts of up to 2 pixels; the architecture is unchanged
    mixed_precision: bool = False
    all_data: bool = False  # train on all 60,000 training images (no validation split) and keep the last epoch
    model_file: str | None = None  # a user's architecture (.keras), trained from its initial weights; None: reference

    def validate(self) -> None:
        """Refuse values out of range (or of the wrong type, from a damaged checkpoint) in one line each."""
        for name, top in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in ("epochs", "limit", "eval_limit"):
                continue
            low = 0 if name == "seed" else 1
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= top):
                option = "--" + name.replace("_", "-")
                raise ToolkitError(f"{option} must be a whole number from {low} to {top:,}, got {value}")
        rate = self.learning_rate
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate and np.isfinite(rate)):
            raise ToolkitError(f"--learning-rate must be a positive number, got {rate}")
        warmup = self.warmup_epochs
        if not (isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and 0 <= warmup < 10_000):
            raise ToolkitError(f"--warmup-epochs must be a number from 0 to 10,000, got {warmup}")
        if self.model_file is not None and not isinstance(self.model_file, str):
            raise ToolkitError(f"model_file must be a path, got {self.model_file!r}")
        for name in ("augment", "mixed_precision", "all_data"):
            if not isinstance(getattr(self, name), bool):
                raise ToolkitError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- devices


def detect_devices() -> dict[str, Any]:
    """The accelerators Keras' backend sees, and how training will use them."""
    keras = _keras()
    backend = keras.config.backend()
    try:
        gpus = list(keras.distribution.list_devices("gpu"))
    except Exception:  # a backend without GPU support raises instead of returning []
        gpus = []
    return {"backend": backend, "gpus": gpus, "device": f"gpu x{len(gpus)}" if gpus else "cpu"}


def _device_names(gpus: list[str]) -> str:
    """Human-readable GPU names where the backend tells them."""
    keras = _keras()
    try:
        if keras.config.backend() == "jax":
            import jax

            return ", ".join(sorted({d.device_kind for d in jax.devices("gpu")}))
        if keras.config.backend() == "torch":
            import torch

            return torch.cuda.get_device_name(0)
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return details.get("device_name", "")
    except Exception:
        return ""
    return ""


def _distribution_scope(gpus: list[str]):
    """Data parallel over all visible GPUs: Keras' distribution API on JAX, MirroredStrategy on TensorFlow."""
    import contextlib

    keras = _keras()
    if len(gpus) < 2:
        return contextlib.nullcontext(), "single device"
    if keras.config.backend() == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=gpus))
        return contextlib.nullcontext(), f"keras DataParallel over {len(gpus)} GPUs"
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # backend-specific: Keras' distribution API does not cover TensorFlow

        return tf.distribute.MirroredStrategy().scope(), f"MirroredStrategy over {len(gpus)} GPUs"
    return contextlib.nullcontext(), "single device (multi-GPU needs the jax or tensorflow backend)"


# ---------------------------------------------------------------------------------------------- data


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Shift each image by up to `max_shift` pixels in x and y, filling with black (images: N, 28, 28[, 1])."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)) + ((0, 0),) * (images.ndim - 3))
    dy = rng.integers(-max_shift, max_shift + 1, size=n)
    dx = rng.integers(-max_shift, max_shift + 1, size=n)
    rows = (np.arange(h)[None, :] + max_shift - dy[:, None])[:, :, None]
    cols = (np.arange(w)[None, :] + max_shift - dx[:, None])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def training_data(dataset: Dataset, config: TrainConfig) -> tuple[tuple, tuple]:
    """The (images, labels) trained on and those validated on: the 48,000 / 12,000 split, or with `all_data` all
    60,000 training images and no validation. `limit` and `eval_limit` cut them for quick runs."""
    splits = dataset.splits()
    (x_train, y_train), (x_valid, y_valid) = splits.train, splits.valid
    if config.all_data:
        x_train, y_train = np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])
        x_valid, y_valid = x_valid[:0], y_valid[:0]
    if config.limit is not None:
        x_train, y_train = x_train[: config.limit], y_train[: config.limit]
    return (x_train, y_train), (x_valid[: config.eval_limit], y_valid[: config.eval_limit])


def _make_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, augment: bool, first_epoch: int):
    keras = _keras()

    class ShuffledBatches(keras.utils.PyDataset):
        """Shuffled (and optionally shifted) batches; the order of epoch e depends only on (seed, e)."""

        def __init__(self):
            super().__init__()
            self.epoch = first_epoch
            self._order()

        def _order(self):
            self.rng = np.random.default_rng([seed, self.epoch])
            self.perm = self.rng.permutation(len(x))

        def __len__(self):
            return int(np.ceil(len(x) / batch_size))

        def __getitem__(self, i):
            idx = self.perm[i * batch_size : (i + 1) * batch_size]
            xb = x[idx]
            if augment:
                xb = random_shift(xb, np.random.default_rng([seed, self.epoch, i]))
            return xb, y[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order()

    return ShuffledBatches()


# ---------------------------------------------------------------------------------------- checkpoints


TRAIN_STEP_FACTOR = 3  # a training step costs about 3 forward passes: forward, and backward for inputs and weights


def architecture(config: TrainConfig, dataset: Dataset | None = None):
    """A fresh, uncompiled model to train: the user's (`model_file`, with its own initial weights), checked to be an
    image classifier of the data's size and classes, or the reference CNN."""
    if config.model_file is None:
        return build_model(output_dtype="float32" if config.mixed_precision else None)
    path = Path(config.model_file)
    model = load_keras_model(path)
    interface = interface_of(model, path)
    if dataset is not None:
        check_fits(interface, dataset.image_shape, dataset.num_classes, dataset.location, path)
    return model


def _loss(model):
    """Cross-entropy on the model's own output: probabilities, or logits."""
    logits = interface_of(model).output == LOGITS
    return _keras().losses.SparseCategoricalCrossentropy(from_logits=logits)


def work_per_epoch(train_images: int, valid_images: int, model=None) -> dict[str, int]:
    """The arithmetic of one epoch, from the model's FLOPs per image: training steps on the training images
    (forward + backward) and a forward pass over the validation images."""
    forward = flops_per_image(model if model is not None else build_model())
    step = TRAIN_STEP_FACTOR * forward
    return {
        "forward_flops_per_image": forward,
        "train_step_flops_per_image": step,
        "flop_per_epoch": train_images * step + valid_images * forward,
    }


def _checkpoint_callback(workspace: Path, state: dict, work: dict[str, int], peak_gflops: float | None):
    keras = _keras()
    ckpt_dir = ws.checkpoint(workspace)

    class Checkpoint(keras.callbacks.Callback):
        """After each epoch: the last state (for --resume) and, when validation accuracy improved (or without
        validation, always), the best."""

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {} if logs is None else logs
            seconds = time.perf_counter() - self._t0
            state["epoch_seconds"].append(round(seconds, 2))
            gflops = work["flop_per_epoch"] / seconds / 1e9
            state.setdefault("epoch_gflops", []).append(round(gflops, 2))
            logs["gflop_per_s"] = gflops  # later callbacks (the progress line) show it
            if peak_gflops:
                logs["fraction_of_peak"] = gflops / peak_gflops
            for key, value in logs.items():
                if key not in ("gflop_per_s", "fraction_of_peak"):
                    state["history"].setdefault(key, []).append(float(value))
            val_acc = float(logs.get("val_accuracy", -1.0))
            if val_acc > state["best_val_accuracy"] or "val_accuracy" not in logs:  # no validation: the last epoch
                state["best_val_accuracy"], state["best_epoch"] = val_acc, epoch + 1
                with fsio.atomic_path(ckpt_dir / "best.keras") as tmp:
                    self.model.save(tmp)
            with fsio.atomic_path(ckpt_dir / "last.keras") as tmp:
                self.model.save(tmp)
            state["epoch"] = epoch + 1
            fsio.write_json(ckpt_dir / "state.json", state)

    return Checkpoint()


def _schedule(config: TrainConfig, steps_per_epoch: int):
    """Cosine decay to 1% of the peak rate over the run; with warm-up epochs, first a linear rise from a tenth of
    the peak (a one-cycle schedule). Keras' own CosineDecay, so that a checkpoint reloads without custom code."""
    keras = _keras()
    warmup = int(round(min(config.warmup_epochs, config.epochs / 2) * steps_per_epoch))  # at most half the run
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10,
        config.epochs * steps_per_epoch - warmup,
        alpha=0.1,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def _cpu_peak() -> float:
    """This machine's float32 matrix-product rate on every usable core, the ceiling training is measured against."""
    return round(measure_peak_gflops(usable_cpus(), seconds=0.5), 1)


# ---------------------------------------------------------------------------------------------- train


def train(
    workspace: str | Path,
    dataset: Dataset,
    config: TrainConfig | None = None,
    resume: bool = False,
    callbacks: list | None = None,
    verbose: int = 0,
) -> TrainResult:
    config = config or TrainConfig()
    config.validate()
    workspace = fsio.ensure_dir(Path(workspace))
    keras = _keras()
    ckpt_dir = ws.checkpoint(workspace)

    state: dict[str, Any] = {
        "epoch": 0,
        "best_epoch": 0,
        "best_val_accuracy": -1.0,
        "history": {},
        "epoch_seconds": [],
        "config": asdict(config),
        "data_sha256": dataset.sha256,
    }
    if resume:
        # the run's shape is the checkpoint's (restored before the data is sliced); only the epochs may change
        saved, config = _saved_state(ckpt_dir, dataset, config)
        state.update({k: saved[k] for k in ("epoch", "best_epoch", "best_val_accuracy", "history", "epoch_seconds")})
        state["epoch_gflops"] = list(saved.get("epoch_gflops") or [])
        state["config"] = asdict(config)
        if state["epoch"] >= config.epochs:
            if not _finished(workspace, state):  # interrupted while evaluating the best epoch: finish that now
                return _finish_or_interrupt(workspace, dataset, config, state, detect_devices(), "single device", 0.0)
            raise ToolkitError(
                f"{ckpt_dir / 'state.json'}: the checkpoint already finished {state['epoch']} of {config.epochs} "
                "epochs; pass more --epochs to go on"
            )
    elif config.epochs is None:
        config = replace(config, epochs=DEFAULT_EPOCHS)
        state["config"] = asdict(config)

    (x_train, y_train), (x_valid, y_valid) = training_data(dataset, config)
    x_train, x_valid = to_model_input(x_train), to_model_input(x_valid)

    keras.utils.set_random_seed(config.seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # determinism switch of the TensorFlow backend; other backends are deterministic on CPU

        tf.config.experimental.enable_op_determinism()
    devices = detect_devices()
    if config.mixed_precision:
        if not devices["gpus"]:
            raise ToolkitError("--mixed-precision needs a GPU and none is visible; train without it on the CPU")
        keras.mixed_precision.set_global_policy("mixed_float16")
    scope, parallelism = _distribution_scope(devices["gpus"])

    batches = _make_batches(x_train, y_train, config.batch_size, config.seed, config.augment, state["epoch"])
    fresh = None if resume else architecture(config, dataset)  # a user's model is checked before any epoch
    work = work_per_epoch(len(x_train), len(x_valid), fresh or architecture(config))
    peak = None if devices["gpus"] else _cpu_peak()
    state["efficiency"] = {**work, "peak_float32_gflops": peak}
    with scope:
        if resume:
            model = _load_checkpoint(ckpt_dir / "last.keras")
            # the schedule spans this call's epochs: more --epochs on resume stretch it, as if planned so from the start
            model.optimizer.learning_rate = _schedule(config, len(batches))
        else:
            model = fresh
            schedule = _schedule(config, len(batches))
            model.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss(model), metrics=["accuracy"])
        started = time.perf_counter()
        try:
            model.fit(
                batches,
                validation_data=(x_valid, y_valid) if len(x_valid) else None,
                epochs=config.epochs,
                initial_epoch=state["epoch"],
                callbacks=[_checkpoint_callback(workspace, state, work, peak), *(callbacks or [])],
                verbose=verbose,
            )
        except KeyboardInterrupt:
            raise _interrupted(ckpt_dir, kept=resume or state["epoch"] > 0) from None
        train_seconds = time.perf_counter() - started

    return _finish_or_interrupt(workspace, dataset, config, state, devices, parallelism, train_seconds)


def _load_checkpoint(path: Path):
    """The checkpointed model with its optimizer state; a damaged file is one line, not a traceback."""
    try:
        return _keras().saving.load_model(path, safe_mode=True)
    except Exception as e:  # Keras raises many types for a damaged archive
        raise ToolkitError(
            f"{path}: damaged checkpoint ({first_line(e, 200)}); remove {path.parent} to train from the start"
        ) from None


def _finished(workspace: Path, state: dict) -> bool:
    """Did the run of this checkpoint write its model.keras and metrics.json (the last step, after the epochs)?"""
    try:
        metrics = fsio.read_json(ws.metrics(workspace))
        return (
            isinstance(metrics, dict)
            and metrics.get("epochs") == state["epoch"]
            and metrics.get("model_sha256") == file_sha256(ws.model(workspace))
        )
    except (ToolkitError, OSError):
        return False


def _finish_or_interrupt(workspace: Path, dataset: Dataset, config: TrainConfig, state: dict, *rest) -> TrainResult:
    try:
        return finish(workspace, dataset, config, state, *rest)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while evaluating the best epoch; the epochs are kept: `toolkit train --resume` finishes it"
        ) from None


def _saved_state(ckpt_dir: Path, dataset: Dataset, config: TrainConfig) -> tuple[dict, TrainConfig]:
    """The interrupted run's state and its configuration (with this call's epochs and eval_limit, where given)."""
    state_path = ckpt_dir / "state.json"
    if not (state_path.is_file() and (ckpt_dir / "last.keras").is_file()):
        raise ToolkitError(f"{ckpt_dir}: no checkpoint to resume from; start without --resume")
    damaged = f"{state_path}: the checkpoint state is damaged"
    try:
        saved = fsio.read_json(state_path)
    except ToolkitError as e:
        raise ToolkitError(f"{damaged} ({e}); start without --resume") from None
    types = {
        "epoch": int,
        "best_epoch": int,
        "best_val_accuracy": (int, float),
        "history": dict,
        "epoch_seconds": list,
        "config": dict,
        "data_sha256": str,
    }
    if not isinstance(saved, dict) or any(not isinstance(saved.get(k), t) for k, t in types.items()):
        raise ToolkitError(f"{damaged} (missing or wrong fields); start without --resume")
    if saved["data_sha256"] != dataset.sha256:
        raise ToolkitError(f"{state_path}: the checkpoint was trained on other data; start without --resume")
    kept = {k: v for k, v in saved["config"].items() if k not in ("epochs", "eval_limit")}
    epochs = config.epochs if config.epochs is not None else saved["config"].get("epochs")
    try:
        restored = TrainConfig(**{**kept, "epochs": epochs, "eval_limit": config.eval_limit})
        restored.validate()
    except (TypeError, ToolkitError) as e:
        raise ToolkitError(f"{damaged} (its configuration: {e}); start without --resume") from None
    if restored.epochs is None or saved["epoch"] < 0:
        raise ToolkitError(f"{damaged} (epoch {saved['epoch']} of {restored.epochs}); start without --resume")
    return saved, restored


def _interrupted(ckpt_dir: Path, kept: bool) -> Interrupted:
    """What an interrupt leaves: the last finished epoch of this run (resumable), or nothing."""
    if kept and (ckpt_dir / "last.keras").is_file():
        return Interrupted(
            f"interrupted; the last finished epoch is kept in {ckpt_dir}: continue with `toolkit train --resume`"
        )
    return Interrupted("interrupted before the first epoch finished; nothing was kept: start again")


def _efficiency(state: dict) -> dict[str, Any] | None:
    """What the epochs achieved against the machine: FLOP per epoch, GFLOP/s, and the share of the float32 peak."""
    eff = state.get("efficiency")
    rates = state.get("epoch_gflops") or []
    if not eff or not rates:
        return None
    mean = float(np.mean(rates))
    peak = eff.get("peak_float32_gflops")
    return {
        **eff,
        "epoch_gflops": rates,
        "gflops_per_second": round(mean, 2),
        "fraction_of_peak": round(mean / peak, 4) if peak else None,
        "method": f"FLOP per epoch = train images x {TRAIN_STEP_FACTOR} x forward FLOPs + validation images x "
        "forward FLOPs, over each epoch's wall time (validation included); peak: numpy float32 "
        "matrix product on all usable cores",
    }


def finish(
    workspace: Path,
    dataset: Dataset,
    config: TrainConfig,
    state: dict,
    devices: dict,
    parallelism: str,
    train_seconds: float,
) -> TrainResult:
    """Evaluate the best epoch on every split and write `model.keras` and `metrics.json`."""
    keras = _keras()
    best = keras.saving.load_model(ws.checkpoint(workspace) / "best.keras", safe_mode=True)
    # the shipped model carries no optimizer state: a fresh float32 model with the best weights
    keras.mixed_precision.set_global_policy("float32")
    model = architecture(replace(config, mixed_precision=False))
    model.set_weights(best.get_weights())
    model.compile(loss=_loss(model), metrics=["accuracy"])

    (x_train, y_train), valid = training_data(dataset, replace(config, eval_limit=None))
    accuracy, loss = {}, {}
    for name, (x, y) in (("train", (x_train, y_train)), ("valid", valid), ("test", dataset.splits().test)):
        if config.eval_limit is not None:
            x, y = x[: config.eval_limit], y[: config.eval_limit]
        if not len(x):  # --all-data: nothing was held out
            accuracy[name] = loss[name] = None
            continue
        result = model.evaluate(to_model_input(x), y, batch_size=500, verbose=0, return_dict=True)
        accuracy[name], loss[name] = round(float(result["accuracy"]), 6), round(float(result["loss"]), 6)

    model_path = ws.model(workspace)
    with fsio.atomic_path(model_path) as tmp:
        model.save(tmp)
    params = count_params(model)
    seconds = state["epoch_seconds"]
    cpu_name = platform.processor() or platform.machine()
    metrics = {
        "accuracy": accuracy,
        "loss": loss,
        "params": params["total"],
        "params_detail": params,
        "flops_per_image": flops_per_image(model),
        "device": f"{devices['device']} ({_device_names(devices['gpus']) if devices['gpus'] else cpu_name})",
        "parallelism": parallelism,
        "backend": keras.config.backend(),
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "seconds_per_epoch": round(float(np.mean(seconds)), 2) if seconds else None,
        "epoch_seconds": seconds,
        "efficiency": _efficiency(state),
        "train_seconds_this_run": round(train_seconds, 2),
        "data_sha256": dataset.sha256,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "train_images": len(y_train),
        "config": asdict(config),
        "history": state["history"],
        "model_sha256": file_sha256(model_path),
        "versions": {
            "toolkit": __version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics_path = fsio.write_json(ws.metrics(workspace), metrics)
    return TrainResult(model_path=model_path, metrics_path=metrics_path, metrics=metrics)
