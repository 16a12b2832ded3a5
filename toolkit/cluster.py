"""Which process of a run this is, read from the variables its engine reads (JAX's KERAS_DISTRIBUTION_* or
TensorFlow's TF_CONFIG), and the watchdog that ends a process whose peers died or never joined. A leaf module:
the backend needs both before Keras starts (a JAX process joins its coordinator, a TensorFlow worker its cluster,
before any computation), and training needs them after.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from toolkit.errors import ToolkitError

TIMEOUT_VARIABLE = "TOOLKIT_PROCESS_TIMEOUT"
DEFAULT_TIMEOUT = 300  # seconds without a finished step (or a join) before a process gives up on its peers


@dataclass(frozen=True)
class Cluster:
    """This process's place in a run: `rank` of `processes`, and where they meet."""

    backend: str
    processes: int = 1
    rank: int = 0
    address: str = ""  # the JAX coordinator, or this TensorFlow worker's own address

    @property
    def chief(self) -> bool:
        """Rank 0: the one process that writes the model, the metrics and the checkpoints, and shows progress."""
        return self.rank == 0

    def describe(self) -> str:
        return f"process {self.rank} of {self.processes} ({self.backend}, {self.address})"


def _whole(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ToolkitError(f"{name}={value[:40]!r}: must be a whole number")
    return int(value)


def cluster(backend: str) -> Cluster:
    """The run this process belongs to, from the variables its engine reads; one process where none is set."""
    if backend == "tensorflow" and os.environ.get("TF_CONFIG", "").strip():
        try:
            config = json.loads(os.environ["TF_CONFIG"])
            workers, rank = list(config["cluster"]["worker"]), int(config["task"]["index"])
        except (ValueError, KeyError, TypeError) as e:
            raise ToolkitError(f"TF_CONFIG: not a worker cluster with a task index ({e})") from None
        if not 0 <= rank < len(workers):
            raise ToolkitError(f"TF_CONFIG: task index {rank} is not one of the {len(workers)} workers")
        return Cluster(backend, len(workers), rank, workers[rank])
    count = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "")
    if backend != "jax" or _whole("KERAS_DISTRIBUTION_NUM_PROCESSES", count or "1") <= 1:
        return Cluster(backend)
    rank = _whole("KERAS_DISTRIBUTION_PROCESS_ID", os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", ""))
    if not 0 <= rank < int(count):
        raise ToolkitError(f"KERAS_DISTRIBUTION_PROCESS_ID={rank}: not one of the {count} processes")
    address = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES", "").split(",")[0]
    return Cluster(backend, int(count), rank, address)


def timeout() -> float:
    """TOOLKIT_PROCESS_TIMEOUT seconds (default 300): how long a process waits for its peers before it ends."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return float(DEFAULT_TIMEOUT)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= 86_400:
        raise ToolkitError(f"{TIMEOUT_VARIABLE}={value[:20]!r}: must be seconds from 1 to 86,400")
    return seconds


# the watchdog's own process: it reads beats from its stdin; a pause longer than the timeout ends the watched
# process (its pid is argv[1]) after one line on the shared stderr; end of input (the watch closed) ends it quietly
_WATCH = """
import os, select, signal, sys
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
while True:
    ready, _, _ = select.select([0], [], [], seconds)
    if not ready:
        os.write(2, ("error: " + message + "\\n").encode())
        os.kill(parent, signal.SIGKILL)
        break
    if not os.read(0, 4096):
        break
"""


class Watchdog:
    """Ends this process with one line when no beat came for `seconds`: a peer that died or never joined leaves the
    others blocked inside a collective, where no exception ever reaches Python and no Python thread runs (the wait
    holds the interpreter), so the watch is a small process of its own, fed a byte per beat. It ends this process
    with SIGKILL: the engine's own exit handlers would wait on the same dead peer."""

    def __init__(self, seconds: float, message: Callable[[], str]):
        self.seconds, self.message = seconds, message
        self._watch: subprocess.Popen | None = None

    def __enter__(self) -> Watchdog:
        from toolkit.children import python

        command = python(_WATCH, str(os.getpid()), str(self.seconds), self.message())
        self._watch = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc) -> None:
        self._watch.stdin.close()
        self._watch.wait()

    def beat(self) -> None:
        try:
            os.write(self._watch.stdin.fileno(), b".")
        except OSError:  # the watch ended: this process is being stopped
            pass


def stalled(place: Cluster, seconds: float, what: str, ckpt_dir=None) -> Callable[[], str]:
    """The one line a stalled process ends with."""
    kept = (
        f"; the last finished epoch, if any, is kept in {ckpt_dir} (`toolkit train --resume` goes on, with any "
        "process count)"
        if ckpt_dir
        else ""
    )
    return lambda: (
        f"{place.describe()}: {what} within {seconds:g} s ({TIMEOUT_VARIABLE}): another process of the run died or "
        f"never joined{kept}"
    )


_FAILED: list[str] = []


def leave_quickly_on_failure() -> None:
    """Once this process has joined a run: should it fail (`failed`), it exits as soon as its one line is out.
    JAX's own exit handler (registered as the process joined, so run after this one) waits at a shutdown barrier
    for every peer, and a dead peer makes it abort after its 100 s heartbeat timeout, with a C++ stack trace."""
    atexit.register(lambda: _FAILED and (sys.stdout.flush(), sys.stderr.flush(), os._exit(1)))


def failed(reason: str) -> None:
    """Mark this process's run as failed (see `leave_quickly_on_failure`)."""
    _FAILED.append(reason)
