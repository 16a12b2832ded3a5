"""Train the reference CNN with plain Keras 3 (TensorFlow, JAX or PyTorch backend), on a GPU when one is visible.

Writes `DIR/model.keras` (the best epoch by validation accuracy, or with `all_data` the last; without optimizer
state) and `DIR/metrics.json`; keeps `DIR/checkpoint/` (the last finished epoch with its optimizer state) so that an
interrupted run continues with `resume=True`.
"""

from __future__ import annotations

import contextlib
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__, fsio
from toolkit import workspace as ws
from toolkit.backend import CPU_DEVICES_VARIABLE, simulated_cpu_devices
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

DEFAULT_EPOCHS = 15  # with the cosine decay below: 99.56% test accuracy, mean of 3 seeds (docs/training.md#seeds)
# upper bounds of the options: far beyond any real run, low enough for every backend's integer types
LIMITS = {
    "epochs": 10_000,
    "batch_size": 1_000_000,
    "limit": 1_000_000_000,
    "eval_limit": 1_000_000_000,
    "seed": 2**32 - 1,
    "devices": 4096,
}


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or on resume the checkpoint's own number
    batch_size: int = 128
    learning_rate: float = 1e-3  # Adam's peak rate, then cosine-decayed
    warmup_epochs: float = 0.0  # linear warm-up from a tenth of the peak rate first (one-cycle; at most half the run)
    seed: int = 42
    limit: int | None = None  # train on the first N training images only
    eval_limit: int | None = None  # evaluate on the first N images of each split only (tests)
    augment: bool = True  # random shifts of up to 2 pixels; the architecture is unchanged
    mixed_precision: bool = False
    all_data: bool = False  # train on all 60,000 training images (no validation split) and keep the last epoch
    model_file: str | None = None  # a user's architecture (.keras), trained from its initial weights; None: reference
    devices: int | None = None  # data-parallel replicas; None: every visible accelerator (or simulated CPU device)

    def validate(self) -> None:
        """Refuse values out of range (or of the wrong type, from a damaged checkpoint) in one line each."""
        for name, top in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in ("epochs", "limit", "eval_limit", "devices"):
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


def command_line(config: dict[str, Any]) -> str:
    """The `toolkit train` call that repeats a run recorded in metrics.json's `config`: every option that differs
    from its default, so that a model card names the training that made its model rather than a fixed text."""
    defaults = asdict(TrainConfig(epochs=DEFAULT_EPOCHS))
    words = ["toolkit train"]
    for name, value in config.items():
        if name not in defaults or name == "eval_limit" or value == defaults[name] or value is None:
            continue
        option = "--model" if name == "model_file" else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(option if value else "--no-" + option[2:])
        else:
            words.append(f"{option} {shlex.quote(str(value))}")
    return " ".join(words)


@dataclass
class TrainResult:
    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Replicas:
    """Where training runs: one device, or data parallel over several of one kind (each replica holds the whole
    model and takes an equal share of every global batch; gradients are averaged across replicas)."""

    backend: str
    kind: str  # "gpu" or "cpu"
    devices: tuple[str, ...]  # the devices used
    visible: int  # how many of that kind the backend sees
    simulated: bool  # CPU devices split by TOOLKIT_CPU_DEVICES

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def engine(self) -> str:
        if self.count == 1:
            return "single device"
        if self.backend == "tensorflow":
            return "tf.distribute.MirroredStrategy"
        return "keras.distribution.DataParallel"

    def describe(self) -> str:
        what = "simulated CPU devices" if self.simulated else f"{self.kind.upper()}s"
        if self.count == 1:
            return f"1 device ({self.devices[0]}{', simulated' if self.simulated else ''}; {self.visible} visible)"
        return f"{self.count} replicas, data parallel ({self.engine}) on {self.count} of {self.visible} {what}"


def _visible(keras, backend: str) -> tuple[str, list[str]]:
    """The kind of device training uses (GPUs where any is visible, else the CPU) and their names."""
    try:
        gpus = list(keras.distribution.list_devices("gpu"))
    except Exception:  # a backend without GPU support raises instead of returning []
        gpus = []
    if backend == "tensorflow":  # MirroredStrategy takes TensorFlow's logical device names
        import tensorflow as tf

        kind = "GPU" if gpus else "CPU"
        return kind.lower(), [d.name for d in tf.config.list_logical_devices(kind)]
    if gpus:
        return "gpu", gpus
    try:
        return "cpu", list(keras.distribution.list_devices("cpu"))
    except Exception:
        return "cpu", ["cpu:0"]


def plan_replicas(asked: int | None = None) -> Replicas:
    """Every visible accelerator (or simulated CPU device) unless `asked` names how many; one line if it cannot."""
    keras = _keras()
    backend = keras.config.backend()
    kind, names = _visible(keras, backend)
    n = len(names) if asked is None else asked
    if not 1 <= n <= len(names):
        raise ToolkitError(
            f"--devices {n}: {len(names)} {kind.upper()} device(s) visible to Keras ({backend}); on a CPU, "
            f"{CPU_DEVICES_VARIABLE}=N simulates N devices"
        )
    if n > 1 and backend not in ("jax", "tensorflow"):
        raise ToolkitError(f"--devices {n}: data-parallel training needs the jax or tensorflow backend, not {backend}")
    simulated = kind == "cpu" and simulated_cpu_devices() is not None
    return Replicas(backend, kind, tuple(str(d) for d in names[:n]), len(names), simulated)


@contextlib.contextmanager
def distributed(replicas: Replicas):
    """Variables created, and steps run, across `replicas`: Keras' distribution API on JAX (global and reset on
    exit), a MirroredStrategy scope on TensorFlow (Keras' distribution API does not cover TensorFlow)."""
    keras = _keras()
    if replicas.count == 1:
        yield
    elif replicas.backend == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=list(replicas.devices)))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
    else:
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(list(replicas.devices)).scope():
            yield


def _device_names(replicas: Replicas) -> str:
    """Human-readable device names where the backend tells them."""
    if replicas.kind == "cpu":
        return platform.processor() or platform.machine()
    try:
        if replicas.backend == "jax":
            import jax

            return ", ".join(sorted({d.device_kind for d in jax.devices("gpu")}))
        if replicas.backend == "torch":
            import torch

            return torch.cuda.get_device_name(0)
        if replicas.backend == "tensorflow":
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return details.get("device_name", "")
    except Exception:
        return ""
    return ""


def split_batches(config: TrainConfig, replicas: Replicas, train_images: int, valid_images: int) -> dict[str, Any]:
    """How the global batch splits over the replicas. The global batch stays --batch-size, so the learning rate
    stays as given (no scaling rule is needed: each step sees the same images as on one device). The last batch of
    an epoch is left out (a partial global batch), and the validation set is cut to a multiple of the replica
    count (an equal share for each); the count of images left out is said once."""
    n = replicas.count
    if config.batch_size % n:
        low, high = config.batch_size - config.batch_size % n, config.batch_size + n - config.batch_size % n
        raise ToolkitError(
            f"--batch-size {config.batch_size} does not split over {n} devices; use {low or high} or {high}"
        )
    return {
        "replicas": n,
        "global_batch": config.batch_size,
        "per_replica_batch": config.batch_size // n,
        "learning_rate_rule": "unchanged: the global batch is --batch-size whatever the replica count",
        "dropped_train_images_per_epoch": train_images % config.batch_size if n > 1 else 0,
        "dropped_validation_images": valid_images % n,
    }


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


def _make_batches(x: np.ndarray, y: np.ndarray, config: TrainConfig, first_epoch: int, replicas: int = 1):
    keras = _keras()
    batch_size, seed, augment = config.batch_size, config.seed, config.augment
    # on several replicas every step is a whole global batch (each replica an equal share): the partial last one
    # is left out, as drop_remainder does; the epoch's shuffle decides which images that is
    steps = len(x) // batch_size if replicas > 1 else int(np.ceil(len(x) / batch_size))

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
            return steps

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


def _as_tf_dataset(batches, batch_size: int | None):
    """The batches as a tf.data pipeline, for the TensorFlow backend, and the callback that reshuffles them after
    each epoch. Measured with Keras 3.15 and TensorFlow 2.21: from a Keras PyDataset, epoch 1 ran in epoch 2's
    order (Keras ended an epoch of the PyDataset before training began), and MirroredStrategy, which splits a
    global batch over its replicas only when it knows the batch size, handed whole batches to each replica (half
    the steps on 2). Here the pipeline maps batch numbers to the batches, so its length is known, and with
    `batch_size` (several replicas) the batch dimension too; the reshuffle is a callback, since Keras reads a first
    batch ahead to build the model."""
    import tensorflow as tf

    x0, y0 = batches[0]

    def load(i):
        x, y = tf.numpy_function(lambda i: batches[int(i)], [i], (tf.as_dtype(x0.dtype), tf.as_dtype(y0.dtype)))
        return tf.ensure_shape(x, (batch_size, *x0.shape[1:])), tf.ensure_shape(y, (batch_size, *y0.shape[1:]))

    class Reshuffle(_keras().callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            batches.on_epoch_end()

    return tf.data.Dataset.range(len(batches)).map(load), Reshuffle()


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
    say: Callable[[str], None] = lambda message: None,
) -> TrainResult:
    """Train (or with `resume` go on training) and finish: `model.keras` and `metrics.json` in `workspace`.
    `say` gets the lines a user reads before the epochs start: where it runs, and what the replicas drop."""
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
                return _finish_or_interrupt(workspace, dataset, config, state, plan_replicas(1), 0.0)
            raise ToolkitError(
                f"{ckpt_dir / 'state.json'}: the checkpoint already finished {state['epoch']} of {config.epochs} "
                "epochs; pass more --epochs to go on"
            )
    elif config.epochs is None:
        config = replace(config, epochs=DEFAULT_EPOCHS)
        state["config"] = asdict(config)

    (x_train, y_train), (x_valid, y_valid) = training_data(dataset, config)
    x_train, x_valid = to_model_input(x_train), to_model_input(x_valid)

    with fsio.captured_output():  # it seeds TensorFlow too, importing it: start-up chatter on other backends
        keras.utils.set_random_seed(config.seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # determinism switch of the TensorFlow backend; other backends are deterministic on CPU

        tf.config.experimental.enable_op_determinism()
    replicas, split = _placement(config, len(x_train), len(x_valid), say)
    kept_valid = len(x_valid) - split["dropped_validation_images"]
    x_valid, y_valid = x_valid[:kept_valid], y_valid[:kept_valid]
    state["replicas"] = {**split, "devices": list(replicas.devices), "simulated": replicas.simulated}

    batches = _make_batches(x_train, y_train, config, state["epoch"], replicas.count)
    with distributed(replicas):  # the model's variables are made here, on the replicas
        model = _load_checkpoint(ckpt_dir / "last.keras") if resume else architecture(config, dataset)
        trained_images = len(x_train) - split["dropped_train_images_per_epoch"]
        work = work_per_epoch(trained_images, len(x_valid), model)
        peak = None if replicas.kind == "gpu" else _cpu_peak()
        state["efficiency"] = {**work, "peak_float32_gflops": peak, "replicas": replicas.count}
        if resume:
            # the schedule spans this call's epochs: more --epochs on resume stretch it, as if planned so from the start
            model.optimizer.learning_rate = _schedule(config, len(batches))
        else:
            schedule = _schedule(config, len(batches))
            model.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss(model), metrics=["accuracy"])
        started = time.perf_counter()
        data, backend_callbacks = _fit_inputs(batches, replicas, config.batch_size)
        try:
            model.fit(
                data,
                shuffle=False,  # the batches shuffle themselves by (seed, epoch); Keras' own would use Python's
                # global random state, which a resumed run does not share with an uninterrupted one
                validation_data=(x_valid, y_valid) if len(x_valid) else None,
                validation_batch_size=config.batch_size,
                epochs=config.epochs,
                initial_epoch=state["epoch"],
                callbacks=[
                    *backend_callbacks,
                    _checkpoint_callback(workspace, state, work, peak),
                    *(callbacks or []),
                ],
                verbose=verbose,
            )
        except KeyboardInterrupt:
            raise _interrupted(ckpt_dir, kept=resume or state["epoch"] > 0) from None
        train_seconds = time.perf_counter() - started

    return _finish_or_interrupt(workspace, dataset, config, state, replicas, train_seconds)


def _one_step_at_a_time(replicas: Replicas) -> list:
    """A callback that waits for each validation step, where JAX runs replicas on CPU devices. XLA's CPU client runs
    every device of a step on one shared thread pool; validation steps, independent of each other, are dispatched
    ahead, and their threads can all wait in different all-reduces: a deadlock (seen with 4 simulated devices on 2
    cores). Reading each step's loss keeps one step in flight. Training steps depend on each other already."""
    if replicas.count == 1 or replicas.kind != "cpu" or replicas.backend != "jax":
        return []

    class OneStepAtATime(_keras().callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])

    return [OneStepAtATime()]


def _fit_inputs(batches, replicas: Replicas, batch_size: int) -> tuple[Any, list]:
    """What `fit` trains on for this backend, and the callbacks that backend needs with it."""
    if replicas.backend == "tensorflow":
        data, reshuffle = _as_tf_dataset(batches, batch_size if replicas.count > 1 else None)
        return data, [reshuffle]
    return batches, _one_step_at_a_time(replicas)


def _placement(
    config: TrainConfig, train_images: int, valid_images: int, say: Callable[[str], None]
) -> tuple[Replicas, dict[str, Any]]:
    """The devices to train on and how batches split over them, said before the first epoch."""
    replicas = plan_replicas(config.devices)
    if config.mixed_precision:
        if replicas.kind != "gpu":
            raise ToolkitError("--mixed-precision needs a GPU and none is visible; train without it on the CPU")
        _keras().mixed_precision.set_global_policy("mixed_float16")
    split = split_batches(config, replicas, train_images, valid_images)
    held_out = "all training images (--all-data)" if config.all_data else "the train split"
    say(f"Training on {replicas.describe()} with Keras backend {replicas.backend}, on {held_out}")
    if replicas.count > 1:
        say(
            f"Global batch {config.batch_size} = {replicas.count} x {split['per_replica_batch']}; learning rate "
            f"unchanged; to split evenly, each epoch leaves out {split['dropped_train_images_per_epoch']} images (its "
            f"partial last batch) and validation {split['dropped_validation_images']}"
        )
    return replicas, split


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
        "forward FLOPs, all replicas together, over each epoch's wall time (validation included); peak: numpy "
        "float32 matrix product on all usable cores (simulated CPU devices share them)",
    }


def finish(
    workspace: Path,
    dataset: Dataset,
    config: TrainConfig,
    state: dict,
    replicas: Replicas,
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
    metrics = {
        "accuracy": accuracy,
        "loss": loss,
        "params": params["total"],
        "params_detail": params,
        "flops_per_image": flops_per_image(model),
        "device": f"{replicas.kind}{'' if replicas.count == 1 else f' x{replicas.count}'} ({_device_names(replicas)})",
        "parallelism": replicas.describe(),
        "replicas": state.get("replicas"),
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
