"""Latency statistics, stopping rule, noise handling and threads: no wall-clock assertions."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from archbench.profilers.latency import (
    LatencyConfig,
    LatencyStats,
    cpu_threads,
    measure_latency,
    median_ci,
    quantile,
    relative_ci_half_width,
    should_stop,
)


def test_quantile_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.25) == 2.0
    assert quantile(values, 0.75) == 4.0
    assert quantile(values, 0.9) == pytest.approx(7.6)  # 4 + 0.6 * (10 - 4)
    assert quantile([5.0], 0.9) == 5.0


def test_median_ci_order_statistics() -> None:
    values = [float(v) for v in range(1, 101)]  # n = 100: z sqrt(n) / 2 = 9.7998
    # ranks floor(50 - 9.7998) = 40 and ceil(1 + 50 + 9.7998) = 61
    assert median_ci(values) == (40.0, 61.0)
    assert relative_ci_half_width(values) == pytest.approx((61 - 40) / 2 / 50.5)
    # n = 5 is too few for a 95% interval
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (-math.inf, math.inf)
    assert median_ci([float(v) for v in range(1, 10)]) == (1.0, 9.0)  # n = 9: ranks 1 and 9


def test_stats_from_samples() -> None:
    stats = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (stats.median_ms, stats.iqr_ms, stats.p90_ms, stats.min_ms, stats.n) == (3.0, 2.0, pytest.approx(7.6), 1.0, 5)


def test_stopping_rule() -> None:
    config = LatencyConfig(min_samples=10, min_time_s=0.5, max_time_s=5.0, target_rel_ci=0.05)
    tight = [100.0 + 0.01 * i for i in range(20)]
    wide = [float(v) for v in range(1, 21)]
    assert not should_stop(tight, elapsed_s=0.1, config=config)  # below min time
    assert not should_stop(tight[:9], elapsed_s=1.0, config=config)  # below min samples
    assert should_stop(tight, elapsed_s=1.0, config=config)
    assert not should_stop(wide, elapsed_s=1.0, config=config)
    assert should_stop(wide, elapsed_s=5.0, config=config)  # time cap


class FakeClock:
    """A deterministic timer: each call 'takes' the next value of a cycle, in ms."""

    def __init__(self, cycle_ms: list[float]) -> None:
        self.cycle = cycle_ms
        self.calls = 0

    def __call__(self, fn: object) -> tuple[int, int | None]:
        value = self.cycle[self.calls % len(self.cycle)]
        self.calls += 1
        return round(value * 1e6), None


class FakeProbe:
    def __init__(self, loads: Iterator[float]) -> None:
        self.loads = loads
        self.starts = 0

    def start(self) -> None:
        self.starts += 1

    def stop(self) -> float:
        return next(self.loads)


FAST = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=20, min_time_s=1e-6, max_time_s=30.0, retries=2)


def test_measure_keeps_cold_start_apart_and_stops_when_stable() -> None:
    clock = FakeClock([50.0] + [10.0] * 1000)
    result = measure_latency(lambda: None, FAST, timer=clock, probe=FakeProbe(iter([0.0])))
    assert result.cold_ms == 50.0
    assert result.stats.median_ms == 10.0 and result.stats.iqr_ms == 0.0
    assert result.stats.n == 20 and result.verdict == "ok" and result.attempts == 1


def test_contended_measurement_is_retried_then_marked() -> None:
    probe = FakeProbe(iter([1.5, 1.2, 0.9]))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe)
    assert probe.starts == 3 and result.attempts == 3
    assert result.verdict == "contended" and result.other_load == 0.9


def test_contention_that_clears_gives_a_clean_result() -> None:
    probe = FakeProbe(iter([1.5, 0.1]))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe)
    assert result.attempts == 2 and result.verdict == "ok"


def test_high_iqr_is_marked_noisy() -> None:
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0, 10.0, 30.0]), probe=FakeProbe(iter([0.0] * 3)))
    assert result.verdict.startswith("noisy") and result.attempts == 3


def test_threads_set_and_restored() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), cpu_threads(0):
        pass
