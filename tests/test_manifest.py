"""toolkit.manifest, the record every command trusts before it runs a file: a changed artifact is refused by
every command, no entry leads outside the workspace, a malformed manifest is a one-line error, and concurrent
writers lose nothing."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.helpers import clean_failure, one_line_error
from toolkit import manifest, predict, report, runtimes
from toolkit.bench import benchmark as bench
from toolkit.cli import app
from toolkit.errors import ToolkitError

DIGIT = Path(__file__).resolve().parents[1] / "examples" / "digits" / "test00001_label2.pgm"


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_artifact_is_refused_by_every_command(workspace, mnist, mnist_dir, exported_workspace):
    target = workspace / "mnist_cnn.dynamic.tflite"
    _flip_a_byte(target)
    for run in (
        lambda: predict.classify([DIGIT], target),
        lambda: report.report_artifact(workspace, mnist, target),
        lambda: bench.measure(workspace, mnist, [1], [1], 5, 1, models=[target]),
    ):
        with pytest.raises(ToolkitError, match="SHA-256 differs from the manifest"):
            run()
    # the default of predict (the best verified artifact) and of benchmark (every artifact) are checked too
    shutil.copy(exported_workspace[0] / target.name, target)
    best = predict.best_artifact(workspace)
    _flip_a_byte(best)
    out = clean_failure(CliRunner().invoke(app, ["predict", str(DIGIT), "--dir", str(workspace)]))
    assert "SHA-256 differs" in out
    out = clean_failure(
        CliRunner().invoke(
            app, ["benchmark", "--iterations", "5", "--dir", str(workspace)], env={"TOOLKIT_DATA_DIR": str(mnist_dir)}
        )
    )
    assert "SHA-256 differs" in out


def test_a_file_in_no_manifest_runs(workspace, tmp_path):
    loose = tmp_path / "loose" / "model.tflite"
    loose.parent.mkdir()
    shutil.copy(workspace / "mnist_cnn.float32.tflite", loose)
    assert manifest.record_of(loose) is None
    assert predict.classify([DIGIT], loose)[0].label == "2"


@pytest.mark.parametrize("file", ["../m/x.tflite", "/etc/passwd", "../../../../etc/passwd", "sub/../../x.onnx"])
def test_manifest_paths_cannot_leave_the_workspace(workspace, mnist_dir, tmp_path, file):
    outside = tmp_path / "m" / "x.tflite"
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(workspace / "mnist_cnn.float32.tflite", outside)
    m = json.loads((workspace / "manifest.json").read_text())
    m["artifacts"]["mnist_cnn.float32.tflite"]["file"] = file
    (workspace / "manifest.json").write_text(json.dumps(m))
    env = {"TOOLKIT_DATA_DIR": str(mnist_dir)}
    for args in (["verify", "--limit", "20"], ["predict", str(DIGIT)], ["benchmark", "--iterations", "5"]):
        out = clean_failure(CliRunner().invoke(app, [*args, "--dir", str(workspace)], env=env))
        assert "workspace" in out and "refused" in out


def test_a_symlink_out_of_the_workspace_is_refused(workspace, tmp_path):
    target = workspace / "mnist_cnn.float32.tflite"
    outside = tmp_path / "elsewhere.tflite"
    shutil.move(target, outside)
    target.symlink_to(outside)
    with pytest.raises(ToolkitError, match="leads out of the workspace"):
        manifest.records(workspace)


def test_a_string_entry_and_a_bad_format_are_one_line_errors(workspace, mnist_dir):
    env = {"TOOLKIT_DATA_DIR": str(mnist_dir)}
    for fmt in ("", ",,,"):
        result = CliRunner().invoke(app, ["export", "--format", fmt, "--dir", str(workspace)], env=env)
        assert result.exit_code == 1 and "no format given" in result.output
    m = json.loads((workspace / "manifest.json").read_text())
    m["artifacts"]["mnist_cnn.micro.c"] = "oops"
    (workspace / "manifest.json").write_text(json.dumps(m))
    before = (workspace / "mnist_cnn.float32.onnx").stat().st_mtime_ns
    for args in (["verify"], ["predict", str(DIGIT)], ["export", "--format", "onnx", "--no-verify"]):
        out = clean_failure(CliRunner().invoke(app, [*args, "--dir", str(workspace)], env=env))
        assert "malformed artifact entry" in out
    assert (workspace / "mnist_cnn.float32.onnx").stat().st_mtime_ns == before  # nothing rewritten


def test_json_to_a_folder_fails_before_the_work(workspace, tmp_path):
    out = clean_failure(
        CliRunner().invoke(app, ["predict", str(DIGIT), "--dir", str(workspace), "--json", str(tmp_path)])
    )
    assert str(tmp_path) in out and "Predictions" not in out


ENTRY_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.sampled_from(["/etc/passwd", "../../../../etc/passwd", "../outside.tflite", "a/../../b.onnx", "x\x00y"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entry=st.one_of(
        ENTRY_VALUES,
        st.fixed_dictionaries(
            {},
            optional={
                k: ENTRY_VALUES for k in ("file", "format", "runtime", "sha256", "bytes", "input", "output", "variant")
            },
        ),
    )
)
def test_generated_manifests_give_one_line_errors(exported_workspace, tmp_path_factory, tiny_idx, monkeypatch, entry):
    ws = tmp_path_factory.mktemp("hostile")
    shutil.copy(exported_workspace[0] / "mnist_cnn.float32.tflite", ws)
    (ws / "manifest.json").write_text(json.dumps({"schema": 1, "artifacts": {"x": entry}}))
    touched: list[Path] = []
    real_sha, real_load = manifest.file_sha256, runtimes.load
    monkeypatch.setattr(manifest, "file_sha256", lambda p: touched.append(Path(p)) or real_sha(p))
    monkeypatch.setattr(runtimes, "load", lambda p, *a, **k: touched.append(Path(p)) or real_load(p, *a, **k))
    env = {"TOOLKIT_DATA_DIR": str(tiny_idx)}
    for args in (
        ["verify", "--dataset", "idx"],
        ["predict", str(DIGIT)],
        ["benchmark", "--dataset", "idx", "--iterations", "5", "--no-keras"],
    ):
        result = CliRunner().invoke(app, [*args, "--dir", str(ws)], env=env)
        assert result.exit_code in (1, 2), (args, entry, result.output)
        assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) <= 1
    assert all(p.resolve().is_relative_to(ws.resolve()) or p == DIGIT for p in touched), touched


def test_a_workspace_path_that_is_not_utf8(exported_workspace, tmp_path):
    ws = tmp_path / os.fsdecode(b"ws-\xff\xfe")  # a Latin-1 name, as old file systems and archives make them
    ws.mkdir()
    for name in ("mnist_cnn.float32.tflite", "mnist_cnn.int8.onnx", "manifest.json"):
        shutil.copy(exported_workspace[0] / name, ws)
    for name in ("mnist_cnn.float32.tflite", "mnist_cnn.int8.onnx"):
        assert predict.classify([DIGIT], ws / name)[0].label == "2"
    (ws / "mnist_cnn.float32.tflite").write_bytes(b"\x00" * 8)
    out = clean_failure(CliRunner().invoke(app, ["predict", str(DIGIT), "--model", str(ws / "x.tflite")]))
    assert "ws-" in out and "file not found" in out


def _add_entries(args):
    workspace, prefix = args
    from toolkit import manifest as m

    for i in range(15):
        m.update(Path(workspace), lambda d, i=i: d["artifacts"].__setitem__(f"{prefix}{i}", {"n": i}))


def test_concurrent_manifest_writers_lose_nothing(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_add_entries, [(str(tmp_path), "a"), (str(tmp_path), "b")])
    arts = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert len(arts) == 30


def test_predict_and_report_refuse_a_symlink_out_and_a_changed_model(workspace, tmp_path, mnist_dir):
    digit = sorted((Path(__file__).parents[1] / "examples" / "digits").glob("*.pgm"))[0]
    target = workspace / "mnist_cnn.int8.tflite"
    outside = tmp_path / "changed.tflite"
    outside.write_bytes(target.read_bytes()[:-1] + b"\1")  # a changed copy outside the workspace
    target.unlink()
    target.symlink_to(outside)
    for args in (["predict", str(digit)], ["report", "--data-dir", str(mnist_dir)]):
        result = CliRunner().invoke(app, [*args, "--model", str(target), "--dir", str(workspace)])
        assert result.exit_code == 1 and "leads out of the workspace" in result.output, result.output
    target.unlink()
    model = workspace / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")  # still a zip archive Keras loads, but not the exported model
    result = CliRunner().invoke(app, ["predict", str(digit), "--model", str(model)])
    assert result.exit_code == 1 and "differs from the model the manifest was exported from" in result.output


def _release_copy(tmp_path: Path) -> Path:
    release = Path(__file__).resolve().parents[1] / "exported"
    ws = tmp_path / "ws"
    shutil.copytree(release, ws, ignore=shutil.ignore_patterns("web", "checkpoint", "report", "quantization"))
    m = json.loads((ws / "manifest.json").read_text())
    m["artifacts"] = {k: v for k, v in m["artifacts"].items() if not k.startswith("web/")}
    (ws / "manifest.json").write_text(json.dumps(m))
    return ws


HOSTILE = {  # (where in the manifest, the value): every one a field some command reads
    "bytes of 5,001 digits": ("raw", '"bytes": ' + "9" * 5001),
    "deeply nested": ("raw", '"deep": ' + "[" * 100_000 + "]" * 100_000),
    "model as a list": ("header", ("model", [])),
    "labels as integers": ("header", ("labels", [0, 1, 2])),
    "preprocessing input as a number": ("header", ("preprocessing", {"input": 7})),
    "accuracy as a string": ("verification", ("accuracy", "high")),
    "verification without accuracy, with passed as text": ("verification", ("passed", "yes")),
    "vela inference_ms fast": ("estimates", ("inference_ms", "fast")),
    "arena_bytes_min big": ("made_with", ("arena_bytes_min", "big")),
    "arena_bytes_recommended huge": ("made_with", ("arena_bytes_recommended", "huge")),
    "arena_bytes_recommended 10**12": ("made_with", ("arena_bytes_recommended", 10**12)),
    "sha256 not hex": ("entry", ("sha256", "z" * 64)),
    "quantization scale zero": (
        "entry",
        (
            "input",
            {"name": "x", "shape": [1, 28, 28, 1], "dtype": "int8", "quantization": {"scale": 0, "zero_point": 0}},
        ),
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_wrongly_typed_manifest_field_is_one_line_for_every_command(case, tmp_path, mnist_dir):
    ws = _release_copy(tmp_path)
    where, change = HOSTILE[case]
    path = ws / "manifest.json"
    if where == "raw":
        text = path.read_text()
        path.write_text(text[: text.rindex("}")] + ", " + change + "}")
    else:
        m = json.loads(path.read_text())
        key, value = change
        target = {
            "header": m,
            "verification": m["artifacts"]["mnist_cnn.float32.tflite"]["verification"],
            "estimates": m["artifacts"]["mnist_cnn.micro.ethos-u55-128.vela.tflite"]["made_with"]["estimates"],
            "made_with": m["artifacts"]["mnist_cnn.micro.c"]["made_with"],
            "entry": m["artifacts"]["mnist_cnn.int8.tflite"],
        }[where]
        target[key] = value
        path.write_text(json.dumps(m))
    digit = sorted((Path(__file__).parents[1] / "examples" / "digits").glob("*.pgm"))[0]
    data = ["--data-dir", str(mnist_dir)]
    for args in (
        ["verify", "--limit", "20", *data],
        ["predict", str(digit)],
        ["report", *data],
        ["benchmark", "--iterations", "5", "--batch-sizes", "1", "--threads", "1", *data],
    ):
        result = CliRunner().invoke(app, [*args, "--dir", str(ws)])
        one_line_error(result, "manifest.json")


@pytest.mark.parametrize("change", [lambda m: m.pop("accuracy"), lambda m: m.update(accuracy="high")])
def test_a_damaged_metrics_file_is_one_line(change, tmp_path, mnist_dir):
    ws = _release_copy(tmp_path)
    metrics = json.loads((ws / "metrics.json").read_text())
    change(metrics)
    (ws / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(app, ["report", "--data-dir", str(mnist_dir), "--dir", str(ws)])
    one_line_error(result, "metrics.json")


def _wrong_values(kind, low, high) -> st.SearchStrategy:
    """Values a field of `kind` (in [low, high]) must refuse: other JSON types, and numbers out of its range."""
    others = [
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.sampled_from([float("nan"), float("inf"), 10**300]),
    ]
    if kind is not bool:
        others.append(st.booleans())
    if kind is str:
        others = [st.integers(), *others[1:]]
    elif kind is list:
        others = [st.integers(), st.text(max_size=8), *others[2:]]
    elif kind is bool:
        others = [st.integers(), *others]
    if low is not None:
        others += [st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1)]
    return st.one_of(others)


# Every field that a command reads, by where it sits in a release's manifest, with its schema (kind, low, high).
_LABELS = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), min_size=1, max_size=3))
_FIELDS = [
    *[("verification", name, spec) for name, spec in manifest.VERIFICATION_FIELDS.items()],
    *[("spot_check", name, spec) for name, spec in manifest.VERIFICATION_FIELDS.items()],
    *[("made_with", name, spec) for name, spec in manifest.MADE_WITH_FIELDS.items()],
    *[("estimates", name, spec) for name, spec in manifest.ESTIMATE_FIELDS.items()],
    *[("entry", name, (str, None, None)) for name in ("file", "format", "variant", "runtime", "sha256")],
    ("entry", "bytes", (int, 0, 1 << 40)),
    *[("model", name, (str, None, None)) for name in ("name", "file", "sha256")],
    *[("model", name, (int, None, None)) for name in ("flops_per_image", "classes")],
]
_FIELD_CASES = st.one_of(
    st.sampled_from(_FIELDS).flatmap(lambda f: st.tuples(st.just(f[:2]), _wrong_values(*f[2]))),
    st.tuples(st.just(("header", "labels")), _LABELS),
    st.tuples(st.just(("header", "preprocessing")), st.one_of(st.integers(), st.lists(st.text(), max_size=2))),
    st.tuples(st.just(("preprocessing", "input")), st.one_of(st.integers(), st.lists(st.integers(), max_size=2))),
    st.tuples(st.just(("header", "model")), st.one_of(st.integers(), st.text(max_size=5), st.lists(st.none()))),
    st.tuples(st.sampled_from([("entry", "input"), ("entry", "output")]), _wrong_values(dict, None, None)),
)


def _field_holder(m: dict, where: str) -> dict:
    """The object of a release manifest that holds the fields of `where` (a verified int8 .tflite gets a spot check
    too; the Vela entry has the made_with with estimates)."""
    arts = m["artifacts"]
    vela, checked = arts["mnist_cnn.micro.ethos-u55-128.vela.tflite"], arts["mnist_cnn.int8.tflite"]
    checked["spot_check"] = dict(checked["verification"])
    return {
        "header": m,
        "model": m["model"],
        "preprocessing": m["preprocessing"],
        "entry": checked,
        "verification": checked["verification"],
        "spot_check": checked["spot_check"],
        "made_with": vela["made_with"],
        "estimates": vela["made_with"]["estimates"],
    }[where]


@pytest.mark.parametrize("field", _FIELDS, ids=lambda f: f"{f[0]}.{f[1]}")
def test_the_schema_refuses_a_wrong_value_in_every_field(field, tmp_path):
    """Each field the schema lists is checked when the manifest is read: a string where it wants a number (a
    number where it wants a string), and a number past its range, are refused naming the field."""
    where, key, (kind, low, high) = field
    wrong = [7 if kind in (str, list) else "x"] + ([high * 10 + 1] if low is not None else [])
    for value in wrong:
        ws = tmp_path / f"{key}-{value!s:.5}"
        ws.mkdir()
        m = json.loads((Path(__file__).resolve().parents[1] / "exported" / "manifest.json").read_text())
        _field_holder(m, where)[key] = value
        (ws / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ToolkitError, match=re.escape(key)):
            manifest.check_header(manifest.read(ws), ws / "manifest.json")
            manifest.records(ws)


@pytest.fixture(scope="module")
def release_copy(tmp_path_factory) -> Path:
    return _release_copy(tmp_path_factory.mktemp("release"))


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_FIELD_CASES)
def test_every_field_a_command_reads_refuses_a_wrong_type_or_size_in_every_command(case, release_copy, mnist_dir):
    """Property: one field of a release's manifest gets a value of the wrong type or out of its range, and each
    command that reads the manifest stops with one line naming manifest.json, having written nothing."""
    (where, key), value = case
    path = release_copy / "manifest.json"
    original = path.read_text()
    m = json.loads(original)
    _field_holder(m, where)[key] = value
    path.write_text(json.dumps(m))
    before = {p: p.stat().st_mtime_ns for p in release_copy.rglob("*") if p.is_file()}
    data = ["--data-dir", str(mnist_dir)]
    try:
        for args in (
            ["verify", "--limit", "20", *data],
            ["predict", str(DIGIT)],
            ["report", *data],
            ["benchmark", "--iterations", "5", "--batch-sizes", "1", "--threads", "1", *data],
        ):
            result = CliRunner().invoke(app, [*args, "--dir", str(release_copy)])
            assert result.exit_code == 1, (args, case, result.output)
            one_line_error(result, "manifest.json")
        assert {p: p.stat().st_mtime_ns for p in release_copy.rglob("*") if p.is_file()} == before
    finally:
        path.write_text(original)
