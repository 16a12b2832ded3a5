"""The input contract (toolkit.contract): the presets are keras.applications' own preprocessing, the option's forms
parse or fail in one line, a model that rescales inside itself is recognised, the workspace records and finds the
contract, and a Keras reference at chance level fails verification."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit import contract
from toolkit.contract import UNIT, InputContract, decide, leading_rescaling, parse, preset
from toolkit.errors import ToolkitError
from toolkit.export.metadata import facts
from toolkit.parity import Reference
from toolkit.workspace import Workspace

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def test_unit_is_the_reference_models_pixel_over_255_bit_for_bit():
    grey = PIXELS[..., 0]
    assert np.array_equal(UNIT.apply(grey), (grey.astype(np.float32) / 255.0)[..., None])
    assert np.array_equal(UNIT.apply(PIXELS), PIXELS.astype(np.float32) / 255.0)


@pytest.mark.parametrize(
    "name, module", [("tf", "mobilenet_v2"), ("torch", "densenet"), ("caffe", "resnet50"), ("tf", "resnet_v2")]
)
def test_each_preset_is_keras_applications_own_preprocess_input(name, module):
    import importlib

    keras_module = importlib.import_module(f"keras.applications.{module}")
    expected = np.asarray(keras_module.preprocess_input(PIXELS.astype(np.float32).copy()))
    np.testing.assert_allclose(preset(name).apply(PIXELS), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(contract.PRESETS))
def test_pixels_are_given_back_exactly_from_the_inputs(name):
    c = preset(name)
    assert np.array_equal(c.pixels(c.apply(PIXELS)), PIXELS)
    lo, hi = c.range
    x = c.apply(PIXELS)
    assert lo - 1e-6 <= x.min() and x.max() <= hi + 1e-6


def test_the_option_takes_presets_scale_offset_and_mean_std():
    assert parse("TF").maps_like(preset("tf"), 3)
    assert parse("scale=0.00784313725490196,offset=-1").maps_like(preset("tf"), 1)  # x = pixel / 127.5 - 1
    custom = parse("mean=123.675:116.28:103.53,std=58.395:57.12:57.375")
    assert custom.maps_like(preset("torch"), 3) and custom.source == "user"
    assert parse("mean=103.939:116.779:123.68,std=1:1:1,bgr").maps_like(preset("caffe"), 3)
    for bad in ("imagenet", "scale=0", "scale=a", "mean=1,std=0", "mean=1:2,std=1:2", "offset=3", "mean=1"):
        with pytest.raises(ToolkitError) as e:
            parse(bad)
        assert "\n" not in str(e.value)


def test_a_grey_model_refuses_a_per_channel_contract():
    with pytest.raises(ToolkitError, match="the model takes 1"):
        preset("torch").apply(PIXELS[..., 0])


def test_a_model_that_rescales_inside_itself_takes_raw_pixels():
    import keras

    inside = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten()])
    plain = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    nested = keras.Sequential([keras.Input((32, 32, 3)), inside, keras.layers.Dense(2)])
    assert leading_rescaling(inside) and leading_rescaling(nested) and leading_rescaling(plain) is None
    assert decide(nested, None).name == "raw" and decide(nested, None).source == "model"
    assert decide(plain, None) is UNIT
    assert decide(nested, preset("tf")).name == "tf"  # the user's word wins


@pytest.mark.parametrize(
    "family, raw",
    [("MobileNetV3Small", True), ("EfficientNetB0", True), ("MobileNetV2", False), ("ResNet50", False)],
)
def test_keras_applications_families_are_told_apart(family, raw):
    import keras

    model = getattr(keras.applications, family)(weights=None, input_shape=(32, 32, 3), classes=4)
    assert (decide(model, None).name == "raw") is raw


def test_the_workspace_finds_the_recorded_contract(tmp_path):
    ws = Workspace.of(tmp_path)
    assert ws.recorded_contract() is None
    legacy = {"artifacts": {}, "preprocessing": {"scaling": "float32 = uint8 pixel / 255, range [0, 1]"}}
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    assert ws.recorded_contract() is UNIT  # a manifest written before contracts were recorded
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {}, "input_contract": preset("tf").to_dict()}))
    assert Workspace.of(tmp_path).input_contract().maps_like(preset("tf"), 3)
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {}, "input_contract": {"name": "x"}}))
    with pytest.raises(ToolkitError, match="manifest.json: 'input_contract' is not an input contract"):
        Workspace.of(tmp_path).recorded_contract()


def test_the_metadata_carries_the_contracts_mean_and_std():
    about = facts("m", "float32", ["a", "b"], {}, 3, preset("torch"))
    norm = json.loads(about["normalization"])
    np.testing.assert_allclose(norm["mean"], [123.675, 116.28, 103.53])
    np.testing.assert_allclose(norm["std"], [58.395, 57.12, 57.375])
    assert json.loads(about["input_contract"])["name"] == "torch"
    assert json.loads(facts("m", "int8", ["a", "b"], {}, 1)["normalization"])["std"] == [255.0]


def _reference(labels: np.ndarray, predicted: np.ndarray, allow: bool = False) -> Reference:
    probabilities = np.eye(4, dtype=np.float32)[predicted]
    return Reference(np.zeros((len(labels), 2, 2, 1), np.float32), labels, probabilities, allow_chance=allow)


def test_a_reference_at_chance_level_proves_nothing():
    labels = np.arange(400) % 4
    always_one = _reference(labels, np.ones(400, int))  # 25%: the 'coffee for everything' model
    assert always_one.at_chance and "chance level" in always_one.at_chance
    lucky = _reference(labels, np.where(np.arange(400) < 120, labels, 1))  # ~44%: clearly better than guessing
    assert lucky.at_chance is None
    assert _reference(labels, labels).at_chance is None


def test_an_artifact_that_agrees_with_a_reference_at_chance_fails_unless_allowed():
    from types import SimpleNamespace

    from toolkit.parity import compare

    labels = np.arange(400) % 4
    record = SimpleNamespace(
        file="m.float32.tflite", format="tflite", variant="float32", runtime="litert", made_with={}
    )
    for allow in (False, True):
        ref = _reference(labels, np.ones(400, int), allow)
        result = compare(record, ref.probabilities, ref)
        assert result.agreement == 1.0 and result.passed is allow
        assert ("chance level" in " ".join(result.problems)) is not allow
        assert ("--allow-chance" in result.criteria) is allow


def test_a_recorded_contract_that_is_damaged_fails_in_one_line():
    with pytest.raises(ToolkitError, match="std positive"):
        InputContract("custom", (0.0,), (0.0,))


def test_what_an_app_does_to_its_pixels_for_each_file():
    from toolkit.artifacts import TensorSpec
    from toolkit.contract import app_input

    def spec(dtype, scale=None, zero=None, channels=1):
        q = None if scale is None else {"scale": scale, "zero_point": zero}
        return TensorSpec("x", [1, 8, 8, channels], dtype, q)

    assert app_input(UNIT, spec("float32")) == UNIT.describe()
    assert "q = pixel - 128" in app_input(UNIT, spec("int8", float(np.float32(1 / 255)), -128))  # the reference
    assert app_input(preset("raw"), spec("uint8", 1.0, 0, 3)).startswith("nothing")
    assert "q = pixel - 128" in app_input(preset("raw"), spec("int8", 1.0, -128, 3))
    inexact = app_input(preset("tf"), spec("int8", 2 / 255, 0, 3))  # the .5 of 127.5 needs the float maths
    assert "round(x / " in inexact and "pixel - mean" in inexact


def test_on_a_small_split_one_borderline_image_passes_and_a_real_loss_still_fails():
    """397 test images: one flipped image is 0.25 pp, more than float16's 0.1 pp; on MNIST's 10,000 the criteria
    stay as they are."""
    from types import SimpleNamespace

    from toolkit.parity import CRITERIA, compare, on_split

    labels = np.arange(397) % 4
    record = SimpleNamespace(file="m.tflite", format="tflite", variant="float16", runtime="litert", made_with={})
    probabilities = np.full((397, 4), 0.02, np.float32)
    probabilities[np.arange(397), labels] = 0.94  # Keras: right and confident on every image
    ref = Reference(np.zeros((397, 2, 2, 1), np.float32), labels, probabilities)
    for flips, passes in ((1, True), (3, False)):
        other = probabilities.copy()
        other[:flips] = np.roll(other[:flips], 1, axis=1)  # a wrong top class on the first `flips` images
        result = compare(record, other, ref)
        assert result.passed is passes, (flips, result.problems)
        assert "one image allowed on this split of 397" in result.criteria
    assert on_split(CRITERIA["float16"], 10_000, 9_900) == (CRITERIA["float16"], "")
    assert on_split(CRITERIA["int8"], 10_000, 9_900) == (CRITERIA["int8"], "")
    assert on_split(CRITERIA["float32"], 10_000, 9_900) == (CRITERIA["float32"], "")


def test_a_reference_far_below_its_own_training_accuracy_is_suspect_too():
    from toolkit.verify import Verification

    labels = np.arange(400) % 4
    half = np.where(np.arange(400) < 240, labels, (labels + 1) % 4)  # 60%: above chance, far below 99%
    probabilities = np.eye(4, dtype=np.float32)[half]
    ref = Reference(np.zeros((400, 2, 2, 1), np.float32), labels, probabilities, trained_accuracy=0.99)
    assert "far below the 0.9900 it was trained to" in ref.at_chance
    assert Reference(ref.images, labels, probabilities, trained_accuracy=0.65).at_chance is None
    from types import SimpleNamespace

    from toolkit.parity import compare

    record = SimpleNamespace(file="m.tflite", format="tflite", variant="float32", runtime="litert", made_with={})
    outcome = Verification([compare(record, probabilities, ref), compare(record, probabilities, ref)])
    with pytest.raises(ToolkitError) as e:
        outcome.raise_if_failed()
    assert str(e.value).startswith("the Keras model scores 0.6000") and "no file certified (2 failed)" in str(e.value)
