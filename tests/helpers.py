"""Assertions and small helpers that several test modules share."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def one_line_error(result, *fragments: str) -> None:
    """A CLI run that failed the way a user should see it: exit 1, one `error:` line naming `fragments`, no
    traceback."""
    assert result.exit_code == 1, result.output
    text = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in text
    assert text.startswith("error:") and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text


def clean_failure(result) -> str:
    """A CLI run (CliRunner) that ended in exit 1 through SystemExit, with no traceback; returns its output."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    return result.output


def run_toolkit(*args, timeout=300, env=None):
    """`python -m toolkit ARGS` in a child process, as a user runs it (with `env` as its whole environment)."""
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def copy_workspace(workspace: Path, tmp_path: Path) -> Path:
    """A copy of a workspace that a test may change."""
    target = tmp_path / "ws"
    shutil.copytree(workspace, target)
    return target


def parity_holds(r, flips: int = 3) -> bool:
    """A verification on a small sample that a correct exporter passes on any machine: the record passed, or it
    failed only the accuracy-loss criterion (one image of 300 is 0.33 pp, and AVX2 and AVX-512 kernels round
    differently) while at most `flips` images disagree with Keras."""
    if r.passed:
        return True
    only_loss = bool(r.problems) and all(p.startswith("accuracy loss") for p in r.problems)
    return only_loss and r.disagreements is not None and r.disagreements <= flips
