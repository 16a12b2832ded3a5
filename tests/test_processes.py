"""Training across processes on one machine, as on several hosts: each process is one host, they meet on loopback
ports the OS chooses through the engine's own coordinator (JAX: keras.distribution.initialize with gloo collectives;
TensorFlow: MultiWorkerMirroredStrategy from TF_CONFIG). The processes are started here as a cluster would start
them, each with its own --dir, so that what rank 1 writes (nothing) is seen; `toolkit train --processes N` is the
launcher a user runs. Parity with one process is checked on models without Dropout (tests/test_distributed.py says
why)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_distributed import STEPS, _model_file, _same_training, _train
from toolkit.training.batches import make_batches
from toolkit.training.config import TrainConfig
from toolkit.training.processes import environments


def _start(backend: str, n: int, devices: int | None, args: list[str], dirs: list[Path], mnist_dir: Path, timeout=60):
    """The processes of one run of n, rank r writing to dirs[r] if it wrote at all; only the first len(dirs) start."""
    procs = []
    for rank, extra in list(enumerate(environments(backend, n)))[: len(dirs)]:
        env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_CPU_DEVICES", "XLA_FLAGS", "TF_CONFIG")}
        env.update(extra, KERAS_BACKEND=backend, TOOLKIT_DATA_DIR=str(mnist_dir), TOOLKIT_PROCESS_TIMEOUT=str(timeout))
        if devices:
            env["TOOLKIT_CPU_DEVICES"] = str(devices)
        command = [sys.executable, "-m", "toolkit", "train", *args, "--dir", str(dirs[rank])]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=600) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *out) for p, out in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_each_process_reads_its_share_of_every_batch_and_the_shares_make_the_batch():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (300, 6, 6)).astype(np.float32), np.arange(300)
    config = TrainConfig(batch_size=24, seed=5, augment=True)
    whole = make_batches(x, y, config, first_epoch=3, replicas=4)
    shards = [make_batches(x, y, config, first_epoch=3, replicas=4, shard=(rank, 3)) for rank in range(3)]
    for step in (0, len(whole) - 1):
        xs, ys = zip(*(s[step] for s in shards), strict=True)
        assert all(len(part) == 8 for part in ys)  # a third each: only its own share is read
        np.testing.assert_array_equal(np.concatenate(xs), whole[step][0])  # shifted as one process shifts them
        np.testing.assert_array_equal(np.concatenate(ys), whole[step][1])


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "processes", "devices", "alone"), [("jax", 2, 2, 4), ("tensorflow", 2, None, 2)])
def test_processes_train_as_one_process_does_and_rank_0_alone_writes(
    backend, processes, devices, alone, tmp_path, mnist_dir
):
    model = _model_file(tmp_path, batch_norm=backend == "jax")
    args = [*STEPS, "--model", str(model)]
    one = tmp_path / "one"
    result = _train(one, backend, alone, *args, data_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    dirs = [tmp_path / f"rank-{r}" for r in range(processes)]
    runs = _finish(_start(backend, processes, devices, args, dirs, mnist_dir))
    for rank, (code, out, err) in enumerate(runs):
        assert code == 0, (rank, err[-3000:])
        assert out.count(f"Process {rank} of {processes} joined") == 1  # every process says its rank once
        assert ("epoch" in err) == (rank == 0) and ("Training on" in out) == (rank == 0)  # progress from rank 0 only
    assert not any(d.exists() and any(d.iterdir()) for d in dirs[1:]), "a process other than rank 0 wrote files"
    metrics = json.loads((dirs[0] / "metrics.json").read_text())
    assert metrics["replicas"]["processes"] == processes and metrics["replicas"]["replicas"] == alone
    _same_training(one, dirs[0])  # loss history and every weight within 1e-5 of one process on as many devices

    # the checkpoint of the processes goes on in one process, on one device
    result = _train(dirs[0], backend, None, "--resume", "--epochs", "2", data_dir=mnist_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((dirs[0] / "metrics.json").read_text())
    assert resumed["epochs"] == 2 and resumed["replicas"]["processes"] == 1 and len(resumed["history"]["loss"]) == 2


@pytest.mark.slow
def test_a_process_that_dies_stops_the_others_in_one_line_and_the_checkpoint_stays(tmp_path, mnist_dir):
    model = _model_file(tmp_path, batch_norm=False)
    args = ["--limit", "2048", "--epochs", "20", "--batch-size", "64", "--no-augment", "--model", str(model)]
    dirs = [tmp_path / "rank-0", tmp_path / "rank-1"]
    procs = _start("jax", 2, 1, args, dirs, mnist_dir, timeout=20)
    state = dirs[0] / "checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not state.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert state.is_file(), procs[0].communicate()[1][-2000:]
    procs[1].send_signal(signal.SIGKILL)  # in the middle of the run
    killed = time.monotonic()
    (code, _, err), _ = _finish(procs, timeout=120)
    assert code != 0 and time.monotonic() - killed < 60, err[-2000:]
    lines = [line for line in err.strip().splitlines() if not line.startswith("epoch")]
    assert len(lines) == 1 and lines[0].startswith("error: process 0 of 2") and "Traceback" not in err, err[-2000:]
    assert str(dirs[0] / "checkpoint") in lines[0]  # gloo's error, or the watchdog's 20 s: either way one line
    saved = json.loads(state.read_text())  # the last checkpoint is whole: its state and its model load
    from toolkit.training.checkpoint import load_checkpoint

    assert saved["epoch"] >= 1 and load_checkpoint(dirs[0] / "checkpoint" / "last.keras").count_params() > 0


@pytest.mark.slow
def test_the_launcher_runs_the_processes_on_loopback_and_returns_their_status(tmp_path, mnist_dir):
    model = _model_file(tmp_path, batch_norm=False)
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_CPU_DEVICES", "XLA_FLAGS", "TF_CONFIG")}
    env.update(KERAS_BACKEND="jax", TOOLKIT_DATA_DIR=str(mnist_dir))
    command = [sys.executable, "-m", "toolkit", "train", *STEPS, "--model", str(model), "--processes", "2"]
    result = subprocess.run([*command, "--dir", str(tmp_path / "ws")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Process 1 of 2 joined (127.0.0.1:" in result.stdout and "[Gloo]" not in result.stdout + result.stderr
    assert json.loads((tmp_path / "ws" / "metrics.json").read_text())["replicas"]["processes"] == 2


@pytest.mark.slow
def test_processes_started_with_other_seeds_refuse_in_one_line(tmp_path, mnist_dir):
    model = _model_file(tmp_path, batch_norm=False)
    procs = []
    for rank, extra in enumerate(environments("jax", 2)):
        env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_CPU_DEVICES", "XLA_FLAGS")}
        env.update(extra, KERAS_BACKEND="jax", TOOLKIT_DATA_DIR=str(mnist_dir), TOOLKIT_PROCESS_TIMEOUT="60")
        args = [*STEPS, "--model", str(model), "--seed", str(rank + 1), "--dir", str(tmp_path / f"rank-{rank}")]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "toolkit", "train", *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for code, _, err in _finish(procs, timeout=300):
        (line,) = err.strip().splitlines()
        assert code == 1 and "started with other options or data than rank 0" in line, err[-2000:]
    assert not (tmp_path / "rank-0" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_a_process_whose_peers_never_join_ends_after_the_timeout_in_one_line(backend, tmp_path, mnist_dir):
    (rank_0,) = _start(backend, 2, None, [*STEPS], [tmp_path / "ws"], mnist_dir, timeout=10)
    started = time.monotonic()
    code, out, err = _finish([rank_0], timeout=120)[0]
    (line,) = err.strip().splitlines()
    assert code != 0 and time.monotonic() - started < 90, err[-2000:]
    assert line.startswith("error: process 0 of 2") and "not every process joined within 10 s" in line, line
