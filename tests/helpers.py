"""Assertions that several test modules share."""

from __future__ import annotations


def one_line_error(result, *fragments: str) -> None:
    """A CLI run that failed the way a user should see it: exit 1, one `error:` line naming `fragments`, no
    traceback."""
    assert result.exit_code == 1, result.output
    text = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in text
    assert text.startswith("error:") and len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, text
