"""Where a run trains: the devices it uses (one, or data parallel over several of one kind), how its global batch
splits over them, and the distribution scope its model and steps live in.

Apart from the fit loop because it is the one part that differs by backend (Keras' distribution API on JAX, a
MirroredStrategy on TensorFlow, one device on PyTorch) and by machine (GPUs, or simulated CPU devices in tests).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.backend import CPU_DEVICES_VARIABLE, multi_worker_strategy, simulated_cpu_devices
from toolkit.backend import keras as _keras
from toolkit.cluster import cluster
from toolkit.errors import ToolkitError
from toolkit.training.config import TrainConfig


@dataclass(frozen=True)
class Replicas:
    """Where training runs: one device, or data parallel over several of one kind (each replica holds the whole
    model and takes an equal share of every global batch; gradients are averaged across replicas)."""

    backend: str
    kind: str  # "gpu" or "cpu"
    devices: tuple[str, ...]  # the devices used
    visible: int  # how many of that kind the backend sees
    simulated: bool  # CPU devices split by TOOLKIT_CPU_DEVICES
    processes: int = 1  # the processes (hosts) the devices belong to; each reads 1/processes of every batch
    rank: int = 0  # this process's

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def engine(self) -> str:
        if self.count == 1:
            return "single device"
        if self.backend == "tensorflow":
            return "tf.distribute." + ("MultiWorkerMirroredStrategy" if self.processes > 1 else "MirroredStrategy")
        return "keras.distribution.DataParallel"

    def describe(self) -> str:
        what = "simulated CPU devices" if self.simulated else f"{self.kind.upper()}s"
        if self.count == 1:
            return f"1 device ({self.devices[0]}{', simulated' if self.simulated else ''}; {self.visible} visible)"
        where = f" of {self.processes} processes" if self.processes > 1 else ""
        return f"{self.count} replicas, data parallel ({self.engine}) on {self.count} of {self.visible} {what}{where}"


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
    """Every visible accelerator (or simulated CPU device) unless `asked` names how many; one line if it cannot.
    In a run of several processes, the devices of every process (JAX), or one device a worker (TensorFlow)."""
    keras = _keras()
    backend = keras.config.backend()
    place = cluster(backend)
    strategy = multi_worker_strategy()
    if strategy is not None:  # TensorFlow's workers: one replica each, named as the strategy names them
        names = [f"/job:worker/task:{i}/device:CPU:0" for i in range(strategy.num_replicas_in_sync)]
        return Replicas(backend, "cpu", tuple(names), len(names), False, place.processes, place.rank)
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
    if place.processes > 1 and n != len(names):
        raise ToolkitError(f"--devices {n}: a run of {place.processes} processes uses every device of each")
    return Replicas(backend, kind, tuple(str(d) for d in names[:n]), len(names), simulated, place.processes, place.rank)


@contextlib.contextmanager
def distributed(replicas: Replicas):
    """Variables created, and steps run, across `replicas`: Keras' distribution API on JAX (global and reset on
    exit), a MirroredStrategy scope on TensorFlow (Keras' distribution API does not cover TensorFlow)."""
    keras = _keras()
    if replicas.count == 1:
        yield
    elif replicas.backend == "jax":  # each process feeds its own shard of every batch (make_batches)
        parallel = keras.distribution.DataParallel(devices=list(replicas.devices), auto_shard_dataset=False)
        keras.distribution.set_distribution(parallel)
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
    elif multi_worker_strategy() is not None:
        with multi_worker_strategy().scope():
            yield
    else:
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(list(replicas.devices)).scope():
            yield


def device_names(replicas: Replicas) -> str:
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
        "processes": replicas.processes,
        "per_process_batch": config.batch_size // replicas.processes,
        "learning_rate_rule": "unchanged: the global batch is --batch-size whatever the replica count",
        "dropped_train_images_per_epoch": train_images % config.batch_size if n > 1 else 0,
        "dropped_validation_images": valid_images % n,
    }


def placement(
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
    if replicas.processes > 1:  # every process says this once; the lines below come from rank 0 only
        say(
            f"Process {replicas.rank} of {replicas.processes} joined ({cluster(replicas.backend).address}); it reads "
            f"{split['per_process_batch']} images of each global batch of {config.batch_size}"
        )
    if replicas.rank:
        return replicas, split
    say(f"Training on {replicas.describe()} with Keras backend {replicas.backend}, on {held_out}")
    if replicas.count > 1:
        say(
            f"Global batch {config.batch_size} = {replicas.count} x {split['per_replica_batch']}; learning rate "
            f"unchanged; to split evenly, each epoch leaves out {split['dropped_train_images_per_epoch']} images (its "
            f"partial last batch) and validation {split['dropped_validation_images']}"
        )
    return replicas, split


def one_step_at_a_time(replicas: Replicas) -> list:
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


def multi_worker_fixes(model, sample: tuple) -> None:
    """Make Keras' fit run under TensorFlow's MultiWorkerMirroredStrategy, which Keras 3 breaks in two places
    (keras-team/keras#20585, open; measured with Keras 3.15 and TensorFlow 2.21): it builds the model from a first
    batch averaged over the workers, with one `strategy.reduce` of the whole (x, y) structure, which the strategy
    refuses; and it averages each step's scalar logs with `reduce(..., axis=0)`, which a scalar has not. Here the
    model is built from the shape of `sample` (one process's batch; only shapes are read), and scalars are averaged
    over the replicas as the strategy documents. No effect on the gradients: those are all-reduced by the strategy."""
    from keras.src.backend.tensorflow import trainer

    if not getattr(trainer.reduce_per_replica, "toolkit_fixed", False):
        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
                return _keras().tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return original(values, strategy, reduction)

        reduce_per_replica.toolkit_fixed = True
        trainer.reduce_per_replica = reduce_per_replica

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=sample)

    model._maybe_symbolic_build = build
