"""The reference architecture, exactly as specified."""

from toolkit.model import build_model, count_params, flops_per_image

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
