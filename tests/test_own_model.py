"""Any Keras image classifier, not only the reference CNN: the checks a user's model meets before any conversion
(one line each, nothing written), FLOPs counted from the model's own layers against hand counts, image-folder
datasets, and (end-to-end tier) two models unlike the reference through every command, micro and web included."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import write_idx
from tests.helpers import one_line_error, parity_holds
from toolkit import data
from toolkit.backend import keras as _keras
from toolkit.cli import app
from toolkit.errors import ToolkitError
from toolkit.model import (
    LOGITS,
    NO_LAYER,
    PROBABILITIES,
    flops_by_layer,
    flops_per_image,
    interface_of,
    load_keras_model,
    with_fixed_batch,
)

runner = CliRunner()
keras = _keras()
layers = keras.layers


# ------------------------------------------------------------------------------------------- models


def rgb_model(classes: int = 5):
    """32x32x3 -> 5: layers the reference lacks (separable and depthwise convolution, a residual add, global
    average pooling)."""
    inputs = keras.Input((32, 32, 3), name="photo")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="separable")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(y)
    x = layers.Add(name="residual")([x, y])
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="Shapes-Net")


def grey_logits_model(classes: int = 4):
    """20x20x1 -> 4, sequential, ending in logits (a linear last layer)."""
    return keras.Sequential(
        [
            keras.Input((20, 20, 1)),
            layers.Conv2D(6, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(16, activation="relu"),
            layers.Dense(classes),
        ],
        name="bars",
    )


def save(model, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / name)
    return folder / name


# ------------------------------------------------------------------------------------------ datasets

COLOURS = [(230, 40, 40), (40, 200, 40), (40, 60, 230), (230, 220, 40), (200, 40, 220)]
NAMES = ["apple", "bird", "cloud", "dog", "egg"]


def shapes_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """An image folder: a coloured square per class on noise, PNG and JPEG mixed."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(NAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 50, (32, 32, 3)).astype(np.uint8)
                y, x = rng.integers(2, 14, 2)
                img[y : y + 16, x : x + 16] = COLOURS[c]
                Image.fromarray(img).save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=95)
    return root


def bars_idx(root: Path, seed: int = 0) -> Path:
    """An IDX dataset of 20x20 grey images in 4 classes: a horizontal bar, a vertical bar, a diagonal, a box."""
    rng = np.random.default_rng(seed)

    def image(c: int) -> np.ndarray:
        img = rng.integers(0, 40, (20, 20)).astype(np.uint8)
        o = int(rng.integers(2, 8))
        if c == 0:
            img[o : o + 3, :] = 255
        elif c == 1:
            img[:, o : o + 3] = 255
        elif c == 2:
            np.fill_diagonal(img, 255)
        else:
            img[o : o + 8, o : o + 8] = 200
        return img

    def split(n: int):
        y = (np.arange(n) % 4).astype(np.uint8)
        return np.stack([image(int(c)) for c in y]), y

    (x, y), (xt, yt) = split(400), split(200)
    return write_idx(root, x, y, xt, yt)


# ------------------------------------------------------------------------------------------ unit tier


def test_flops_match_a_hand_count_for_each_layer_kind():
    inputs = keras.Input((8, 8, 2))
    a = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)  # linear: no activation cost
    b = layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    c = layers.Add(name="add")([a, b])
    d = layers.SeparableConv2D(6, 3, padding="same", name="sep")(c)
    e = layers.GlobalAveragePooling2D(name="gap")(d)
    out = layers.Dense(3, activation="softmax", name="dense")(e)
    flops = flops_by_layer(keras.Model(inputs, out))
    assert flops == {
        "conv": 2 * (3 * 3 * 2) * (8 * 8 * 4) + 8 * 8 * 4,  # multiply-adds over a 3x3x2 window, and the bias
        "dw": 2 * (3 * 3) * (8 * 8 * 4) + 8 * 8 * 4,  # one 3x3 window per channel
        "add": 8 * 8 * 4,
        "sep": 2 * 9 * 4 * (8 * 8) + 2 * 4 * (8 * 8 * 6) + 8 * 8 * 6,  # depthwise, pointwise, bias
        "gap": 8 * 8 * 6 + 6,  # a sum over 64 positions and a divide per channel
        "dense": 2 * 6 * 3 + 3 + 3 * 3,  # multiply-adds, bias, softmax (exp, sum, divide)
    }


def test_the_reference_count_is_unchanged():
    from toolkit.model import build_model

    assert flops_per_image(build_model()) == 15_689_096


def test_interfaces_and_a_fixed_batch_keep_the_users_graph():
    rgb, grey = rgb_model(), grey_logits_model()
    assert interface_of(rgb).to_dict() == {
        "name": "shapes_net",
        "input_shape": [32, 32, 3],
        "classes": 5,
        "output": PROBABILITIES,
    }
    assert interface_of(grey).output == LOGITS and interface_of(grey).input_shape == (20, 20, 1)
    for model in (rgb, grey):
        fixed = with_fixed_batch(model, 1)
        assert (
            fixed.inputs[0].shape[0] == 1
            and [type(x).__name__ for x in fixed.layers][-3:] == [type(x).__name__ for x in model.layers][-3:]
        )
        x = np.random.default_rng(0).random((1, *model.inputs[0].shape[1:]), dtype=np.float32)
        np.testing.assert_allclose(fixed(x), model(x), atol=1e-6)


class Scaled(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def _two_inputs():
    a, b = keras.Input((16, 16, 1)), keras.Input((16, 16, 1))
    x = layers.Flatten()(layers.Add()([a, b]))
    return keras.Model([a, b], layers.Dense(3, activation="softmax")(x))


def _flat(shape, head):
    inputs = keras.Input(shape)
    x = layers.Flatten()(inputs) if len(shape) > 1 else inputs
    return keras.Model(inputs, head(x))


REFUSED = {
    "custom": (
        lambda: keras.Sequential([keras.Input((16, 16, 1)), Scaled(), layers.Flatten(), layers.Dense(3)]),
        "the custom layer",
    ),
    "two-inputs": (_two_inputs, "2 input(s) and 1 output(s)"),
    "regression": (lambda: _flat((16, 16, 1), lambda x: layers.Dense(1)(x)), "not (batch, classes)"),
    "five-d": (lambda: _flat((4, 16, 16, 1), lambda x: layers.Dense(3, activation="softmax")(x)), "not an image"),
    "four-channels": (lambda: _flat((16, 16, 4), lambda x: layers.Dense(3, activation="softmax")(x)), "4 channels"),
    "sigmoid": (lambda: _flat((16, 16, 1), lambda x: layers.Dense(3, activation="sigmoid")(x)), "ends in sigmoid"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_models_that_are_not_image_classifiers_are_refused_before_any_conversion(case, tmp_path, tiny_idx):
    make, fragment = REFUSED[case]
    if case == "custom":
        keras.saving.get_custom_objects().clear()
    model = save(make(), tmp_path / "in", "model.keras")
    ws = tmp_path / "ws"
    result = runner.invoke(
        app, ["export", "--model", str(model), "--data-dir", str(tiny_idx), "--dataset", "idx", "--dir", str(ws)]
    )
    one_line_error(result, str(model), fragment)
    assert not ws.exists() or not any(ws.iterdir())  # nothing written, not even the copy of the model


def test_logits_are_refused_when_asked(tmp_path):
    model = save(grey_logits_model(), tmp_path / "in", "bars.keras")
    folder = bars_idx(tmp_path / "bars")
    result = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(model),
            "--logits",
            "refuse",
            "--data-dir",
            str(folder),
            "--dataset",
            "idx",
            "--dir",
            str(tmp_path / "ws"),
        ],
    )
    one_line_error(result, "outputs logits, not probabilities", "--logits wrap")


def test_a_model_for_other_data_is_refused(tmp_path, tiny_idx):
    model = save(grey_logits_model(), tmp_path / "in", "bars.keras")
    result = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(model),
            "--data-dir",
            str(tiny_idx),
            "--dataset",
            "idx",
            "--dir",
            str(tmp_path / "ws"),
        ],
    )
    one_line_error(result, "the model takes 20x20x1 images", "28x28x1")


def test_an_image_folder_is_a_dataset(tmp_path):
    root = shapes_folder(tmp_path / "shapes", {"train": 6, "test": 2})
    ds = data.load(root)
    assert ds.name == "folder" and ds.class_names == NAMES and ds.image_shape == (32, 32, 3)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 10 and sorted(set(ds.y_test.tolist())) == [0, 1, 2, 3, 4]
    assert data.load(root).sha256 == ds.sha256 != data.load(root, image_size=(16, 16)).sha256
    assert data.load(root, image_size=(16, 24)).image_shape == (16, 24, 3)
    only_train = shapes_folder(tmp_path / "split", {"train": 10})
    split = data.load(only_train)  # a seeded fifth of each class is the test split
    assert len(split.y_test) == 10 and len(split.y_train) == 40
    assert np.array_equal(split.y_test, data.load(only_train).y_test)


def test_a_grey_folder_stays_grey(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "g" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 10), 40 * i, np.uint8)).save(tmp_path / "g" / "train" / c / f"{i}.png")
    assert data.load(tmp_path / "g").image_shape == (12, 10, 1)


def _folder_with(tmp_path: Path, change) -> Path:
    root = shapes_folder(tmp_path / "bad", {"train": 3})
    change(root)
    return root


BAD_FOLDERS = {
    "empty class": (lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()], "no images", "dog"),
    "unreadable": (lambda r: (r / "train" / "egg" / "1.png").write_bytes(b"not a png"), "1.png", "not an image"),
    "mixed sizes": (
        lambda r: Image.new("RGB", (20, 20)).save(r / "train" / "egg" / "1.png"),
        "mixed sizes",
        "--image-size",
    ),
    "one class": (
        lambda r: [__import__("shutil").rmtree(p) for p in (r / "train").iterdir() if p.name != "apple"],
        "1 class folder",
        "at least 2",
    ),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_image_folder_is_one_line(case, tmp_path):
    change, *fragments = BAD_FOLDERS[case]
    root = _folder_with(tmp_path, change)
    result = runner.invoke(app, ["data", "--data-dir", str(root)])
    one_line_error(result, *fragments)


def test_an_idx_dataset_of_one_class_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 16, 16), dtype=np.uint8)
    folder = write_idx(tmp_path / "one", img, np.zeros(20, np.uint8), img[:5], np.zeros(5, np.uint8))
    with pytest.raises(ToolkitError, match="one class only"):
        data.load(folder, dataset="idx")


# ------------------------------------------------------------------------------------ end-to-end tier


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _through_every_command(tmp_path, model_file: Path, data_args: list[str], expected_flops: int, image: Path):
    ws = tmp_path / "ws"
    d = [*data_args, "--dir", str(ws)]
    train = ["train", "--model", str(model_file), "--epochs", "30", "--batch-size", "16", "--learning-rate", "0.01"]
    train += ["--warmup-epochs", "1"]  # a warm-up to that high rate, as the run was tuned
    _ok(runner.invoke(app, [*train, *d]))
    exported = runner.invoke(app, ["export", "--format", "all", *d, "--json", str(tmp_path / "export.json")])
    assert exported.exit_code in (0, 1), exported.output  # 1: a verification failed; judged below
    verified = json.loads((tmp_path / "export.json").read_text())
    runtimes = {r["runtime"] for r in verified["results"]}
    assert {"litert", "onnxruntime", "litert-micro", "litertjs-wasm", "onnxruntime-web-wasm"} <= runtimes
    # a small test split of a small model: one image may cross an int8 criterion; more is a broken export
    assert all(parity_holds(SimpleNamespace(**r), flips=2) for r in verified["results"]), exported.output
    header = json.loads((ws / "manifest.json").read_text())
    _ok(runner.invoke(app, ["quantize", "--budget", "1", "--recipe", "int8-dynamic", *d]))
    _ok(
        runner.invoke(
            app,
            [
                "benchmark",
                "--batch-sizes",
                "1",
                "--threads",
                "1",
                "--iterations",
                "30",
                *d,
                "--json",
                str(tmp_path / "bench.json"),
            ],
        )
    )
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["settings"]["flops_per_image"] == header["model"]["flops_per_image"] == expected_flops
    _ok(runner.invoke(app, ["profile", "--calls", "100", *d, "--json", str(tmp_path / "profile.json")]))
    profiled = {r["layer"]: r for r in json.loads((tmp_path / "profile.json").read_text())["rows"]}
    layer_names = {layer.name for layer in load_keras_model(ws / "model.keras").layers}
    assert set(profiled) - {NO_LAYER} <= layer_names  # ONNX Runtime's nodes given to the user's own layers
    predicted = runner.invoke(app, ["predict", str(image), "--dir", str(ws), "--json", "-"])
    _ok(predicted)
    _ok(runner.invoke(app, ["report", *d]))
    card = (ws / "MODEL_CARD.md").read_text()
    return ws, header, json.loads(predicted.stdout)["predictions"], profiled, card


@pytest.mark.slow
@pytest.mark.browser
def test_an_rgb_model_on_an_image_folder_goes_through_every_command(tmp_path):
    root = shapes_folder(tmp_path / "shapes", {"train": 40, "test": 20})
    _keras().utils.set_random_seed(0)  # the initial weights, whatever ran before in this process
    model = rgb_model()
    hand = (
        2 * 27 * 32 * 32 * 8
        + 2 * 32 * 32 * 8  # stem: multiply-adds, bias, relu
        + 2 * 9 * 8 * 1024
        + 2 * 8 * 1024 * 8
        + 2 * 1024 * 8  # separable: depthwise, pointwise, bias, relu
        + 2 * 9 * 1024 * 8
        + 1024 * 8  # depthwise and its bias
        + 1024 * 8
        + 3 * 256 * 8  # the add; 2x2 max pooling: 3 comparisons per output
        + 256 * 8
        + 8  # global average pooling
        + 2 * 8 * 5
        + 5
        + 15
    )  # dense, bias, softmax
    ws, header, predicted, profiled, card = _through_every_command(
        tmp_path,
        save(model, tmp_path / "in", "shapes.keras"),
        ["--data-dir", str(root)],
        hand,
        root / "test" / "egg" / "1.png",
    )
    assert header["labels"] == NAMES and header["model"]["name"] == "shapes_net"
    assert header["preprocessing"]["channel_order"] == "RGB"
    assert (ws / "shapes_net.micro.c").is_file() and '"egg"' in (ws / "shapes_net.micro.h").read_text()
    site = json.loads((ws / "web" / "models.json").read_text())
    assert site["mode"] == "rgb" and site["labels"] == NAMES and site["input_shape"] == [32, 32, 3]
    assert predicted[0]["label"] == "egg"
    # ONNX Runtime fuses the depthwise convolution and the add into one unnamed node; the rest keep their layer
    assert {"stem", "separable", "pool", "gap", "classes"} <= set(profiled)
    # the page of an RGB model takes a picture: chosen in the file input, classified, its label shown
    from toolkit.web import chromium, server

    with server.serving(ws / "web") as url, chromium.launch() as browser:
        app = chromium.open_app(browser, url, "litertjs-float32")
        try:
            assert app.page.locator("#pad").is_hidden() and app.page.locator("#picture").is_visible()
            app.page.set_input_files("#picture", str(root / "test" / "egg" / "1.png"))
            app.page.wait_for_function("() => document.getElementById('digit').textContent !== '?'")
            assert app.page.locator("#digit").text_content() == "egg"
        finally:
            app.close()
    assert "# Model card: Shapes-Net" in card and "5 classes: apple, bird, cloud, dog, egg" in card


@pytest.mark.slow
@pytest.mark.browser
def test_a_grey_logits_model_on_idx_data_goes_through_every_command(tmp_path):
    folder = bars_idx(tmp_path / "bars")
    hand = (
        2 * 9 * 18 * 18 * 6
        + 2 * 18 * 18 * 6  # conv: multiply-adds, bias, relu
        + 3 * 9 * 9 * 6  # 2x2 max pooling
        + 2 * 486 * 16
        + 2 * 16  # dense, bias, relu
        + 2 * 16 * 4
        + 4  # the logits layer
        + 3 * 4
    )  # the softmax every export adds
    image = tmp_path / "bar.png"
    bar = np.random.default_rng(1).integers(0, 40, (20, 20)).astype(np.uint8)  # the training images' background
    bar[:, 5:8] = 255  # a vertical bar where the training images have theirs: class 1
    Image.fromarray(bar).save(image)
    _keras().utils.set_random_seed(0)  # the initial weights, whatever ran before in this process
    ws, header, predicted, profiled, _ = _through_every_command(
        tmp_path,
        save(grey_logits_model(), tmp_path / "in", "bars.keras"),
        ["--data-dir", str(folder), "--dataset", "idx"],
        hand,
        image,
    )
    assert header["model"]["output"].startswith("logits") and header["labels"] == ["0", "1", "2", "3"]
    assert json.loads((ws / "web" / "models.json").read_text())["mode"] == "grey"
    assert predicted[0]["label"] == "1" and 0 < predicted[0]["confidence"] <= 1  # probabilities, not logits
    costly = {n for n, f in flops_by_layer(load_keras_model(ws / "model.keras")).items() if f > 0}
    assert costly <= set(profiled)


def test_an_operator_a_runtime_lacks_refuses_that_format_only(tmp_path):
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.Activation("gelu", name="act")(x)  # LiteRT runs GELU; tflite-micro has no kernel, tf2onnx no Erfc
    outputs = layers.Dense(3, activation="softmax", name="classes")(layers.Flatten()(x))
    model = save(keras.Model(inputs, outputs, name="gelu_net"), tmp_path / "in", "gelu.keras")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16), dtype=np.uint8)
    labels = (np.arange(60) % 3).astype(np.uint8)
    folder = write_idx(tmp_path / "data", images, labels, images[:12], labels[:12])
    ws = tmp_path / "ws"
    args = ["--format", "tflite,onnx,micro", "--no-verify", "--calibration-size", "30", "--dataset", "idx"]
    result = runner.invoke(app, ["export", "--model", str(model), *args, "--data-dir", str(folder), "--dir", str(ws)])
    one_line_error(
        result,
        "onnx: tf2onnx cannot convert operator Erfc of layer 'act'",
        "micro: LiteRT for Microcontrollers cannot run operator GELU of layer 'act'",
        "the other formats are exported",
    )
    listed = json.loads((ws / "manifest.json").read_text())["artifacts"]
    assert set(listed) == {f"gelu_net.{v}.tflite" for v in ("float32", "float16", "dynamic", "int8")}
    assert not list(ws.glob("*.micro.*")) and not list(ws.glob("*.onnx"))  # a refused format leaves nothing


def test_the_examples_prepare_any_models_input(tmp_path):
    import importlib.util

    from tests.conftest import REPO

    for app_file in ("onnx_app.py", "litert_app.py"):
        spec = importlib.util.spec_from_file_location(app_file[:-3], REPO / "examples" / app_file)
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        rgb = np.zeros((6, 8, 3), np.uint8)
        rgb[..., 0] = 200
        ppm = tmp_path / "red.ppm"
        ppm.write_bytes(b"P6\n8 6\n255\n" + rgb.tobytes())
        assert np.array_equal(example.read_pgm(ppm), rgb)
        x = example.to_input(example.read_pgm(ppm), (12, 16, 3))  # resized (bilinear) and scaled
        assert x.shape == (1, 12, 16, 3) and np.allclose(x[..., 0], 200 / 255) and np.allclose(x[..., 1:], 0)
        grey = example.to_input(example.read_pgm(ppm), (6, 8, 1))  # RGB to the model's one channel
        assert grey.shape == (1, 6, 8, 1) and np.allclose(grey, 0.299 * 200 / 255, atol=1e-5)
