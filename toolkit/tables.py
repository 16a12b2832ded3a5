"""Markdown tables for the reports that people read on a forge (quantization report, model card): one renderer,
with numeric columns right-aligned and `|` in a cell escaped. A leaf module."""

from __future__ import annotations

import re

NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]\d+)?%?|-|no error")


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The table as lines; a column after the first whose every cell reads as a number is right-aligned."""
    align = ["---:" if i and all(NUMBER.fullmatch(row[i]) for row in rows) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
