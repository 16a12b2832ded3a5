"""Markdown tables for the reports that people read on a forge (quantization report, model card): one renderer,
with numeric columns right-aligned and `|` in a cell escaped; and the one escaper of the user's own text (labels,
folder and model names) for the terminal and for Markdown. A leaf module."""

from __future__ import annotations

import html
import re

# control characters and the bidirectional overrides: from a label or a folder name they would reach the terminal
# as escape sequences (colours, cursor moves, a title change) or reorder what the user reads
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with each control character written as its escape (\\x1b), so the user's text cannot drive the
    terminal or break a line of a report."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def markdown_text(text: str) -> str:
    """The user's text (a model's own name, say) as one line of Markdown that shows it as written: control
    characters escaped, and `<`, `>`, `&` as entities so that no forge reads them as HTML."""
    return html.escape(visible(text), quote=False)


NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]\d+)?%?|-|no error")


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The table as lines; a column after the first whose every cell reads as a number is right-aligned."""
    align = ["---:" if i and all(NUMBER.fullmatch(row[i]) for row in rows) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
