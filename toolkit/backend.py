"""Keras backend choice and quiet imports, done once before anything imports Keras.

Keras reads KERAS_BACKEND when it is first imported. The default is TensorFlow where it is installed and
JAX otherwise (a GPU machine may have a JAX-CUDA stack and no TensorFlow); the user's setting wins.

`TOOLKIT_CPU_DEVICES=N` splits the CPU into N simulated devices, so that multi-device (data-parallel) training runs
and is tested on a machine without accelerators: JAX gets `--xla_force_host_platform_device_count=N` in XLA_FLAGS
(read when JAX is first imported), TensorFlow N logical CPUs (set before its runtime starts). Both must happen
before anything else imports the backend, hence here. So must joining a run of several
processes: JAX's `keras.distribution.initialize()` where KERAS_DISTRIBUTION_NUM_PROCESSES is above 1, TensorFlow's
MultiWorkerMirroredStrategy where TF_CONFIG names several workers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from toolkit.cluster import Cluster, Watchdog, cluster, leave_quickly_on_failure, stalled, timeout

CPU_DEVICES_VARIABLE = "TOOLKIT_CPU_DEVICES"
MAX_CPU_DEVICES = 64


def simulated_cpu_devices() -> int | None:
    """N from TOOLKIT_CPU_DEVICES, or None where it is unset (a bad value is refused in one line)."""
    value = os.environ.get(CPU_DEVICES_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_CPU_DEVICES:
        from toolkit.errors import ToolkitError

        raise ToolkitError(f"{CPU_DEVICES_VARIABLE}={value[:20]!r}: must be a whole number from 1 to {MAX_CPU_DEVICES}")
    return int(value)


def _simulate_for_jax(n: int) -> None:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _simulate_for_tensorflow(tf, n: int) -> None:
    from toolkit.errors import ToolkitError

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # the runtime started already: the split can no longer change
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise ToolkitError(
                f"{CPU_DEVICES_VARIABLE}={n}: TensorFlow started before the CPU could be split; set it before the "
                "toolkit starts"
            ) from None


def configure() -> str:
    # TensorFlow's C++ log below FATAL: its start-up chatter and its harmless ERROR lines (tf.data's "NodeDef
    # mentions attribute use_unbounded_threadpool ... may be expected" on every fit) read like failures; a real
    # failure reaches Python as an exception, which the CLI reports in one line
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    if "KERAS_BACKEND" not in os.environ:
        for name in ("tensorflow", "jax", "torch"):
            if importlib.util.find_spec(name) is not None:
                os.environ["KERAS_BACKEND"] = name
                break
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def keras():
    """Import Keras with the backend configured. The first import runs with file descriptors 1 and 2 captured:
    TensorFlow's C++ start-up lines ("Could not find cuda drivers", "oneDNN custom operations are on") are
    written before its logging is set up, ignore TF_CPP_MIN_LOG_LEVEL, and read like failures; they are shown
    only if the import fails."""
    backend = configure()
    simulated = simulated_cpu_devices()
    if simulated and backend == "jax" and "jax" not in sys.modules:
        _simulate_for_jax(simulated)
    if "keras" not in sys.modules:
        from toolkit.fsio import captured_output

        try:
            with captured_output() as log:
                import keras as _keras  # noqa: F401

                if _keras.config.backend() == "tensorflow":  # its device probe: "failed call to cuInit" without GPU
                    import tensorflow as tf

                    tf.config.list_physical_devices("GPU")
        except BaseException:
            sys.stderr.write("".join(log))
            raise
        if simulated and backend == "tensorflow":
            import tensorflow as tf

            _simulate_for_tensorflow(tf, simulated)
        _join(cluster(backend))
    import keras as _keras

    return _keras


_MULTI_WORKER = []  # TensorFlow's MultiWorkerMirroredStrategy of this process, made once at start-up


def _join(place: Cluster) -> None:
    """Meet the other processes of a multi-process run before any computation: JAX through Keras' own
    `keras.distribution.initialize` (gloo collectives on CPU devices), TensorFlow by making its
    MultiWorkerMirroredStrategy, which must exist before the runtime starts. A peer that never comes ends this
    process after the stated timeout, in one line."""
    if place.processes == 1:
        return
    from toolkit.fsio import captured_output

    seconds = timeout()  # Keras seeds every process alike as it joins, importing TensorFlow: its start-up chatter
    with Watchdog(seconds, stalled(place, seconds, "not every process joined")), captured_output():
        if place.backend == "jax":
            import jax
            import keras as _keras

            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            _keras.distribution.initialize()  # reads KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES, _PROCESS_ID
        else:
            import tensorflow as tf

            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=seconds)
            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy(communication_options=options))
    leave_quickly_on_failure()


def multi_worker_strategy():
    """The MultiWorkerMirroredStrategy this TensorFlow worker made at start-up, or None."""
    return _MULTI_WORKER[0] if _MULTI_WORKER else None
