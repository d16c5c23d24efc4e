"""What archbench's own machinery costs, measured with pytest-benchmark (never asserted).

Run with ``nox -s benchmarks`` (or ``pytest tests/benchmarks --benchmarks``); the
ratios are printed in ``extra_info`` of the saved JSON and in the table.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import archbench
from archbench.cells import sample_input, static_columns
from archbench.profilers.latency import LatencyConfig, cpu_threads, measure_latency

ROUNDS = dict(rounds=15, warmup_rounds=3, iterations=1)


@pytest.fixture(scope="module")
def esnet_s() -> nn.Module:
    return archbench.create_model("esnet_s")


@pytest.mark.benchmark(group="static profile vs forward, esnet_s@320")
def test_forward(benchmark, esnet_s: nn.Module) -> None:  # type: ignore[no-untyped-def]
    x = sample_input(1, 320)
    with cpu_threads(1), torch.inference_mode():
        benchmark.pedantic(esnet_s, args=(x,), **ROUNDS)


@pytest.mark.benchmark(group="static profile vs forward, esnet_s@320")
def test_static_profile(benchmark, esnet_s: nn.Module) -> None:  # type: ignore[no-untyped-def]
    x = sample_input(1, 320)
    with cpu_threads(1):
        static_columns(esnet_s, x, ("params", "macs", "memory"), ())  # first-use imports
        benchmark.pedantic(static_columns, args=(esnet_s, x, ("params", "macs", "memory"), ()), **ROUNDS)


@pytest.mark.benchmark(group="static profile vs forward, esnet_s@320")
def test_profile_api(benchmark) -> None:  # type: ignore[no-untyped-def]
    """``archbench.profile`` on a built model: the sweep's own cost beside the static columns."""
    model = archbench.create_model("esnet_s")
    archbench.profile(model, resolutions=(320,))
    benchmark.pedantic(archbench.profile, args=(model,), kwargs={"resolutions": (320,)}, **ROUNDS)


@pytest.mark.benchmark(group="static profile vs forward, esnet_s@320")
def test_run_static_cell(benchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One static cell of ``archbench run``: build, size on meta, measure, save results.json + csv."""
    from archbench.runner import Runner, RunSettings

    settings = RunSettings(variants=("esnet_s",), resolutions=(320,), metrics=("params", "macs", "memory"))
    folders = iter(range(1000))
    benchmark.pedantic(lambda: Runner(settings, tmp_path / str(next(folders))).run(), **ROUNDS)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _bare_loop_median_ms(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return samples[n // 2] / 1e6


@pytest.mark.benchmark(group="harness overhead, tiny conv")
def test_harness_overhead(benchmark) -> None:  # type: ignore[no-untyped-def]
    """archbench's median vs a bare perf_counter loop on the same call, same process."""
    model, x = Tiny().eval(), torch.randn(1, 3, 32, 32)
    config = LatencyConfig(min_samples=200, min_time_s=0.2, max_time_s=2.0)
    with cpu_threads(1), torch.inference_mode():
        def both() -> tuple[float, float]:
            bare = _bare_loop_median_ms(lambda: model(x), 2000)
            harness = measure_latency(lambda: model(x), config).stats.median_ms
            return bare, harness
        bare, harness = benchmark.pedantic(both, rounds=3, iterations=1)
    benchmark.extra_info.update(bare_ms=bare, harness_ms=harness, ratio=harness / bare,
                                diff_us=(harness - bare) * 1e3)


@pytest.mark.benchmark(group="agreement with torch.utils.benchmark, shufflenetv2_x1_0@320")
def test_agreement_with_torch_benchmark(benchmark) -> None:  # type: ignore[no-untyped-def]
    """archbench's median against ``Timer.blocked_autorange(min_run_time=2)``, same model, 1 thread."""
    from torch.utils import benchmark as torch_benchmark

    model, x = archbench.create_model("shufflenetv2_x1_0"), sample_input(1, 320)
    with cpu_threads(1), torch.inference_mode():
        def both() -> tuple[float, float, float]:
            ours = measure_latency(lambda: model(x))
            timer = torch_benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=1)
            theirs = timer.blocked_autorange(min_run_time=2)
            return ours.stats.median_ms, ours.stats.iqr_ms, theirs.median * 1e3
        ours, iqr, theirs = benchmark.pedantic(both, rounds=1, iterations=1)
    benchmark.extra_info.update(archbench_median_ms=ours, archbench_iqr_ms=iqr, torch_median_ms=theirs,
                                diff_ms=ours - theirs, within_iqr=abs(ours - theirs) <= iqr)
