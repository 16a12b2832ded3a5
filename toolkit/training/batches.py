"""What each training step sees: the images trained and validated on, shuffled (and shifted) in an order that
depends only on (seed, epoch), in the form the backend's `fit` takes.

Its own module because a resumed run must see exactly the batches an uninterrupted one would have seen: the order
is a function of the seed and the epoch, never of Keras' or Python's global random state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.backend import keras as _keras
from toolkit.backend import multi_worker_strategy
from toolkit.data import Dataset
from toolkit.training.config import TrainConfig
from toolkit.training.replicas import Replicas, one_step_at_a_time


def random_shift(
    images: np.ndarray, rng: np.random.Generator, max_shift: int = 2, part: tuple[int, int] | None = None
) -> np.ndarray:
    """Shift each image by up to `max_shift` pixels in x and y, filling with black (images: N, 28, 28[, 1]). With
    `part` = (first, batch), `images` are positions first.. of a batch of `batch` whose shifts `rng` draws whole: a
    process's shard is shifted as the same images are in one process's run."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)) + ((0, 0),) * (images.ndim - 3))
    first, drawn = part or (0, n)
    dy = rng.integers(-max_shift, max_shift + 1, size=drawn)[first : first + n]
    dx = rng.integers(-max_shift, max_shift + 1, size=drawn)[first : first + n]
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


def make_batches(
    x: np.ndarray, y: np.ndarray, config: TrainConfig, first_epoch: int, replicas: int = 1, shard: tuple = (0, 1)
):
    """The training images as batches from `first_epoch` on, a Keras PyDataset that reshuffles after each epoch.
    `shard` = (rank, processes): each process reads its own contiguous share of every global batch only, and the
    shares in rank order are the batch one process would read."""
    keras = _keras()
    batch_size, seed, augment = config.batch_size, config.seed, config.augment
    rank, processes = shard
    share = slice(rank * batch_size // processes, (rank + 1) * batch_size // processes)
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
            part = (share.start, len(idx)) if processes > 1 else None
            idx = idx[share] if part else idx
            xb = x[idx]
            if augment:
                xb = random_shift(xb, np.random.default_rng([seed, self.epoch, i]), part=part)
            return xb, y[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order()

    return ShuffledBatches()


def _as_tf_dataset(batches, batch_size: int | None):
    """The batches as a tf.data pipeline, for the TensorFlow backend. Measured with Keras 3.15 and TensorFlow 2.21:
    from a Keras PyDataset, epoch 1 ran in epoch 2's order (Keras ended an epoch of the PyDataset before training
    began), and MirroredStrategy, which splits a global batch over its replicas only when it knows the batch size,
    handed whole batches to each replica (half the steps on 2). Here the pipeline maps batch numbers to the batches,
    so its length is known, and with `batch_size` (several replicas) the batch dimension too; the reshuffle is a
    callback (`_reshuffle`), since Keras reads a first batch ahead to build the model."""
    import tensorflow as tf

    x0, y0 = batches[0]

    def load(i):
        x, y = tf.numpy_function(lambda i: batches[int(i)], [i], (tf.as_dtype(x0.dtype), tf.as_dtype(y0.dtype)))
        return tf.ensure_shape(x, (batch_size, *x0.shape[1:])), tf.ensure_shape(y, (batch_size, *y0.shape[1:]))

    return tf.data.Dataset.range(len(batches)).map(load)


def _reshuffle(batches):
    class Reshuffle(_keras().callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            batches.on_epoch_end()

    return Reshuffle()


def validation_share(valid: tuple[np.ndarray, np.ndarray], replicas: Replicas) -> tuple[np.ndarray, np.ndarray]:
    """This process's contiguous share of the validation images (all of them in a run of one process); the set is
    cut to a multiple of the replica count already, so every share is equal."""
    x, y = valid
    per = len(x) // replicas.processes
    return x[replicas.rank * per : (replicas.rank + 1) * per], y[replicas.rank * per : (replicas.rank + 1) * per]


def fit_inputs(batches, replicas: Replicas, batch_size: int, valid: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """What `fit` trains and validates on for this backend and process, and the callbacks that go with it."""
    share = batch_size // replicas.processes  # what one process reads of each global batch
    x_valid, y_valid = validation_share(valid, replicas)
    fit = {"validation_data": (x_valid, y_valid) if len(x_valid) else None, "validation_batch_size": share}
    if replicas.backend != "tensorflow":
        return {**fit, "x": batches, "callbacks": one_step_at_a_time(replicas)}
    strategy = multi_worker_strategy()
    if strategy is None:
        data = _as_tf_dataset(batches, batch_size if replicas.count > 1 else None)
        return {**fit, "x": data, "callbacks": [_reshuffle(batches)]}
    import tensorflow as tf  # each worker's pipeline makes its own share only: nothing for the strategy to shard

    def validation(context):
        return tf.data.Dataset.from_tensor_slices((x_valid, y_valid)).batch(share)

    return {
        "x": strategy.distribute_datasets_from_function(lambda context: _as_tf_dataset(batches, share)),
        "validation_data": strategy.distribute_datasets_from_function(validation) if len(x_valid) else None,
        "callbacks": [_reshuffle(batches)],
    }
