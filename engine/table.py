"""The CLI's text output: plain-text tables for its listings (`history`, `dead-letters list`, `silence
list`): a header line, then one line per row, each column as wide as its widest cell, two spaces apart;
and counts with their noun in the right number."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a table; the last column is not padded, so long text (a reason) does not pad the rest.
    A cell is shown with `str`; None as `-`; line breaks in a cell become spaces."""
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
            for line in cells]


def _cell(value: object) -> str:
    return "-" if value is None else " ".join(str(value).splitlines())


def plural(n: int, noun: str) -> str:
    """`1 file`, `2 files`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
