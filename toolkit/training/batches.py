"""What each training step sees: the images trained and validated on, shuffled (and shifted) in an order that
depends only on (seed, epoch), in the form the backend's `fit` takes.

Its own module because a resumed run must see exactly the batches an uninterrupted one would have seen: the order
is a function of the seed and the epoch, never of Keras' or Python's global random state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.backend import keras as _keras
from toolkit.data import Dataset
from toolkit.training.config import TrainConfig
from toolkit.training.replicas import Replicas, one_step_at_a_time


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


def make_batches(x: np.ndarray, y: np.ndarray, config: TrainConfig, first_epoch: int, replicas: int = 1):
    """The training images as batches from `first_epoch` on, a Keras PyDataset that reshuffles after each epoch."""
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


def fit_inputs(batches, replicas: Replicas, batch_size: int) -> tuple[Any, list]:
    """What `fit` trains on for this backend, and the callbacks that backend needs with it."""
    if replicas.backend == "tensorflow":
        data, reshuffle = _as_tf_dataset(batches, batch_size if replicas.count > 1 else None)
        return data, [reshuffle]
    return batches, one_step_at_a_time(replicas)
