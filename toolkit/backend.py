"""Keras backend choice and quiet imports, done once before anything imports Keras.

Keras reads KERAS_BACKEND when it is first imported. The default is TensorFlow where it is installed and
JAX otherwise (a GPU machine may have a JAX-CUDA stack and no TensorFlow); the user's setting wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def configure() -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
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
    configure()
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
    import keras as _keras

    return _keras
