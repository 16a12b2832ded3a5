"""toolkit.train: a short real run learns, writes its output contract and is deterministic; an interrupted run
keeps its last finished epoch and resumes on its own plan, and damaged checkpoints and absurd options are refused in
one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import pytest

from tests.helpers import run_toolkit
from toolkit import train as train_lib
from toolkit.errors import Interrupted, ToolkitError
from toolkit.model import load_keras_model
from toolkit.train import TrainConfig
from toolkit.training.batches import random_shift, training_data
from toolkit.training.config import DEFAULT_EPOCHS, command_line


def test_short_run_learns_and_writes_the_contract(trained_workspace):
    workspace, result = trained_workspace
    metrics = json.loads((workspace / "metrics.json").read_text())
    for key in ("accuracy", "loss", "params", "device", "backend", "epochs", "seconds_per_epoch", "data_sha256"):
        assert key in metrics
    assert set(metrics["accuracy"]) == set(metrics["loss"]) == {"train", "valid", "test"}
    assert metrics["params"] == 471_914 and metrics["epochs"] == 2
    assert metrics["accuracy"]["test"] > 0.85  # 500 held-out test images; chance is 0.10
    assert metrics["accuracy"]["valid"] > 0.85
    assert metrics["device"].startswith("cpu") and metrics["backend"] == "tensorflow"
    assert 1 <= metrics["best_epoch"] <= 2
    assert len(metrics["history"]["val_accuracy"]) == 2
    eff = metrics["efficiency"]  # the arithmetic of an epoch and what the machine made of it
    assert eff["train_step_flops_per_image"] == 3 * eff["forward_flops_per_image"] == 3 * metrics["flops_per_image"]
    assert eff["flop_per_epoch"] == 6000 * eff["train_step_flops_per_image"] + 500 * eff["forward_flops_per_image"]
    for rate, seconds in zip(eff["epoch_gflops"], metrics["epoch_seconds"]):
        assert rate == pytest.approx(eff["flop_per_epoch"] / seconds / 1e9, rel=0.01)
    assert 0 < eff["fraction_of_peak"] == pytest.approx(eff["gflops_per_second"] / eff["peak_float32_gflops"], rel=1e-3)
    model = load_keras_model(workspace / "model.keras")
    assert model.count_params() == 471_914
    assert (workspace / "checkpoint" / "last.keras").is_file()
    assert not list(workspace.glob(".*tmp*"))  # no temporary files left behind


def test_resume_continues_from_the_checkpoint(tmp_path, mnist):
    config = TrainConfig(epochs=1, limit=600, eval_limit=200, batch_size=64, warmup_epochs=1.0)  # one-cycle
    train_lib.train(tmp_path, mnist, config)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1
    first = _schedule_config(tmp_path)
    steps_per_epoch = first["decay_steps"] + first["warmup_steps"]
    result = train_lib.train(tmp_path, mnist, replace(config, epochs=2), resume=True)
    assert result.metrics["epochs"] == 2
    # more epochs on resume stretch the schedule over the whole run: one warm-up epoch, then decay to the end
    stretched = _schedule_config(tmp_path)
    assert stretched["warmup_steps"] == steps_per_epoch and stretched["decay_steps"] == steps_per_epoch
    assert len(result.metrics["history"]["val_accuracy"]) == 2
    with pytest.raises(ToolkitError, match="already finished 2 of 2 epochs"):
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, limit=600, eval_limit=200), resume=True)
    # interrupted while evaluating the best epoch (no metrics.json yet): --resume finishes it, training nothing
    (tmp_path / "metrics.json").unlink()
    again = train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, limit=600, eval_limit=200), resume=True)
    assert again.metrics["epochs"] == 2 and again.metrics["accuracy"] == result.metrics["accuracy"]
    assert again.metrics["train_seconds_this_run"] == 0


def _schedule_config(workspace) -> dict:
    """The learning-rate schedule saved with the optimizer in the checkpoint."""
    import keras

    model = keras.saving.load_model(workspace / "checkpoint" / "last.keras", safe_mode=True)
    return model.optimizer.get_config()["learning_rate"]["config"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, mnist):
    with pytest.raises(ToolkitError, match="no checkpoint to resume from"):
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, limit=100), resume=True)


def test_same_seed_same_weights(tmp_path, mnist):
    config = TrainConfig(epochs=1, limit=256, eval_limit=100, batch_size=64, seed=7)
    a = train_lib.train(tmp_path / "a", mnist, config)
    b = train_lib.train(tmp_path / "b", mnist, config)
    wa = load_keras_model(a.model_path).get_weights()
    wb = load_keras_model(b.model_path).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert a.metrics["accuracy"] == b.metrics["accuracy"]


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0), ("limit", 0)])
def test_bad_options_are_refused(field, value):
    with pytest.raises(ToolkitError, match="must be"):
        TrainConfig(**{field: value}).validate()


def test_random_shift_moves_digits_without_losing_them():
    rng = np.random.default_rng(0)
    images = np.zeros((50, 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = rng.integers(1, 256, (50, 8, 8))  # away from the border: shifts keep every pixel
    shifted = random_shift(images, rng)
    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    assert np.array_equal(shifted.reshape(50, -1).sum(1), images.reshape(50, -1).sum(1))
    assert (shifted != images).any(axis=(1, 2)).sum() > 30  # most images moved


def test_all_data_trains_on_every_training_image_and_keeps_the_last_epoch(tmp_path, mnist, mnist_dir):
    from typer.testing import CliRunner

    from toolkit.cli import app

    (x, y), (xv, yv) = training_data(mnist, TrainConfig())
    assert len(x) == 48_000 and len(xv) == 12_000
    (x_all, y_all), (xv_all, _) = training_data(mnist, TrainConfig(all_data=True))
    assert len(x_all) == 60_000 and len(xv_all) == 0
    assert np.array_equal(x_all[48_000:], xv) and np.array_equal(y_all[:48_000], y)  # the held-out images join

    args = ["train", "--all-data", "--epochs", "2", "--limit", "600", "--learning-rate", "3e-3", "--warmup-epochs", "1"]
    args += ["--data-dir", str(mnist_dir)]
    out = CliRunner().invoke(app, [*args, "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "valid: -" in out.output  # nothing held out, nothing to show
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["all_data"] is True and metrics["train_images"] == 600
    assert metrics["accuracy"]["valid"] is None and metrics["loss"]["valid"] is None
    assert (
        metrics["accuracy"]["test"] > 0.2 and metrics["best_epoch"] == metrics["epochs"] == 2
    )  # learned (chance: 0.1); the last epoch kept
    assert "val_accuracy" not in metrics["history"]
    last = load_keras_model(tmp_path / "checkpoint" / "last.keras")
    kept = load_keras_model(tmp_path / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(last.get_weights(), kept.get_weights()))


TINY = dict(limit=300, eval_limit=100, batch_size=32)


def _steps_callback(seen: list):
    from toolkit.backend import keras

    class Steps(keras().callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params["steps"])
            assert self.params["steps"] == 10, f"{self.params['steps']} steps per epoch, expected 10 (300 images)"

    return Steps()


def test_resume_trains_on_the_interrupted_plans_limit(tmp_path, mnist):
    train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, **TINY))
    steps: list = []
    result = train_lib.train(
        tmp_path, mnist, TrainConfig(epochs=2, eval_limit=100), resume=True, callbacks=[_steps_callback(steps)]
    )
    assert steps == [10]  # ceil(300 / 32): the saved limit, not all 48,000 images
    assert result.metrics["train_images"] == 300 and result.metrics["config"]["limit"] == 300
    assert result.metrics["epochs"] == 2


def _interrupt_at(when: str):
    from toolkit.backend import keras

    class Interrupt(keras().callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if when == "first batch":
                raise KeyboardInterrupt

        def on_epoch_begin(self, epoch, logs=None):
            if when == "second epoch" and epoch == 1:
                raise KeyboardInterrupt

    return Interrupt()


def test_an_interrupt_before_the_first_epoch_claims_no_checkpoint(tmp_path, mnist):
    with pytest.raises(KeyboardInterrupt) as e:  # (not Interrupted: a plain one would end the test session)
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, **TINY), callbacks=[_interrupt_at("first batch")])
    assert isinstance(e.value, Interrupted)
    assert str(e.value) == "interrupted before the first epoch finished; nothing was kept: start again"
    with pytest.raises(ToolkitError, match="no checkpoint to resume from"):
        train_lib.train(tmp_path, mnist, TrainConfig(**TINY), resume=True)


def test_an_interrupt_after_an_epoch_keeps_it_and_says_how_to_resume(tmp_path, mnist):
    with pytest.raises(KeyboardInterrupt) as e:
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, **TINY), callbacks=[_interrupt_at("second epoch")])
    assert isinstance(e.value, Interrupted)
    assert str(e.value) == (
        f"interrupted; the last finished epoch is kept in {tmp_path / 'checkpoint'}: "
        "continue with `toolkit train --resume`"
    )
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("content", ['{"epoch": 1, "best_ep', "[]", '{"epoch": 1}', "{}"])
def test_a_damaged_state_json_is_reported_as_damaged(tmp_path, mnist, content):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "last.keras").write_bytes(b"PK")
    (checkpoint / "state.json").write_text(content)
    with pytest.raises(ToolkitError, match=r"state.json: the checkpoint state is damaged .*start without --resume$"):
        train_lib.train(tmp_path, mnist, TrainConfig(**TINY), resume=True)


def test_a_damaged_saved_configuration_is_reported_as_damaged(tmp_path, mnist):
    train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, **TINY))
    state_path = tmp_path / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["batch_size"] = "many"
    state_path.write_text(json.dumps(state))
    with pytest.raises(ToolkitError, match=r"checkpoint state is damaged \(its configuration: --batch-size must be"):
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2), resume=True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 100_000_000_000_000_000_000),
        ("epochs", 10_001),
        ("batch_size", 1_000_001),
        ("limit", 10**12),
        ("eval_limit", 10**12),
        ("seed", -1),
        ("seed", 2**32),
    ],
)
def test_absurd_options_are_refused_in_one_line(field, value):
    with pytest.raises(ToolkitError, match="must be") as e:
        TrainConfig(**{field: value}).validate()
    assert "\n" not in str(e.value)


def test_train_with_absurd_epochs_is_one_line(tmp_path, mnist_dir):
    args = [
        "train",
        "--epochs",
        "100000000000000000000",
        "--limit",
        "100",
        "--data-dir",
        str(mnist_dir),
        "--dir",
        str(tmp_path / "ws"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --epochs must be a whole number from 1 to 10,000")


@pytest.mark.slow
def test_sigterm_during_training_keeps_the_last_epoch_and_resume_finishes(tmp_path, mnist_dir):
    ws = tmp_path / "ws"
    args = ["train", "--limit", "1500", "--batch-size", "32", "--data-dir", str(mnist_dir), "--dir", str(ws)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args, "--epochs", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = ws / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert state.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-800:]
    assert "toolkit train --resume" in err and "Traceback" not in err
    assert not [p for p in ws.rglob("*") if ".tmp-" in p.name]  # nothing half-written
    done = load_keras_model(ws / "checkpoint" / "last.keras")  # the last good checkpoint loads
    assert done.count_params() == 471_914
    import json

    assert 1 <= json.loads(state.read_text())["epoch"] < 4
    proc = run_toolkit(*args, "--resume")  # the checkpoint's own plan (4 epochs) is carried on
    assert proc.returncode == 0, proc.stderr[-800:]
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and len(metrics["history"]["val_accuracy"]) == 4


def test_a_damaged_checkpoint_model_is_one_line(tmp_path, mnist):
    config = dict(limit=200, eval_limit=50, batch_size=50, seed=1)
    train_lib.train(tmp_path, mnist, TrainConfig(epochs=1, **config))
    (tmp_path / "checkpoint" / "last.keras").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ToolkitError, match=r"last.keras: damaged checkpoint .*; remove .*checkpoint"):
        train_lib.train(tmp_path, mnist, TrainConfig(epochs=2, **config), resume=True)


def test_command_line_names_only_the_options_that_differ_from_the_defaults():
    defaults = asdict(TrainConfig(epochs=DEFAULT_EPOCHS))
    assert command_line(defaults) == "toolkit train"
    changed = {**defaults, "seed": 1, "all_data": True, "augment": False, "eval_limit": 500}
    changed["model_file"] = "my net.keras"
    assert command_line(changed) == "toolkit train --seed 1 --no-augment --all-data --model 'my net.keras'"
