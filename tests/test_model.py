"""The reference architecture, exactly as specified, and what the exporter changes in a model."""

import numpy as np
import pytest

from toolkit.backend import keras as _keras
from toolkit.model import build_model, count_params, flops_per_image, settle_constant_channels

EXPECTED = [
    ("conv1", "Conv2D", (26, 26, 32), 320),
    ("conv2", "Conv2D", (24, 24, 32), 9_248),
    ("pool1", "MaxPooling2D", (12, 12, 32), 0),
    ("dropout", "Dropout", (12, 12, 32), 0),
    ("conv3", "Conv2D", (10, 10, 32), 9_248),
    ("conv4", "Conv2D", (10, 10, 32), 9_248),
    ("pool2", "MaxPooling2D", (5, 5, 32), 0),
    ("flatten", "Flatten", (800,), 0),
    ("dense1", "Dense", (512,), 410_112),
    ("dense2", "Dense", (64,), 32_832),
    ("batchnorm", "BatchNormalization", (64,), 256),
    ("probabilities", "Dense", (10,), 650),
]


def test_architecture_matches_the_reference():
    model = build_model()
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    got = [(l.name, type(l).__name__, tuple(l.output.shape[1:]), l.count_params()) for l in layers]
    assert got == EXPECTED
    assert count_params(model) == {"total": 471_914, "trainable": 471_786, "non_trainable": 128}
    assert tuple(model.input.shape[1:]) == (28, 28, 1)
    assert layers[-1].activation.__name__ == "softmax"
    assert [l.padding for l in layers if type(l).__name__ == "Conv2D"] == ["valid", "valid", "valid", "same"]


def test_flops_from_the_layer_shapes():
    # multiply-adds of the four convolutions and three dense layers, counted by hand
    macs = 26 * 26 * 32 * 9 * 1 + 24 * 24 * 32 * 9 * 32 + 10 * 10 * 32 * 9 * 32 * 2 + 800 * 512 + 512 * 64 + 64 * 10
    flops = flops_per_image(build_model())
    assert 2 * macs < flops < 2 * macs * 1.02  # plus biases, activations, pooling, batch-norm
    assert build_model(batch_size=1).input.shape[0] == 1


def _dense_relu_batchnorm():
    """Dense(4, relu) -> BatchNormalization -> Dense(3), with unit 0 dead (never positive) and unit 2 constant 0.5."""
    keras = _keras()
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    norm = keras.layers.BatchNormalization(name="norm")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(norm))
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, [0, 2]], bias[[0, 2]] = 0.0, [-1.0, 0.5]
    model.get_layer("hidden").set_weights([kernel, bias])
    # moving statistics as training leaves them: unit 0 near-zero mean and variance; unit 1 varies, with a variance
    # as small as unit 0's (it is live all the same); unit 2 constant but with a large variance on record
    gamma, beta = np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.3, -0.2, 0.1, 0.0])
    model.get_layer("norm").set_weights(
        [gamma, beta, np.array([1e-6, 0.0, 0.5, 0.0]), np.array([1e-9, 1e-9, 1.0, 1.0])]
    )
    return model


def test_settling_a_dead_batchnorm_channel_keeps_the_outputs_and_only_that_channel():
    model = _dense_relu_batchnorm()
    images = np.random.default_rng(0).normal(size=(200, 6)).astype("float32")
    before = model.predict(images, verbose=0)
    assert settle_constant_channels(model, images) == [{"layer": "norm", "channels": 1, "of": 4}]
    gamma, beta, _, _ = model.get_layer("norm").get_weights()
    assert gamma.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert beta[0] == pytest.approx(0.3 - 1e-6 / np.sqrt(1e-9 + 1e-3)) and beta[1:].tolist() == pytest.approx(
        [-0.2, 0.1, 0]
    )
    np.testing.assert_allclose(model.predict(images, verbose=0), before, atol=1e-6)
    assert settle_constant_channels(model, images) == []  # gamma 0 is settled: nothing left to do


def test_a_model_without_a_graph_is_left_as_it_is():
    keras = _keras()

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.norm = keras.layers.BatchNormalization()

        def call(self, x):
            return self.norm(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    assert settle_constant_channels(net, np.zeros((8, 4), "float32")) == []
