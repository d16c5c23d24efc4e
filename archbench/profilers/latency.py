"""Inference latency, measured the way a careful performance engineer would.

(About 420 lines: the statistics, the load probe, the timers and the loop are one method.)

Method (see README.md, "Latency methodology"):

* **Warm-up** by count *and* time; discarded. Its first call is kept apart
  (``LatencyResult.cold_ms``): a cold start only if nothing called ``fn`` before;
  archbench's cells report the first call on the freshly prepared form instead
  (``archbench.forms.PreparedForm.cold_ms``), since the form check runs it first.
* **Per-call timing**: each call is timed on its own with ``perf_counter_ns``
  (CPU) or with CUDA events plus a host timer around a synchronize (CUDA).
  Model-scale calls take milliseconds, so per-call timing costs nothing
  measurable and keeps every sample, stalls included.
* **Adaptive stopping** on the distribution-free confidence interval of the
  median (order statistics): stop once its half-width is within
  ``target_rel_ci`` of the median, after ``min_samples`` and ``min_time_s``,
  or at ``max_time_s``.
* **Robust statistics**: median, IQR, p90 and min; never the mean.
* **Speed probe** (``speed``, CPU cells): a fixed workload timed just before and just
  after the sampling, so that a run can tell the cells measured while the machine ran
  slow, which no load figure shows (``archbench.profilers.speed``).

Noise verdict (``LatencyResult.verdict``, the ``latency_noise`` column): ``ok``, or
the flags below joined with ``+`` in this order. Each says only what was measured:

* ``noisy``: IQR / median above ``max_iqr_ratio`` (0.10).
* ``contended``: other processes' CPU load, read from /proc/stat over this
  process's affinity set (``other_load``, in cores, *C* CPUs), *related to the CPUs
  the measurement's threads occupy*: with ``t`` threads the measurement occupies
  ``u = min(t, C)`` of the *C* usable CPUs, and the share of the others' load that
  lands on them, if it is spread evenly, is ``other_load * u / C``. ``contended``
  when that share is above ``max_other_load`` (0.5 cores). With ``t >= C`` the
  share is the whole load; with 1 thread on 2 CPUs the others may keep up to one
  core busy before the measurement is ``contended``; with 1 thread on 64 CPUs, 32
  cores. ``other_load`` itself is reported as read, over the whole set.
* ``unknown-load``: the load could not be read (no /proc/stat, as off Linux, or a
  CPU of the affinity set without its ``cpuN`` line, as in a container whose
  /proc/stat is renumbered). ``other_load`` is then NaN. Not ``ok``: nothing says
  the CPUs were quiet.
* ``stalls``: a heavy tail the IQR cannot see. A *stall* is a call that took more
  than ``STALL_FACTOR`` (2) x the median; the flag is set when at least
  ``STALL_MIN_CALLS`` (2) calls *and* at least ``STALL_MIN_SHARE`` (1%) of the calls
  are stalls. The factor is relative to the median, so it holds at any call
  length; the two-call minimum keeps one isolated slow call (a page fault, a
  timer tick) from flagging 10..200-sample measurements, and the 1% share makes
  the rule "p99 above 2 x median" at 200 samples and beyond, so a long
  measurement is not flagged for a handful of calls in a thousand. Stalls in 25%
  of calls or more also widen the IQR (``noisy``).
* ``unconverged``: the median's CI was still wider than ``target_rel_ci`` at
  ``max_time_s`` or ``max_samples``.

Only ``noisy`` and ``contended`` measurements are re-measured (up to ``retries``
more times), then published with their verdict, never silently. ``unknown-load``
is not re-measured: a retry cannot read what the OS does not report.
``unconverged`` is not: more time is what it lacked. ``stalls`` is not: the median
is insensitive to under half the calls being slow, stalls that come from other
processes show as ``contended``, and the remaining causes (allocator, page faults,
frequency changes, the kernel's own work) recur on a retry; the flag tells the
reader that the tail (p90 and beyond, any mean) is not to be trusted.
"""

from __future__ import annotations

import math
import os
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from archbench.environment import usable_cpus
from archbench.profilers.speed import bracket_ms

Z_95 = 1.959963984540054

#: A call slower than this multiple of the median is a stall.
STALL_FACTOR = 2.0
#: ``stalls`` needs at least this many stalls ...
STALL_MIN_CALLS = 2
#: ... and at least this share of the calls.
STALL_MIN_SHARE = 0.01

#: Verdict flags that make ``measure_latency`` measure again.
RETRIED_FLAGS = frozenset({"noisy", "contended"})


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


def stall_count(sorted_values: Sequence[float]) -> int:
    """Calls slower than ``STALL_FACTOR`` x the median."""
    if not sorted_values:
        return 0
    return len(sorted_values) - bisect_right(sorted_values, STALL_FACTOR * quantile(sorted_values, 0.5))


def stalls_flagged(stalls: int, n: int) -> bool:
    """The ``stalls`` rule: at least ``STALL_MIN_CALLS`` stalls and ``STALL_MIN_SHARE`` of ``n`` calls."""
    return stalls >= max(STALL_MIN_CALLS, math.ceil(STALL_MIN_SHARE * n))


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    iqr_ms: float
    p90_ms: float
    min_ms: float
    n: int
    rel_ci: float
    stalls: int = 0  # calls above STALL_FACTOR x median

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
            stalls=stall_count(ordered),
        )


# -- what else is running ---------------------------------------------------
class LoadProbe(Protocol):
    """Measures the CPU load of *other* processes between ``start()`` and ``stop()``."""

    def start(self) -> None: ...

    def stop(self) -> float:
        """Average number of this process's CPUs kept busy by other processes; NaN where unknown."""
        ...


class ProcStatLoadProbe:
    """Busy time of this process's CPUs (/proc/stat) minus this process's own CPU time.

    The load is unknown (NaN) when the file cannot be read or lacks the ``cpuN`` line
    of any CPU in the set (a container's renumbered /proc/stat): summing the lines
    that are there would report the missing CPUs as idle.
    """

    def __init__(self, cpus: Sequence[int] | None = None, stat_path: Path = Path("/proc/stat")) -> None:
        self._cpus = {f"cpu{c}" for c in (cpus if cpus is not None else usable_cpus())}
        self._path = stat_path
        self._start: tuple[float, float, float] | None = None

    def _busy_s(self) -> float | None:
        try:
            text = self._path.read_text()
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):  # no /proc/stat, or no sysconf (not Linux)
            return None
        busy, seen = 0, set()
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] in self._cpus:
                values = [int(v) for v in fields[1:9]] + [0] * (9 - len(fields))  # old kernels: fewer columns
                user, nice, system, _idle, _iowait, irq, softirq, steal = values
                busy += user + nice + system + irq + softirq + steal
                seen.add(fields[0])
        if not self._cpus or seen != self._cpus:
            return None
        return busy / ticks

    def _sample(self) -> tuple[float, float, float] | None:
        own = os.times()
        busy = self._busy_s()
        return None if busy is None else (time.perf_counter(), busy, own.user + own.system)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float:
        end = self._sample() if self._start is not None else None
        if self._start is None or end is None:
            return math.nan  # not measurable here
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)


def load_on_measurement(other_load: float, threads: int, cpus: int) -> float:
    """The others' load (cores, over ``cpus`` usable CPUs) that falls on the ``min(threads, cpus)``
    CPUs the measurement occupies, if it is spread evenly: ``other_load * min(threads, cpus) / cpus``."""
    cpus = max(cpus, 1)
    return other_load * min(max(threads, 1), cpus) / cpus


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
    cold_ms: float  # the first warm-up call (cold only if nothing called fn before)
    wall_median_ms: float  # host-timer median (equals stats.median_ms on CPU)
    other_load: float
    attempts: int
    verdict: str  # "ok" or "+"-joined flags: noisy, contended, unknown-load, stalls, unconverged
    samples_ms: tuple[float, ...] = field(repr=False, default=())
    probe_ms: float = math.nan  # the speed probe around the published attempt (archbench.profilers.speed)


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


def noise_flags(
    stats: LatencyStats, other_load: float, converged: bool, config: LatencyConfig, threads: int = 1, cpus: int = 1
) -> list[str]:
    """The verdict's flags (module docstring), in order; empty means ``ok``.

    ``threads`` is the number of threads the measurement runs, ``cpus`` the number of
    CPUs the load was read over.
    """
    flags = []
    if stats.iqr_ms > config.max_iqr_ratio * stats.median_ms:
        flags.append("noisy")
    if math.isnan(other_load):
        flags.append("unknown-load")
    elif load_on_measurement(other_load, threads, cpus) > config.max_other_load:
        flags.append("contended")
    if stalls_flagged(stats.stalls, stats.n):
        flags.append("stalls")
    if not converged:
        flags.append("unconverged")
    return flags


def _measurement_threads() -> int:
    """PyTorch's intra-op threads, which the runner sets for the measurement; 1 without torch."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 1


def measure_latency(
    fn: Callable[[], object],
    config: LatencyConfig | None = None,
    timer: Timer = cpu_timer,
    probe: LoadProbe | None = None,
    threads: int | None = None,
    cpus: int | None = None,
    speed: Callable[[], float] | None = None,
) -> LatencyResult:
    """Warm up, then measure ``fn`` until its median is stable; re-measure if noisy or contended.

    Args:
        fn: The call to time, e.g. ``lambda: model(x)`` inside ``torch.inference_mode``.
        timer: ``cpu_timer``, or ``cuda_timer()`` for CUDA work.
        probe: Measures other processes' CPU load; ``ProcStatLoadProbe()`` by default.
        threads: Threads the measurement runs; PyTorch's intra-op threads by default.
        cpus: How many CPUs ``probe`` reads the load over; this process's affinity set by default.
        speed: Reads the speed probe (``archbench.profilers.speed``) just before and just
            after each attempt's sampling; ``probe_ms`` is their median. None: not read.
    """
    config = config or LatencyConfig()
    probe = probe if probe is not None else ProcStatLoadProbe()
    threads = threads if threads is not None else _measurement_threads()
    cpus = cpus if cpus is not None else len(usable_cpus())
    cold_ms = warm_up(fn, timer, config)
    for attempt in range(1, config.retries + 2):
        before = speed() if speed is not None else math.nan
        probe.start()
        samples, host, converged = _sample_until_stable(fn, timer, config)
        other_load = probe.stop()
        probe_ms = bracket_ms([before, speed() if speed is not None else math.nan])
        stats = LatencyStats.from_samples(samples)
        flags = noise_flags(stats, other_load, converged, config, threads, cpus)
        if not RETRIED_FLAGS & set(flags) or attempt > config.retries:
            break
    return LatencyResult(
        stats=stats,
        cold_ms=cold_ms,
        wall_median_ms=quantile(sorted(host), 0.5),
        other_load=other_load,
        attempts=attempt,
        verdict="+".join(flags) or "ok",
        samples_ms=tuple(samples),
        probe_ms=probe_ms,
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
