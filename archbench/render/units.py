"""Number formatting with explicit units, chosen once per column."""

from __future__ import annotations

import math

_SCALES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_BYTE_SCALES = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, never in exponent notation."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def si(value: float | None, digits: int = 3) -> str:
    """``1234567`` -> ``"1.23M"`` (decimal prefixes, ``digits`` significant figures)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for scale, suffix in _SCALES:
        if abs(value) >= scale:
            return f"{significant(value / scale, digits)}{suffix}"
    return significant(value, digits) if isinstance(value, float) else str(value)


def binary_bytes(value: float | None, digits: int = 3) -> str:
    """``5107200`` -> ``"4.87 MiB"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for scale, suffix in _BYTE_SCALES:
        if abs(value) >= scale:
            return f"{significant(value / scale, digits)} {suffix}"
    return f"{int(value)} B"


def grouped(value: int | None) -> str:
    """``992715`` -> ``"992,715"``: exact counts stay exact."""
    return "-" if value is None else f"{value:,}"
