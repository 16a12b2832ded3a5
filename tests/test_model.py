"""The reference architecture, exactly as specified, and what the exporter changes in a model."""

import numpy as np

from toolkit.backend import keras as _keras
from toolkit.model import build_model, count_params, equalize_batchnorm_scales, flops_per_image

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


def _dense_relu_batchnorm(live_variance: float = 1000.0):
    """Input(16) -> Dense(8, relu) -> BatchNormalization -> Dense(4), with unit 0 dead (never positive), its
    moving statistics as training leaves them (variance about 0: the largest gain), and live units whose large
    variance gives them a small gain."""
    keras = _keras()
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    norm = keras.layers.BatchNormalization(name="norm")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(norm))
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 3, (16, 8)).astype("float32")
    bias = np.full(8, 5.0, "float32")
    kernel[:, 0], bias[0] = 0.0, -1.0
    model.get_layer("hidden").set_weights([kernel, bias])
    var = np.full(8, live_variance, "float32")
    var[0] = 1e-9
    gamma, beta, mean = rng.uniform(0.5, 2, 8), rng.normal(0, 1, 8), np.full(8, 5.0)
    mean[0] = 1e-6
    model.get_layer("norm").set_weights([gamma, beta, mean, var])
    return model


def test_equalization_keeps_the_outputs_and_balances_the_weight_ranges():
    model = _dense_relu_batchnorm()
    x = np.random.default_rng(1).normal(size=(300, 16)).astype("float32")
    before = model.predict(x, verbose=0)
    assert equalize_batchnorm_scales(model) == [{"layer": "norm", "before": "hidden", "after": "out", "channels": 8}]
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    gamma, _, mean, var = model.get_layer("norm").get_weights()
    gain = gamma / np.sqrt(var + 1e-3)
    assert mean.tolist() == [0.0] * 8
    first = np.abs(model.get_layer("hidden").get_weights()[0]).max(0)
    folded = np.abs(model.get_layer("out").get_weights()[0] * gain[:, None]).max(1)
    np.testing.assert_allclose(first[1:], folded[1:], rtol=1e-5)  # each live channel: equal ranges on both sides


def test_equalization_is_what_keeps_full_integer_weights_of_the_next_layer():
    """The point of it, through TensorFlow's converter and LiteRT: the dead unit's gain, folded into the next
    layer, sets its int8 weight scale and leaves the live weights a step or two, until equalized."""
    from toolkit.export import Calibration
    from toolkit.export.tflite import convert

    x = np.random.default_rng(2).normal(size=(400, 16)).astype("float32")

    def int8_error(model) -> float:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=convert(model, "int8", Calibration(x[:200], 0), int8_io=False))
        it.resize_tensor_input(0, (200, 16))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x[200:])
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
        want = model.predict(x[200:], verbose=0)
        return float(np.abs(got - want).mean() / np.abs(want).mean())

    plain = _dense_relu_batchnorm()
    equalized = _dense_relu_batchnorm()
    equalize_batchnorm_scales(equalized)
    before, after = int8_error(plain), int8_error(equalized)
    assert after < before / 4, (before, after)


def _sequential(*layers):
    keras = _keras()
    return keras.Sequential([keras.Input((6, 6, 2)), *layers])


def test_equalization_takes_a_relu_layer_between_and_leaves_other_shapes_alone():
    keras = _keras()
    x = np.random.default_rng(3).normal(size=(50, 6, 6, 2)).astype("float32")
    conv = _sequential(
        keras.layers.Conv2D(4, 3, name="c1"),
        keras.layers.ReLU(name="r"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(3, 1, name="c2"),
    )
    conv.get_layer("bn").set_weights([np.full(4, 2.0), np.zeros(4), np.full(4, 0.1), np.array([1e-8, 1.0, 4.0, 9.0])])
    before = conv.predict(x, verbose=0)
    assert equalize_batchnorm_scales(conv) == [{"layer": "bn", "before": "c1", "after": "c2", "channels": 4}]
    np.testing.assert_allclose(conv.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    # no ReLU (a converter folds that normalisation into the layer before), a leaky one, or no layer with weights
    # after it: nothing to move, nothing changed
    for middle, last in (
        (keras.layers.Activation("linear"), keras.layers.Conv2D(3, 1)),
        (keras.layers.LeakyReLU(), keras.layers.Conv2D(3, 1)),
        (keras.layers.ReLU(), keras.layers.MaxPooling2D()),
    ):
        other = _sequential(keras.layers.Conv2D(4, 3), middle, keras.layers.BatchNormalization(), last)
        weights = [w.copy() for w in other.get_weights()]
        assert equalize_batchnorm_scales(other) == []
        assert all((a == b).all() for a, b in zip(weights, other.get_weights()))


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
    assert equalize_batchnorm_scales(net) == []
