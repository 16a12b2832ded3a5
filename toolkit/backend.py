"""Keras backend choice and quiet imports, done once before anything imports Keras.

Keras reads KERAS_BACKEND when it is first imported. The default is TensorFlow where it is installed and
JAX otherwise (a GPU machine may have a JAX-CUDA stack and no TensorFlow); the user's setting wins.
"""

from __future__ import annotations

import importlib.util
import os


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
    """Import Keras with the backend configured."""
    configure()
    import keras as _keras

    return _keras
