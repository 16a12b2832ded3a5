"""Train the reference CNN with plain Keras 3 (TensorFlow, JAX or PyTorch backend), on a GPU when one is visible.

Writes `DIR/model.keras` (the best epoch by validation accuracy, or with `all_data` the last; without optimizer
state) and `DIR/metrics.json`; keeps `DIR/checkpoint/` (the last finished epoch with its optimizer state) so that an
interrupted run continues with `resume=True`.

This module is the fit loop and what it measures: the model, loss and learning-rate schedule, the epochs, and the
evaluation that writes metrics.json. Its parts live in `toolkit.training`: the options (config), the devices
(replicas), the batches (batches) and the checkpoint with the run's state (checkpoint).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__, fsio
from toolkit import workspace as ws
from toolkit.backend import keras as _keras
from toolkit.backend import multi_worker_strategy
from toolkit.cluster import Cluster, Watchdog, cluster, failed, stalled, timeout
from toolkit.contract import UNIT, InputContract, decide
from toolkit.contract import parse as parse_contract
from toolkit.data import Dataset, to_model_input
from toolkit.errors import Interrupted, ToolkitError, first_line
from toolkit.machine import measure_peak_gflops, usable_cpus
from toolkit.manifest import file_sha256
from toolkit.model import (
    LOGITS,
    build_model,
    check_fits,
    count_params,
    flops_per_image,
    interface_of,
    load_keras_model,
    title_of,
)
from toolkit.training.batches import fit_inputs, make_batches, training_data
from toolkit.training.checkpoint import (
    STATE,
    TrainState,
    checkpoint_callback,
    finished,
    interrupted,
    load_checkpoint,
    resumed_state,
)
from toolkit.training.config import DEFAULT_EPOCHS, TrainConfig
from toolkit.training.processes import FINISH_WAIT, agree, barrier, watchdog_callback
from toolkit.training.replicas import (
    Replicas,
    device_names,
    distributed,
    multi_worker_fixes,
    placement,
    plan_replicas,
)

TRAIN_STEP_FACTOR = 3  # a training step costs about 3 forward passes: forward, and backward for inputs and weights


@dataclass
class TrainResult:
    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ the recipe


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


def training_contract(config: TrainConfig, model=None) -> InputContract:
    """How this run makes pixels into inputs: --input-contract, else raw pixels for a user's model that rescales
    inside itself (`model`, else the model file, looked at), else pixel / 255 (the reference CNN)."""
    if config.input_contract is not None:
        return parse_contract(config.input_contract)
    if config.model_file is not None:
        return decide(model if model is not None else load_keras_model(Path(config.model_file)), None)
    return UNIT


def _loss(model):
    """Cross-entropy on the model's own output: probabilities, or logits."""
    logits = interface_of(model).output == LOGITS
    return _keras().losses.SparseCategoricalCrossentropy(from_logits=logits)


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


def _set_schedule(model, config: TrainConfig, steps_per_epoch: int, resume: bool) -> None:
    """A fresh model is compiled with Adam on the schedule; a checkpoint's keeps its optimizer state, and its
    schedule spans this call's epochs: more --epochs on resume stretch it, as if planned so from the start."""
    schedule = _schedule(config, steps_per_epoch)
    if resume:
        model.optimizer.learning_rate = schedule
    else:
        model.compile(optimizer=_keras().optimizers.Adam(schedule), loss=_loss(model), metrics=["accuracy"])


# ----------------------------------------------------------------------------------- the machine


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


def _cpu_peak() -> float:
    """This machine's float32 matrix-product rate on every usable core, the ceiling training is measured against."""
    return round(measure_peak_gflops(usable_cpus(), seconds=0.5), 1)


def _efficiency(state: TrainState) -> dict[str, Any] | None:
    """What the epochs achieved against the machine: FLOP per epoch, GFLOP/s, and the share of the float32 peak."""
    eff, rates = state.efficiency, state.epoch_gflops
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
    _keras()  # the backend starts first, so that its errors (a bad TOOLKIT_CPU_DEVICES) come before the checkpoint's
    ckpt_dir = ws.checkpoint(workspace)
    if resume:
        # the run's shape is the checkpoint's (restored before the data is sliced); only the epochs may change
        state = resumed_state(ckpt_dir, dataset, config)
        if state.epoch >= state.config.epochs:
            return _finish_the_checkpoint(workspace, dataset, state)
    else:
        epochs = DEFAULT_EPOCHS if config.epochs is None else config.epochs
        state = TrainState(config=replace(config, epochs=epochs), data_sha256=dataset.sha256)
    config = state.config

    replicas, batches, valid, trained_images = _placed_data(dataset, state, training_contract(config), say)
    place = cluster(replicas.backend)
    agreed = {**asdict(config), "model_file": None, "data": dataset.sha256, "epoch": state.epoch}
    agree(place, agreed, multi_worker_strategy())  # one seed, batch and plan on every process, or one line
    with distributed(replicas):  # the model's variables are made here, on the replicas
        model = load_checkpoint(ckpt_dir / "last.keras") if resume else architecture(config, dataset)
        work = work_per_epoch(trained_images, len(valid[0]), model)
        peak = None if replicas.kind == "gpu" else _cpu_peak()
        state.efficiency = {**work, "peak_float32_gflops": peak, "replicas": replicas.count}
        _set_schedule(model, config, len(batches), resume)
        started = time.perf_counter()
        saving = checkpoint_callback(ckpt_dir, state, work, peak, writes=place.chief)  # rank 0 alone writes
        _fit(model, (batches, valid), state, replicas, [saving, *(callbacks or [])], verbose, ckpt_dir, resume)
        train_seconds = time.perf_counter() - started

    if not place.chief:
        return _wait_for_rank_0(workspace, place)
    result = _finish_or_interrupt(workspace, dataset, state, replicas, train_seconds)
    if place.processes > 1:
        barrier(place, "toolkit-finished", multi_worker_strategy())  # the others return once the files are written
    return result


def _fit(
    model,
    data: tuple,
    state: TrainState,
    replicas: Replicas,
    callbacks: list,
    verbose: int,
    ckpt_dir: Path,
    resume: bool,
) -> None:
    """Keras' fit over this process's batches, watched where several processes train together."""
    (batches, valid), config, place = data, state.config, cluster(replicas.backend)
    fit = fit_inputs(batches, replicas, config.batch_size, valid)
    if multi_worker_strategy() is not None:
        multi_worker_fixes(model, batches[0])
    with _watched(place, ckpt_dir) as watch:
        try:
            model.fit(
                shuffle=False,  # the batches shuffle themselves by (seed, epoch); Keras' own would use Python's
                # global random state, which a resumed run does not share with an uninterrupted one
                epochs=config.epochs,
                initial_epoch=state.epoch,
                **{**fit, "callbacks": [*fit["callbacks"], *watch, *callbacks]},
                verbose=verbose,
            )
        except KeyboardInterrupt:
            failed("interrupted")
            raise interrupted(ckpt_dir, kept=resume or state.epoch > 0) from None
        except Exception as e:  # a collective that failed because a peer went away
            if place.processes == 1:
                raise
            failed(first_line(e, 200))
            raise ToolkitError(
                f"{place.describe()}: training stopped, another process of the run failed or went away "
                f"({first_line(e, 200)}); the last finished epoch, if any, is kept in {ckpt_dir}"
            ) from None


@contextlib.contextmanager
def _watched(place: Cluster, ckpt_dir: Path):
    """In a run of several processes, a watchdog over the steps (its callback is yielded): a peer that died leaves
    this process waiting in a collective; after the stated timeout it ends in one line."""
    if place.processes == 1:
        yield []
        return
    seconds = timeout()
    with Watchdog(seconds, stalled(place, seconds, "no training step finished", ckpt_dir)) as dog:
        yield [watchdog_callback(dog)]


def _wait_for_rank_0(workspace: Path, place: Cluster) -> TrainResult:
    """What a process other than rank 0 does after the epochs: wait until rank 0 has evaluated the model and
    written model.keras and metrics.json (on rank 0's disk; on one machine, the same files)."""
    seconds = FINISH_WAIT * timeout()
    with Watchdog(seconds, stalled(place, seconds, "rank 0 wrote no model")):
        barrier(place, "toolkit-finished", multi_worker_strategy())
    metrics_path = ws.metrics(workspace)
    metrics = fsio.read_json(metrics_path) if metrics_path.is_file() else {}
    return TrainResult(model_path=ws.model(workspace), metrics_path=metrics_path, metrics=metrics)


def _finish_the_checkpoint(workspace: Path, dataset: Dataset, state: TrainState) -> TrainResult:
    """A resume whose epochs are all done: interrupted while evaluating the best epoch, it finishes that now (on one
    device, training nothing); a finished run is refused, since only more --epochs give it something to do."""
    if not finished(workspace, state):
        return _finish_or_interrupt(workspace, dataset, state, plan_replicas(1), 0.0)
    raise ToolkitError(
        f"{ws.checkpoint(workspace) / STATE}: the checkpoint already finished {state.epoch} of {state.config.epochs} "
        "epochs; pass more --epochs to go on"
    )


def _placed_data(
    dataset: Dataset, state: TrainState, contract: InputContract, say: Callable[[str], None]
) -> tuple[Replicas, Any, tuple[np.ndarray, np.ndarray], int]:
    """The replicas, the training batches (from the state's epoch on), the validation images (an equal share for
    each replica) and the count of images an epoch trains on. Seeds every random generator first."""
    config = state.config
    (x_train, y_train), (x_valid, y_valid) = training_data(dataset, config)
    x_train, x_valid = to_model_input(x_train, contract), to_model_input(x_valid, contract)

    keras = _keras()
    with fsio.captured_output():  # it seeds TensorFlow too, importing it: start-up chatter on other backends
        keras.utils.set_random_seed(config.seed)
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf  # determinism switch of the TensorFlow backend; other backends are deterministic on CPU

        tf.config.experimental.enable_op_determinism()
    replicas, split = placement(config, len(x_train), len(x_valid), say)
    kept_valid = len(x_valid) - split["dropped_validation_images"]
    state.replicas = {**split, "devices": list(replicas.devices), "simulated": replicas.simulated}

    batches = make_batches(x_train, y_train, config, state.epoch, replicas.count, (replicas.rank, replicas.processes))
    trained_images = len(x_train) - split["dropped_train_images_per_epoch"]
    return replicas, batches, (x_valid[:kept_valid], y_valid[:kept_valid]), trained_images


def _finish_or_interrupt(workspace: Path, dataset: Dataset, state: TrainState, *rest) -> TrainResult:
    try:
        return finish(workspace, dataset, state, *rest)
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while evaluating the best epoch; the epochs are kept: `toolkit train --resume` finishes it"
        ) from None


# --------------------------------------------------------------------------------------------- finish


def finish(
    workspace: Path,
    dataset: Dataset,
    state: TrainState,
    replicas: Replicas,
    train_seconds: float,
) -> TrainResult:
    """Evaluate the best epoch on every split and write `model.keras` and `metrics.json`."""
    keras, config = _keras(), state.config
    model = _shipped_model(ws.checkpoint(workspace) / "best.keras", config)
    contract = training_contract(config, model)
    accuracy, loss, train_images = _evaluate(model, dataset, config, contract)
    model_path = ws.model(workspace)
    if config.model_file is not None:  # the file keeps the user's own name; every load renames it alike
        model.name = title_of(config.model_file) or model.name
    with fsio.atomic_path(model_path) as tmp:
        model.save(tmp)
    params = count_params(model)
    seconds = state.epoch_seconds
    metrics = {
        "accuracy": accuracy,
        "loss": loss,
        "params": params["total"],
        "params_detail": params,
        "flops_per_image": flops_per_image(model),
        "device": f"{replicas.kind}{'' if replicas.count == 1 else f' x{replicas.count}'} ({device_names(replicas)})",
        "parallelism": replicas.describe(),
        "replicas": state.replicas,
        "backend": keras.config.backend(),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "seconds_per_epoch": round(float(np.mean(seconds)), 2) if seconds else None,
        "epoch_seconds": seconds,
        "efficiency": _efficiency(state),
        "train_seconds_this_run": round(train_seconds, 2),
        "data_sha256": dataset.sha256,
        "dataset": dataset.name,
        "data_source": dataset.source,
        "train_images": train_images,
        "config": asdict(config),
        "input_contract": contract.for_channels(dataset.image_shape[2]).to_dict(),  # export takes it from here
        "history": state.history,
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


def _shipped_model(best_path: Path, config: TrainConfig):
    """The model to ship: a fresh float32 model with the best epoch's weights, compiled to evaluate, and without
    the optimizer state the checkpoint carries."""
    keras = _keras()
    best = keras.saving.load_model(best_path, safe_mode=True)
    keras.mixed_precision.set_global_policy("float32")
    model = architecture(replace(config, mixed_precision=False))
    model.set_weights(best.get_weights())
    model.compile(loss=_loss(model), metrics=["accuracy"])
    return model


def _evaluate(model, dataset: Dataset, config: TrainConfig, contract: InputContract) -> tuple[dict, dict, int]:
    """Accuracy and loss on each split (None for the validation split that --all-data leaves empty), and the count
    of images trained on."""
    (x_train, y_train), valid = training_data(dataset, replace(config, eval_limit=None))
    accuracy, loss = {}, {}
    for name, (x, y) in (("train", (x_train, y_train)), ("valid", valid), ("test", dataset.splits().test)):
        if config.eval_limit is not None:
            x, y = x[: config.eval_limit], y[: config.eval_limit]
        if not len(x):  # --all-data: nothing was held out
            accuracy[name] = loss[name] = None
            continue
        result = model.evaluate(to_model_input(x, contract), y, batch_size=500, verbose=0, return_dict=True)
        accuracy[name], loss[name] = round(float(result["accuracy"]), 6), round(float(result["loss"]), 6)
    return accuracy, loss, len(y_train)
