"""Plain-text layout for a terminal: aligned columns without box drawing."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Header, a rule of dashes and the rows, columns two spaces apart; ``align`` is one
    of l/r per column. Trailing spaces are stripped from every line."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True)]
        return "  ".join(out).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def indent(lines: Sequence[str], by: str = "  ") -> list[str]:
    """Each non-empty line prefixed with ``by``."""
    return [by + line if line else line for line in lines]
