"""The commands' help layout (argparse's defaults, shown only where they say something) and
aligned text tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where X is None (the option has no
    default of its own), for on/off flags (off unless given) and where the help already names
    its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        flag = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if action.default is None or flag or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def format_table(
    rows: Sequence[Sequence[object]], align: str = "", indent: str = "  ", gap: int = 2
) -> list[str]:
    """Rows of cells as aligned text lines: each column as wide as its longest entry.

    Args:
        rows: the table, one sequence of cells (any values, shown with ``str``) per row; a short
            row leaves its last columns empty.
        align: ``<`` (left) or ``>`` (right) per column; columns past its end: the first is left,
            the others right aligned (names, then numbers).
        indent: put before every line.
        gap: spaces between columns.

    Returns:
        one line per row, without trailing spaces; every column starts at the same offset in
        every line (where a right-aligned last column is in every row, all lines are as wide).
    """
    cells = [[str(c) for c in row] for row in rows]
    n_cols = max((len(r) for r in cells), default=0)
    widths = [max((len(r[i]) for r in cells if i < len(r)), default=0) for i in range(n_cols)]
    sides = [align[i] if i < len(align) else ("<" if i == 0 else ">") for i in range(n_cols)]
    lines = []
    for row in cells:
        row = row + [""] * (n_cols - len(row))
        parts = [f"{c:{s}{w}}" for c, s, w in zip(row, sides, widths, strict=True)]
        lines.append((indent + (" " * gap).join(parts)).rstrip())
    return lines
