"""Training across processes, one per host, joined by the engine's own coordinator: JAX through
`keras.distribution.initialize` (KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID; gloo collectives on
CPU), TensorFlow through `MultiWorkerMirroredStrategy` (TF_CONFIG). What must hold across them lives here: which
process this is, the shard of each global batch it reads, one configuration agreed by all, rank 0 alone writing
while the others wait for it, and a stated timeout after which a process whose peers died or never joined ends
with one line instead of hanging in a collective.

`launch` starts N such processes on one machine (loopback, ports the OS chooses): how the tests run the multi-host
path, and how a user tries it on a laptop. On real hosts the cluster sets the same variables.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zlib

from toolkit.cluster import Cluster, Watchdog, failed, timeout
from toolkit.errors import ToolkitError

FINISH_WAIT = 10  # the other processes wait this many timeouts for rank 0's final evaluation and writes
# what the engines write from C++ in a run of several processes that is no failure: gloo's connection notes on the
# first collective, and tf.data's "NodeDef mentions attribute use_unbounded_threadpool" once TensorFlow's
# distributed runtime has started absl logging (TF_CPP_MIN_LOG_LEVEL no longer holds then)
QUIET = re.compile(r"^\[Gloo\] |^E0000 .*NodeDef mentions attribute use_unbounded_threadpool")


def watchdog_callback(dog: Watchdog):
    """A Keras callback that beats `dog` after every training and validation step."""
    from toolkit.backend import keras as _keras

    class Beat(_keras().callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            dog.beat()

        def on_test_batch_end(self, batch, logs=None):
            dog.beat()

        def on_epoch_end(self, epoch, logs=None):
            dog.beat()

    return Beat()


def fingerprint(*values: object) -> int:
    """A 31-bit checksum of what every process must agree on (seed, batch, epochs, data)."""
    return zlib.crc32(json.dumps(values, sort_keys=True, default=str).encode()) & 0x7FFFFFFF


def gather(place: Cluster, values: list[int], strategy=None) -> list[list[int]]:
    """`values` of every process, in rank order, through the engine's own collectives."""
    import numpy as np

    if place.backend == "jax":
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int32))).tolist()
    import tensorflow as tf

    def mine():
        return tf.constant([values], tf.int32)

    @tf.function  # run eagerly, the strategy warns of its overhead on every call
    def gathered():
        return strategy.gather(strategy.run(mine), axis=0)

    return gathered().numpy().tolist()


def barrier(place: Cluster, name: str, strategy=None) -> None:
    """Wait until every process reaches `name`."""
    if place.backend == "jax":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
    else:
        import tensorflow as tf

        def one():
            return tf.ones(())

        @tf.function
        def total():
            return strategy.reduce("SUM", strategy.run(one), axis=None)

        total()


def agree(place: Cluster, what: dict[str, object], strategy=None) -> None:
    """Refuse, in one line on every process, a run whose processes were started with other options or data."""
    if place.processes == 1:
        return
    mine = fingerprint(what)
    prints = [row[0] for row in gather(place, [mine], strategy)]
    others = [rank for rank, p in enumerate(prints) if p != prints[0]]
    if others:
        failed("options differ")
        raise ToolkitError(
            f"{place.describe()}: process(es) {others} were started with other options or data than rank 0 "
            f"(seed, batch size, epochs, data); start every process with the same command"
        )


# --------------------------------------------------------------------------------------------- launcher


def free_port() -> int:
    """A loopback port the OS chose and nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environments(backend: str, n: int) -> list[dict[str, str]]:
    """The variables each of `n` local processes gets: JAX's three, or TensorFlow's TF_CONFIG."""
    if backend == "jax":
        address = f"127.0.0.1:{free_port()}"
        return [
            {
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": address,
                "KERAS_DISTRIBUTION_NUM_PROCESSES": str(n),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(rank),
            }
            for rank in range(n)
        ]
    if backend == "tensorflow":
        workers = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        return [
            {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}})}
            for rank in range(n)
        ]
    raise ToolkitError(f"--processes {n}: training across processes needs the jax or tensorflow backend, not {backend}")


def _relay(stream, out) -> None:
    """A child's output, line by line, less gloo's connection notes."""
    for line in iter(stream.readline, ""):
        if not QUIET.search(line):
            out.write(line)
            out.flush()


def launch(command: list[str], backend: str, n: int, env: dict[str, str] | None = None) -> int:
    """Run `command` as `n` processes of one run on this machine; the exit status of the run. When one process
    fails, the others get their timeout to end on their own, then are stopped; one line says which failed."""
    procs = []
    for extra in environments(backend, n):
        child_env = {**(env or os.environ), **extra, "KERAS_BACKEND": backend}
        proc = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=_relay, args=(proc.stdout, sys.stdout), daemon=True).start()
        procs.append(proc)
    try:
        return _supervise(procs, timeout() + 10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _supervise(procs: list[subprocess.Popen], grace: float) -> int:
    failed_at = None
    while any(p.poll() is None for p in procs):
        failed = [rank for rank, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed and failed_at is None:
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            break
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    bad = sorted(((rank, code) for rank, code in enumerate(codes) if code != 0), key=lambda rc: rc[1] is None)
    if not bad:
        return 0
    rank, code = bad[0]
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    sys.stderr.write(f"error: process {rank} of {len(procs)} ended ({how}); the run stopped on every process\n")
    return 1
