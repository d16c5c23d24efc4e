"""Number formatting with explicit units, chosen once per column.

Imports nothing heavy (no torch, no pandas): the pytest plugin, loaded in every pytest
run, formats its messages with it.
"""

from __future__ import annotations

import math
from typing import Any

_SCALES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_BYTE_SCALES = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, never in exponent notation."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scaled(value: float, scales: tuple[tuple[float, str], ...], digits: int, sep: str) -> str | None:
    for scale, suffix in scales:
        if abs(value) >= scale:
            return f"{significant(value / scale, digits)}{sep}{suffix}"
    return None


def si(value: float | None, digits: int = 3) -> str:
    """``1234567`` -> ``"1.23M"`` (decimal prefixes, ``digits`` significant figures)."""
    if _missing(value):
        return "-"
    assert value is not None
    scaled = _scaled(value, _SCALES, digits, "")
    return scaled or (significant(value, digits) if isinstance(value, float) else str(value))


def binary_bytes(value: float | None, digits: int = 3) -> str:
    """``5107200`` -> ``"4.87 MiB"``."""
    if _missing(value):
        return "-"
    assert value is not None
    return _scaled(value, _BYTE_SCALES, digits, " ") or f"{int(value)} B"


def grouped(value: int | None) -> str:
    """``992715`` -> ``"992,715"``: exact counts stay exact."""
    return "-" if value is None else f"{value:,}"


def column_scale(values: list[float], kind: str) -> tuple[float, str]:
    """One divisor and unit for a whole column, from its largest value (``kind``: count, bytes, ms)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    largest = max(finite, default=0.0)
    if kind == "ms":
        return 1.0, "ms"
    scales = _BYTE_SCALES if kind == "bytes" else _SCALES
    for scale, suffix in scales:
        if largest >= scale:
            return scale, suffix
    return 1.0, "B" if kind == "bytes" else ""


def with_spread(value: float | None, spread: float | None) -> str:
    """``17.1268, 0.67`` -> ``"17.1 ± 0.7"``: decimals set by the spread's first significant digit."""
    if value is None or not math.isfinite(value):
        return "-"
    if spread is None or not math.isfinite(spread) or spread <= 0:
        return significant(value, 3)
    decimals = max(0, -math.floor(math.log10(spread)))
    return f"{value:.{decimals}f} ± {spread:.{decimals}f}"


def percent(value: float | None) -> str:
    """``12.345`` -> ``"+12.3%"``."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.1f}%"


def is_number(value: Any) -> bool:
    """True for ints and floats (NaN and inf included), False for bools and anything else."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def exact_text(value: Any) -> str:
    """``593460248`` -> ``"593,460,248"``, ``2.5`` -> ``"2.5"``: a number with thousands
    separators and every digit it has; anything else as ``format`` writes it."""
    return f"{value:,}" if is_number(value) else f"{value}"


def relative_change(old: float, new: float) -> str:
    """``100, 101.5`` -> ``"+1.50%"``: the change relative to ``old`` (``"+inf%"`` when ``old`` is 0)."""
    return f"{(new - old) / abs(old) * 100 if old else math.inf:+.2f}%"


def format_change(old: Any, new: Any) -> str:
    """``593,460,248 -> 601,234,112 (+1.31%)`` for numbers (no percent when ``old`` is 0),
    ``old -> new`` otherwise (both as written, no separators)."""
    if not (is_number(old) and is_number(new)):
        return f"{old} -> {new}"
    text = f"{exact_text(old)} -> {exact_text(new)}"
    return f"{text} ({relative_change(old, new)})" if old else text
