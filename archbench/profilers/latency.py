"""Inference latency, measured the way a careful performance engineer would.

Method (see README.md, "Latency methodology"):

* **Warm-up** by count *and* time; discarded. The very first call is kept apart
  as the cold-start latency (oneDNN primitive creation, allocator growth).
* **Per-call timing**: each call is timed on its own with ``perf_counter_ns``
  (CPU) or with CUDA events plus a host timer around a synchronize (CUDA).
  Model-scale calls take milliseconds, so per-call timing costs nothing
  measurable and keeps every sample, stalls included.
* **Adaptive stopping** on the distribution-free confidence interval of the
  median (order statistics): stop once its half-width is within
  ``target_rel_ci`` of the median, after ``min_samples`` and ``min_time_s``,
  or at ``max_time_s``.
* **Robust statistics**: median, IQR, p90 and min; never the mean.
* **Noise**: the CPU time that *other* processes used on this process's CPUs
  during the measurement is probed from /proc/stat. A measurement taken under
  load beyond ``max_other_load`` cores, or whose IQR/median is above
  ``max_iqr_ratio``, is re-measured up to ``retries`` times and otherwise
  published with its verdict, never silently.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from archbench.environment import usable_cpus

Z_95 = 1.959963984540054


# -- statistics ------------------------------------------------------------
def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Quantile with linear interpolation between order statistics (numpy's default)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = (len(sorted_values) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


def median_ci(sorted_values: Sequence[float], z: float = Z_95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    Ranks (1-based) ``floor(n/2 - z sqrt(n)/2)`` and ``ceil(1 + n/2 + z sqrt(n)/2)``,
    the normal approximation to the binomial. Returns ``(-inf, inf)`` when ``n``
    is too small for those ranks to exist.
    """
    n = len(sorted_values)
    half_width = z * math.sqrt(n) / 2
    lower, upper = math.floor(n / 2 - half_width), math.ceil(1 + n / 2 + half_width)
    if lower < 1 or upper > n:
        return (-math.inf, math.inf)
    return (sorted_values[lower - 1], sorted_values[upper - 1])


def relative_ci_half_width(sorted_values: Sequence[float], z: float = Z_95) -> float:
    """Half the width of the median's confidence interval, relative to the median."""
    lo, hi = median_ci(sorted_values, z)
    median = quantile(sorted_values, 0.5)
    if math.isinf(lo) or median <= 0:
        return math.inf
    return (hi - lo) / 2 / median


@dataclass(frozen=True)
class LatencyConfig:
    """Knobs of one latency measurement (times in seconds)."""

    warmup_calls: int = 3
    warmup_s: float = 0.2
    min_samples: int = 10
    min_time_s: float = 0.5
    max_time_s: float = 10.0
    max_samples: int = 100_000
    target_rel_ci: float = 0.01
    max_iqr_ratio: float = 0.10
    max_other_load: float = 0.5
    retries: int = 2

    def __post_init__(self) -> None:
        if self.min_samples < 5:
            raise ValueError("min_samples must be at least 5")
        if not 0 < self.min_time_s <= self.max_time_s:
            raise ValueError("need 0 < min_time_s <= max_time_s")


def should_stop(sorted_values: Sequence[float], elapsed_s: float, config: LatencyConfig) -> bool:
    """The stopping rule: enough samples and time, and a tight median, or out of time/samples."""
    n = len(sorted_values)
    if elapsed_s >= config.max_time_s or n >= config.max_samples:
        return True
    if n < config.min_samples or elapsed_s < config.min_time_s:
        return False
    return relative_ci_half_width(sorted_values) <= config.target_rel_ci


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    iqr_ms: float
    p90_ms: float
    min_ms: float
    n: int
    rel_ci: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        ordered = sorted(samples_ms)
        return cls(
            median_ms=quantile(ordered, 0.5),
            iqr_ms=quantile(ordered, 0.75) - quantile(ordered, 0.25),
            p90_ms=quantile(ordered, 0.9),
            min_ms=ordered[0],
            n=len(ordered),
            rel_ci=relative_ci_half_width(ordered),
        )


# -- what else is running ---------------------------------------------------
class LoadProbe(Protocol):
    """Measures the CPU load of *other* processes between ``start()`` and ``stop()``."""

    def start(self) -> None: ...

    def stop(self) -> float:
        """Average number of this process's CPUs kept busy by other processes."""
        ...


class ProcStatLoadProbe:
    """Busy time of this process's CPUs (/proc/stat) minus this process's own CPU time."""

    def __init__(self, cpus: Sequence[int] | None = None) -> None:
        self._cpus = {f"cpu{c}" for c in (cpus if cpus is not None else usable_cpus())}
        self._start: tuple[float, float, float] | None = None

    def _busy_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in self._cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                busy += user + nice + system + irq + softirq + steal
        return busy / ticks

    def _sample(self) -> tuple[float, float, float]:
        own = os.times()
        return time.perf_counter(), self._busy_s(), own.user + own.system

    def start(self) -> None:
        self._start = self._sample() if Path("/proc/stat").exists() else None

    def stop(self) -> float:
        if self._start is None:
            return math.nan  # not measurable on this OS
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


# -- timers -----------------------------------------------------------------
class Timer(Protocol):
    """Times one call; returns (host ns, device ns or None)."""

    def __call__(self, fn: Callable[[], object]) -> tuple[int, int | None]: ...


def cpu_timer(fn: Callable[[], object]) -> tuple[int, int | None]:
    start = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - start, None


def cuda_timer() -> Timer:
    """CUDA events around the call for device time; a host timer over call + synchronize for wall time."""
    import torch

    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)

    def timer(fn: Callable[[], object]) -> tuple[int, int | None]:
        torch.cuda.synchronize()
        host_start = time.perf_counter_ns()
        start_event.record()
        fn()
        end_event.record()
        end_event.synchronize()
        host_ns = time.perf_counter_ns() - host_start
        return host_ns, round(start_event.elapsed_time(end_event) * 1e6)

    return timer


# -- one measurement ----------------------------------------------------------
@dataclass(frozen=True)
class LatencyResult:
    """One latency measurement, ready to become ``latency_*`` columns."""

    stats: LatencyStats
    cold_ms: float
    wall_median_ms: float  # host-timer median (equals stats.median_ms on CPU)
    other_load: float
    attempts: int
    verdict: str  # "ok" or "+"-joined flags: noisy, contended, unconverged
    samples_ms: tuple[float, ...] = field(repr=False, default=())


def _sample_until_stable(
    fn: Callable[[], object], timer: Timer, config: LatencyConfig
) -> tuple[list[float], list[float], bool]:
    """Time calls until the stopping rule fires; returns (ms samples, host ms samples, converged)."""
    samples: list[float] = []
    host: list[float] = []
    started = time.perf_counter()
    next_check = config.min_samples
    while True:
        host_ns, device_ns = timer(fn)
        host.append(host_ns / 1e6)
        samples.append((device_ns if device_ns is not None else host_ns) / 1e6)
        if len(samples) >= next_check:
            elapsed = time.perf_counter() - started
            ordered = sorted(samples)
            if should_stop(ordered, elapsed, config):
                converged = relative_ci_half_width(ordered) <= config.target_rel_ci
                return samples, host, converged
            next_check = len(samples) + max(1, len(samples) // 10)


def warm_up(fn: Callable[[], object], timer: Timer, config: LatencyConfig) -> float:
    """Run the warm-up; returns the first (cold) call's latency in ms."""
    host_ns, device_ns = timer(fn)
    cold_ms = (device_ns if device_ns is not None else host_ns) / 1e6
    calls, started = 1, time.perf_counter()
    while calls < config.warmup_calls or time.perf_counter() - started < config.warmup_s:
        timer(fn)
        calls += 1
    return cold_ms


def measure_latency(
    fn: Callable[[], object],
    config: LatencyConfig | None = None,
    timer: Timer = cpu_timer,
    probe: LoadProbe | None = None,
) -> LatencyResult:
    """Warm up, then measure ``fn`` until its median is stable; re-measure if noisy.

    Args:
        fn: The call to time, e.g. ``lambda: model(x)`` inside ``torch.inference_mode``.
        timer: ``cpu_timer``, or ``cuda_timer()`` for CUDA work.
        probe: Measures other processes' CPU load; ``ProcStatLoadProbe()`` by default.
    """
    config = config or LatencyConfig()
    probe = probe if probe is not None else ProcStatLoadProbe()
    cold_ms = warm_up(fn, timer, config)
    for attempt in range(1, config.retries + 2):
        probe.start()
        samples, host, converged = _sample_until_stable(fn, timer, config)
        other_load = probe.stop()
        stats = LatencyStats.from_samples(samples)
        flags = []
        if stats.iqr_ms > config.max_iqr_ratio * stats.median_ms:
            flags.append("noisy")
        if other_load > config.max_other_load:
            flags.append("contended")
        if not converged:
            flags.append("unconverged")
        # An unconverged median is marked but not retried: more time is what it lacked.
        if not {"noisy", "contended"} & set(flags) or attempt > config.retries:
            break
    return LatencyResult(
        stats=stats,
        cold_ms=cold_ms,
        wall_median_ms=quantile(sorted(host), 0.5),
        other_load=other_load,
        attempts=attempt,
        verdict="+".join(flags) or "ok",
        samples_ms=tuple(samples),
    )


# -- threads ----------------------------------------------------------------
@contextmanager
def cpu_threads(threads: int) -> Iterator[int]:
    """Set intra-op (and, where still possible, inter-op) threads; restore intra-op after.

    PyTorch allows the inter-op pool to be sized only before its first parallel
    work; when that is too late the current size is kept and reported.
    """
    import torch

    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    with suppress(RuntimeError):  # already initialised in this process: recorded as is
        torch.set_num_interop_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
