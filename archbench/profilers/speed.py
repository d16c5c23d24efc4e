"""A speed reference for CPU timings: how fast this machine runs one fixed workload, now.

On a shared machine a timing can run slow for minutes with nothing in /proc/stat to show
it: another virtual machine on the same physical core, or a process on this machine's
other CPU competing for caches and memory bandwidth (one such process, at 0.96 cores, is
under the ``contended`` threshold of a 1-thread timing on 2 CPUs, yet it slowed one here
1.6x). Measured here: two fresh processes timing the same 50 cells back to back disagreed
by 0.65-1.41x with no other load recorded, and a model's forward and this probe slowed
together (Pearson r = 0.89 over 449 alternating windows, the model's slowdown within
0.8-1.1x of the probe's).

The probe is a fixed, seeded pointwise then depthwise convolution (96 channels, 40x40,
about 16 M MACs, the mix of work a lightweight backbone does), timed ``PROBE_CALLS``
times in the measurement's own threads just before and just after each CPU latency and
per-layer measurement; the cell records the median (``latency_probe_ms``,
``layers_probe_ms``). Its absolute value means nothing. Relative to the smallest value of
the same host and threads in the same run it is the cell's **slowdown**: above
``SLOW_FACTOR`` the cell was measured while the machine ran slower than it can. Reports
say so beside the cell, and a run's latencies are never rescaled. A latency table for
prediction brings its build's times to the build's fastest reading (dividing each by its
slowdown), and its validation reports figures as measured, over the processes that ran
at speed, and brought to the table's speed.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Timed probe calls per reading (about 10-20 ms in all on this machine).
PROBE_CALLS = 15
#: A cell whose probe ran this much slower than the run's fastest was measured slowed down.
SLOW_FACTOR = 1.10
PROBE_CHANNELS, PROBE_SIDE = 96, 40
#: Where cells record their readings: around the latency timing, around the per-layer timing.
PROBE_COLUMNS = ("latency_probe_ms", "layers_probe_ms")
ALLOCATOR_WARM_BYTES = 8 * 2**20


class SpeedProbe:
    """The fixed workload; ``read_ms()`` times it (call it inside the measurement's threads)."""

    def __init__(self) -> None:
        import torch
        from torch import nn

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self._module = nn.Sequential(
                nn.Conv2d(PROBE_CHANNELS, PROBE_CHANNELS, 1),
                nn.Conv2d(PROBE_CHANNELS, PROBE_CHANNELS, 3, padding=1, groups=PROBE_CHANNELS),
                nn.ReLU(),
            ).eval()
            self._x = torch.rand(1, PROBE_CHANNELS, PROBE_SIDE, PROBE_SIDE)
        # glibc serves blocks above its mmap threshold (128 KiB at start) with fresh pages,
        # and raises the threshold to the size of the first such block freed: until then
        # every 600 KiB output would fault its pages in (the probe ran 2.3x slower in a
        # fresh process than after a model's forward). Free one large block first, as any
        # model's forward does, so that every reading sees the same allocator.
        torch.empty(ALLOCATOR_WARM_BYTES, dtype=torch.uint8)  # allocated and freed at once

    def read_ms(self) -> float:
        """Median of ``PROBE_CALLS`` timed calls after one untimed one, in ms."""
        import torch

        times: list[int] = []
        with torch.inference_mode():
            self._module(self._x)
            for _ in range(PROBE_CALLS):
                start = time.perf_counter_ns()
                self._module(self._x)
                times.append(time.perf_counter_ns() - start)
        return statistics.median(times) / 1e6


@functools.cache
def speed_probe() -> SpeedProbe:
    """This process's probe (built once)."""
    return SpeedProbe()


def bracket_ms(readings: Iterable[float]) -> float:
    """One cell's probe value from its readings (before and after): their median; NaN for none."""
    values = [r for r in readings if math.isfinite(r)]
    return statistics.median(values) if values else math.nan


def slowdowns(rows: Sequence[Mapping[str, Any]], column: str) -> list[float]:
    """Each row's ``column`` probe value over the smallest among rows of the same ``host``
    and ``threads`` (NaN where a row has none): 1.0 for the fastest, 1.3 for a cell measured
    30% slower than the machine ran at its best in these rows."""
    def group(row: Mapping[str, Any]) -> tuple[Any, Any]:
        return row.get("host"), row.get("threads")

    best: dict[tuple[Any, Any], float] = {}
    for row in rows:
        value = reading(row, column)
        if value is not None:
            best[group(row)] = min(best.get(group(row), math.inf), value)
    factors = []
    for row in rows:
        value = reading(row, column)
        factors.append(value / best[group(row)] if value is not None and group(row) in best else math.nan)
    return factors


def is_slow(factor: float) -> bool:
    return math.isfinite(factor) and factor > SLOW_FACTOR


def reading(row: Mapping[str, Any], column: str) -> float | None:
    """A row's probe reading in ``column``, or None if it has none (not read, NaN, not positive)."""
    value = _finite(row.get(column))
    return value if value is not None and value > 0 else None


def reference_ms(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = PROBE_COLUMNS) -> float:
    """The fastest reading in ``columns`` of ``rows``: the speed they are brought to; NaN if none."""
    values = [v for row in rows for column in columns if (v := reading(row, column)) is not None]
    return min(values) if values else math.nan


def machine_speed_note(base: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> str | None:
    """A line for a comparison of two runs' latencies (records ``base`` and ``new``) when the
    machine itself ran at another speed in one of them: the median latency probe of one over
    the other's beyond ``SLOW_FACTOR`` either way; None otherwise, or if either has no reading."""
    def median_probe(records: Sequence[Mapping[str, Any]]) -> float | None:
        values = [v for r in records if (v := reading(r, PROBE_COLUMNS[0])) is not None]
        return statistics.median(values) if values else None

    before, after = median_probe(base), median_probe(new)
    if before is None or after is None:
        return None
    ratio = after / before
    if 1 / SLOW_FACTOR <= ratio <= SLOW_FACTOR:
        return None
    pace = f"{ratio:.2f}x slower" if ratio > 1 else f"{1 / ratio:.2f}x faster"
    return (f"the machine ran {pace} while the new run was timed (speed probe, median {before:.3f} vs "
            f"{after:.3f} ms): latency changes of about that size are the machine's, not the models'")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["PROBE_CALLS", "PROBE_COLUMNS", "SLOW_FACTOR", "SpeedProbe", "bracket_ms", "is_slow",
           "machine_speed_note", "reading", "reference_ms", "slowdowns", "speed_probe"]
