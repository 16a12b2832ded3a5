"""predict: real image files in every common form give the same digit; bad images give clean errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from toolkit import preprocess, runtimes
from toolkit.cli import app
from toolkit.data import to_model_input
from toolkit.errors import ToolkitError
from toolkit.predict import best_artifact, classify


def _com(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(img.shape)
    return float((ys * img).sum() / img.sum()), float((xs * img).sum() / img.sum())


def test_mnist_images_pass_through_almost_unchanged(mnist):
    x = mnist.x_test[:50]
    for img in x:
        out = preprocess.normalise(img.astype(np.float64))[..., 0]
        assert out.shape == (28, 28) and out.dtype == np.float32
        cy, cx = _com(out)
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75
        assert np.abs(out - img / 255.0).mean() < 0.06


@settings(max_examples=40, deadline=None)
@given(
    scale=st.integers(1, 6),
    dy=st.integers(0, 60),
    dx=st.integers(0, 60),
    invert=st.booleans(),
    index=st.integers(0, 99),
)
def test_any_placement_and_polarity_is_centred_like_mnist(mnist, scale, dy, dx, invert, index):
    digit = np.kron(mnist.x_test[index].astype(np.float64), np.ones((scale, scale)))
    canvas = np.zeros((28 * scale + 60, 28 * scale + 60))
    canvas[dy : dy + digit.shape[0], dx : dx + digit.shape[1]] = digit
    if invert:
        canvas = 255 - canvas
    out = preprocess.normalise(canvas)[..., 0]
    assert out.shape == (28, 28) and 0 <= out.min() and out.max() <= 1
    cy, cx = _com(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    ink = np.argwhere(out > 0.25)
    assert (ink.max(0) - ink.min(0)).max() <= 20  # fitted into 20x20


def _correct_indices(workspace, mnist, n=8):
    runner = runtimes.load(best_artifact(workspace))
    p = runner.run(to_model_input(mnist.x_test[:100])).argmax(1)
    return [i for i in range(100) if p[i] == mnist.y_test[i]][:n]


def test_every_image_form_gives_the_same_digit(exported_workspace, mnist, tmp_path):
    workspace, _ = exported_workspace
    files, labels = [], []
    for k, i in enumerate(_correct_indices(workspace, mnist)):
        img, label = mnist.x_test[i], str(mnist.y_test[i])
        big = np.kron(255 - img, np.ones((5, 5), np.uint8))  # dark on light, 140x140
        page = np.full((220, 260), 255, np.uint8)
        page[30:170, 70:210] = big  # off-centre on a larger page
        forms = {
            "plain.png": Image.fromarray(img),
            "page.jpg": Image.fromarray(page),
            "colour.png": Image.fromarray(np.stack([page, page, np.full_like(page, 255)], -1)),  # blue-ish paper
            "alpha.png": Image.fromarray(np.dstack([np.zeros((28, 28, 3), np.uint8), img])),  # ink in the alpha channel
            "sixteen.png": Image.fromarray(img.astype(np.uint16) * 257),
        }
        for name, im in forms.items():
            path = tmp_path / f"{k}_{name}"
            im.save(path)
            files.append(path)
            labels.append(label)
    assert Image.open(files[4]).mode.startswith("I")  # the 16-bit file really is 16-bit
    results = classify(files, best_artifact(workspace))
    got = [r.label for r in results]
    assert np.mean(np.array(got) == np.array(labels)) >= 0.95, list(zip(files, got, labels))
    assert all(0 < r.confidence <= 1 and len(r.top) == 3 for r in results)


def test_predict_command_json(exported_workspace, mnist, tmp_path):
    workspace, _ = exported_workspace
    i = _correct_indices(workspace, mnist, 1)[0]
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.x_test[i]).save(path)
    result = CliRunner().invoke(
        app, ["predict", str(path), "--dir", str(workspace), "--json", str(tmp_path / "p.json"), "--top", "2"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "p.json").read_text())
    assert out["predictions"][0]["label"] == str(mnist.y_test[i]) and len(out["predictions"][0]["top"]) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is not an image", r"not an image \(PNG, JPEG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "damaged image|not an image"),
    ],
)
def test_bad_image_files(tmp_path, content, message):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(ToolkitError, match=message):
        preprocess.prepare(path)


def test_blank_and_huge_images(tmp_path):
    Image.fromarray(np.full((50, 50), 255, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ToolkitError, match="no digit found"):
        preprocess.prepare(tmp_path / "blank.png")
    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")
    with pytest.raises(ToolkitError, match="larger than"):
        preprocess.prepare(tmp_path / "huge.png")


def test_a_huge_image_is_refused_with_its_size(tmp_path):
    from PIL import Image

    Image.new("L", (9000, 9000)).save(tmp_path / "huge.png")  # over twice the limit: PIL itself would refuse it
    with pytest.raises(ToolkitError, match=r"huge.png: image is 9000x9000, larger than 40,000,000 pixels$"):
        preprocess.prepare(tmp_path / "huge.png")
    Image.new("L", (7000, 6000)).save(tmp_path / "big.png")
    with pytest.raises(ToolkitError, match=r"big.png: image is 7000x6000, larger than 40,000,000 pixels$"):
        preprocess.prepare(tmp_path / "big.png")
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(tmp_path / "digit.png")
    assert preprocess.prepare(tmp_path / "digit.png").shape == (28, 28, 1)


def test_a_model_giving_nan_still_prints_strict_json(tmp_path):
    from toolkit.backend import keras as _keras

    keras = _keras()
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.set_weights([np.full(w.shape, np.nan, np.float32) for w in model.get_weights()])
    model.save(tmp_path / "nan.keras")
    image = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 8)).save(image)
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(tmp_path / "nan.keras"), "--json", "-"])
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    out = json.loads(result.stdout, parse_constant=refuse)  # NaN and Infinity are not JSON: they must be null
    assert out["predictions"][0]["confidence"] is None
