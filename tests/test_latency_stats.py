"""Latency statistics, stopping rule, noise handling and threads: no wall-clock assertions."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from archbench.profilers import latency
from archbench.profilers.latency import (
    LatencyConfig,
    LatencyStats,
    ProcStatLoadProbe,
    cpu_threads,
    load_on_measurement,
    measure_latency,
    median_ci,
    noise_flags,
    quantile,
    relative_ci_half_width,
    should_stop,
    stall_count,
    stalls_flagged,
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
ONE_CPU = {"threads": 1, "cpus": 1}  # the others' whole load falls on the measurement's CPU


def test_measure_keeps_cold_start_apart_and_stops_when_stable() -> None:
    clock = FakeClock([50.0] + [10.0] * 1000)
    result = measure_latency(lambda: None, FAST, timer=clock, probe=FakeProbe(iter([0.0])), **ONE_CPU)
    assert result.cold_ms == 50.0
    assert result.stats.median_ms == 10.0 and result.stats.iqr_ms == 0.0
    assert result.stats.n == 20 and result.verdict == "ok" and result.attempts == 1


def test_contended_measurement_is_retried_then_marked() -> None:
    probe = FakeProbe(iter([1.5, 1.2, 0.9]))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe, **ONE_CPU)
    assert probe.starts == 3 and result.attempts == 3
    assert result.verdict == "contended" and result.other_load == 0.9


def test_contention_that_clears_gives_a_clean_result() -> None:
    probe = FakeProbe(iter([1.5, 0.1]))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe, **ONE_CPU)
    assert result.attempts == 2 and result.verdict == "ok"


def test_high_iqr_is_marked_noisy() -> None:
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0, 10.0, 30.0]), probe=FakeProbe(iter([0.0] * 3)),
                            **ONE_CPU)
    # a third of the calls at 3x the median: the IQR sees it, and so does the stall rule
    assert result.verdict == "noisy+stalls" and result.attempts == 3


# -- unknown load ---------------------------------------------------------------------


def test_unreadable_load_is_unknown_not_ok_and_not_remeasured() -> None:
    probe = FakeProbe(iter([math.nan]))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe, **ONE_CPU)
    assert result.verdict == "unknown-load" and result.verdict != "ok"
    assert result.attempts == 1 and probe.starts == 1 and math.isnan(result.other_load)
    # it joins the other flags with "+"
    noisy = measure_latency(lambda: None, replace(FAST, retries=0),
                            timer=FakeClock([10.0, 10.0, 30.0]), probe=FakeProbe(iter([math.nan])), **ONE_CPU)
    assert noisy.verdict == "noisy+unknown-load+stalls"


def _stat_line(cpu: str, user: int, system: int = 0) -> str:
    return f"{cpu} {user} 0 {system} 5000 0 0 0 0 0 0"


def test_proc_stat_probe_without_the_file_or_a_cpu_line_is_nan(tmp_path: Path) -> None:
    missing = ProcStatLoadProbe(cpus=[0], stat_path=tmp_path / "no-such-stat")
    missing.start()
    assert math.isnan(missing.stop())
    stat = tmp_path / "stat"
    stat.write_text("\n".join([_stat_line("cpu", 2000), _stat_line("cpu0", 1000), _stat_line("cpu1", 1000)]) + "\n")
    for cpus in ([2], [0, 2], []):  # a CPU of the set without its line (a renumbered container /proc/stat)
        probe = ProcStatLoadProbe(cpus=cpus, stat_path=stat)
        probe.start()
        assert math.isnan(probe.stop()), cpus
    # the file vanishing between start and stop: unknown too
    probe = ProcStatLoadProbe(cpus=[0], stat_path=stat)
    probe.start()
    stat.unlink()
    assert math.isnan(probe.stop())


def test_proc_stat_probe_reads_the_others_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    clock = iter([100.0, 102.0])  # two seconds between start and stop
    own = iter([SimpleNamespace(user=5.0, system=1.0), SimpleNamespace(user=5.4, system=1.1)])  # 0.5 s of ours
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(latency.os, "times", lambda: next(own))
    probe = ProcStatLoadProbe(cpus=[0, 1], stat_path=stat)
    stat.write_text("\n".join([_stat_line("cpu0", 1000), _stat_line("cpu1", 1000), "intr 1 2 3"]) + "\n")
    probe.start()
    # cpu0 +2.0 s busy (user), cpu1 +1.5 s (system): 3.5 s busy, 0.5 s of it ours -> 3.0 s / 2 s
    stat.write_text("\n".join([_stat_line("cpu0", 1000 + 2 * ticks), _stat_line("cpu1", 1000, int(1.5 * ticks))]))
    assert probe.stop() == pytest.approx(1.5)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_proc_stat_probe_knows_the_load_on_linux() -> None:
    probe = ProcStatLoadProbe()
    probe.start()
    load = probe.stop()
    assert math.isfinite(load) and load >= 0


# -- contention relative to the measurement's CPUs -----------------------------------------


def test_load_on_the_measurement_is_the_share_its_threads_occupy() -> None:
    assert load_on_measurement(0.8, threads=1, cpus=2) == pytest.approx(0.4)
    assert load_on_measurement(0.8, threads=2, cpus=2) == pytest.approx(0.8)  # the whole set: the whole load
    assert load_on_measurement(8.0, threads=1, cpus=64) == pytest.approx(0.125)
    assert load_on_measurement(8.0, threads=16, cpus=64) == pytest.approx(2.0)
    assert load_on_measurement(1.0, threads=8, cpus=4) == pytest.approx(1.0)  # more threads than CPUs: all of them


@pytest.mark.parametrize(("load", "threads", "cpus", "verdict"), [
    (0.8, 1, 2, "ok"),          # one busy-ish neighbour on a 2-CPU host, 1 thread: 0.4 on ours
    (0.8, 2, 2, "contended"),   # 2 threads use both CPUs: all 0.8 on ours
    (1.2, 1, 2, "contended"),   # 0.6 on ours
    (8.0, 1, 64, "ok"),         # background work on a many-core host: 0.125 on ours (the old rule: contended)
    (40.0, 1, 64, "contended"),  # 0.625 on ours
    (0.6, 1, 1, "contended"),   # a single CPU: the whole load
    (0.5, 1, 1, "ok"),          # the bound itself is not over it
])
def test_contention_is_judged_on_the_cpus_the_threads_use(load: float, threads: int, cpus: int, verdict: str) -> None:
    stats = LatencyStats.from_samples([10.0] * 20)
    assert ("+".join(noise_flags(stats, load, True, FAST, threads, cpus)) or "ok") == verdict
    probe = FakeProbe(iter([load] * 3))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0]), probe=probe, threads=threads, cpus=cpus)
    assert result.verdict == verdict and result.attempts == (1 if verdict == "ok" else 3)
    assert result.other_load == load  # reported as measured, in cores over the whole set


def test_measurement_threads_default_to_torchs() -> None:
    with cpu_threads(1):
        assert latency._measurement_threads() == 1


# -- stalls -----------------------------------------------------------------------------


def test_stall_count_is_calls_above_twice_the_median() -> None:
    assert stall_count([]) == 0
    assert stall_count(sorted([10.0] * 8 + [20.0, 20.1])) == 1  # exactly 2 x median is not a stall
    assert stall_count(sorted([10.0] * 8 + [25.0, 90.0])) == 2
    assert LatencyStats.from_samples([10.0] * 8 + [25.0, 90.0]).stalls == 2


@pytest.mark.parametrize(("n", "stalls", "flagged"), [
    (10, 1, False),     # one slow call in ten: a blip (page fault, timer tick)
    (10, 2, True),      # two in ten: 20% of the calls, and the IQR does not see them
    (100, 2, True),
    (199, 2, True),     # below 200 samples the two-call minimum decides
    (400, 3, False),    # 0.75% < 1%
    (400, 4, True),
    (1000, 9, False),   # 0.9%: p99 within 2 x median
    (1000, 10, True),   # 1%: p99 above 2 x median
])
def test_stalls_rule_over_10_to_1000_samples(n: int, stalls: int, flagged: bool) -> None:
    samples = [10.0 + 0.001 * i for i in range(n - stalls)] + [50.0] * stalls
    stats = LatencyStats.from_samples(samples)
    assert stats.stalls == stalls and stalls_flagged(stalls, n) is flagged
    assert stats.iqr_ms < 0.1 * stats.median_ms  # the IQR alone would say ok
    assert ("stalls" in noise_flags(stats, 0.0, True, FAST)) is flagged


def test_stalls_are_flagged_not_remeasured() -> None:
    probe = FakeProbe(iter([0.0] * 3))
    result = measure_latency(lambda: None, FAST, timer=FakeClock([10.0] * 9 + [50.0]), probe=probe, **ONE_CPU)
    assert result.stats.iqr_ms == 0.0 and result.stats.n == 20 and result.stats.stalls == 2
    assert result.verdict == "stalls" and result.attempts == 1 and probe.starts == 1


def test_threads_set_and_restored() -> None:
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), cpu_threads(0):
        pass
