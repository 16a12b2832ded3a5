"""The Workspace object and the shape of the package: the manifest is read once and re-read only when another
process changed it, files are hashed once, a file's workspace is found by one rule; the import graph has no circle
(through `__init__` files too), leaves stay leaves, and no file or function outgrows the limits."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import fsio, manifest
from toolkit.workspace import Workspace

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit"


def _manifest(folder: Path, artifacts: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "artifacts": artifacts or {}}))
    return folder


def _counting(monkeypatch, name: str) -> list:
    calls: list = []
    real = getattr(fsio, name)
    monkeypatch.setattr(fsio, name, lambda path, *a: calls.append(Path(path).name) or real(path, *a))
    return calls


def test_the_manifest_is_read_once_and_again_only_after_another_writer(tmp_path, monkeypatch):
    reads = _counting(monkeypatch, "read_json")
    w = Workspace(_manifest(tmp_path / "ws"))
    for _ in range(5):
        manifest.read(w)
        manifest.records(w)
    assert reads == ["manifest.json"]
    manifest.update(w, lambda m: m.update(labels=["a", "b"]))  # our own write: nothing to read back
    assert manifest.read(w)["labels"] == ["a", "b"] and reads == ["manifest.json"]
    other = Workspace(tmp_path / "ws")  # another process, as far as `w` can tell
    manifest.update(other, lambda m: m.update(labels=["c", "d"]))
    assert manifest.read(w)["labels"] == ["c", "d"]  # seen, because the file changed under it
    manifest.update(w, lambda m: m["artifacts"].update())  # and a change of ours keeps the other's
    assert json.loads((tmp_path / "ws" / "manifest.json").read_text())["labels"] == ["c", "d"]


def test_a_change_that_fails_leaves_the_manifest_as_it_was(tmp_path):
    w = Workspace(_manifest(tmp_path / "ws"))

    def broken(m):
        m["labels"] = ["half"]
        raise ValueError("midway")

    with pytest.raises(ValueError):
        manifest.update(w, broken)
    assert "labels" not in manifest.read(w) and "labels" not in json.loads(w.manifest_path.read_text())


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    hashes = _counting(monkeypatch, "file_sha256")
    w = Workspace(tmp_path)
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    first = {w.sha256(f) for _ in range(4)}
    assert len(first) == 1 and hashes == ["a.bin"]
    f.write_bytes(b"two!")  # other bytes: hashed again, and a different checksum
    assert w.sha256(f) not in first and hashes == ["a.bin", "a.bin"]


def test_one_rule_finds_the_workspace_of_a_file(tmp_path):
    ws = _manifest(tmp_path / "ws")
    (ws / "web" / "models").mkdir(parents=True)
    for inside in (ws / "model.keras", ws / "web" / "x.onnx", ws / "web" / "models" / "x.tflite"):
        assert Workspace.containing(inside).root == ws
    assert Workspace.containing(tmp_path / "elsewhere" / "x.tflite") is None
    link = tmp_path / "link.tflite"
    link.symlink_to(ws / "web" / "models" / "x.tflite")  # a symlink cannot hide the workspace it points into
    assert ws in Workspace.candidates(link)


def test_a_workspace_is_a_path(tmp_path):
    w = Workspace.of(tmp_path)
    assert Workspace.of(w) is w and Path(w) == tmp_path and os.fspath(w) == str(tmp_path)
    assert w / "model.keras" == tmp_path / "model.keras" and w.model_path == tmp_path / "model.keras"


# ------------------------------------------------------------------------------------------ the package


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports_at_load(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The toolkit modules that loading `name` imports: its module-level imports (not those inside functions or
    under TYPE_CHECKING), each with the packages above it (whose `__init__` runs first)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets.add(base)
            targets |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}  # already loading
    out = {t for t in targets if t in modules}
    for target in targets:
        parts = target.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules} - ancestors
    return out - {name}


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {name: _imports_at_load(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "toolkit.loader" in graph and graph["toolkit"] == set()  # the package itself imports nothing


# The layers of docs/architecture.md, lowest first: a module imports (at load) only its own layer and those below.
LAYERS = [
    {"errors", "fsio", "plots", "tables", "cache", "children", "versions", "machine", "timing", "artifacts", "cluster"},
    {"backend"},
    {"contract"},
    {"workspace", "manifest"},
    {"data", "model", "training", "preprocess"},
    {"train", "runtimes"},
    {"export", "micro", "web"},
    {"loader", "parity"},
    {"verify"},
    {"bench", "quantize", "arm64"},
    {"predict", "report", "card"},
    {"api"},
    {"console", "commandline", "cli_arm64", "cli", "__main__"},
]


def test_imports_run_one_way_through_the_documented_layers():
    modules = _modules()
    layer_of = {top: i for i, layer in enumerate(LAYERS) for top in layer}
    unplaced = {name for name in modules if name != "toolkit" and name.split(".")[1] not in layer_of}
    assert not unplaced, f"modules in no layer of LAYERS: {sorted(unplaced)}"
    upward = []
    for name, path in modules.items():
        if name == "toolkit":
            continue
        for target in _imports_at_load(name, path, modules) - {"toolkit"}:
            if layer_of[target.split(".")[1]] > layer_of[name.split(".")[1]]:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def _loaded_by(statement: str) -> set[str]:
    code = (
        f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith(('toolkit', 'tensorflow'))))"
    )
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def test_leaves_stay_leaves():
    trained = _loaded_by("import toolkit.train")
    heavy = ("toolkit.web", "toolkit.micro", "toolkit.bench", "toolkit.quantize", "toolkit.export", "toolkit.verify")
    assert not [m for m in trained if m.startswith(heavy)], trained
    for light in ("import toolkit.runtimes", "import toolkit.loader", "import toolkit.api", "import toolkit"):
        assert "tensorflow" not in _loaded_by(light), light
    assert _loaded_by("import toolkit.bench") == {"toolkit", "toolkit.bench"}  # a package __init__ loads no child


def test_no_file_or_function_outgrows_the_limits():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        text = path.read_text()
        if len(text.splitlines()) > 450:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long
