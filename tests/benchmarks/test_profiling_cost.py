"""What archbench's own machinery costs, measured with pytest-benchmark (never asserted).

Run with ``nox -s benchmarks`` (or ``pytest tests/benchmarks --benchmarks``). The
harness-overhead and agreement figures are printed (``report_figure``, see conftest.py:
at the end of the session, and as measured with ``-s``) and kept in ``extra_info`` of
the saved JSON.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

import archbench
from archbench.cells import static_columns
from archbench.inputs import sample_input
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


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@pytest.mark.benchmark(group="harness overhead, tiny conv")
def test_harness_overhead(benchmark, report_figure) -> None:  # type: ignore[no-untyped-def]
    """archbench's median vs a bare perf_counter loop on the very same call (one model, one
    input tensor, one closure), same process; the two alternate which goes first."""
    model, x = Tiny().eval(), sample_input(1, 32)
    call = lambda: model(x)  # noqa: E731  # the one callable both sides time
    config = LatencyConfig(min_samples=200, min_time_s=0.2, max_time_s=2.0)
    bare_ms: list[float] = []
    harness_ms: list[float] = []
    verdicts: list[str] = []
    with cpu_threads(1), torch.inference_mode():
        def harness() -> None:
            result = measure_latency(call, config)
            harness_ms.append(result.stats.median_ms)
            verdicts.append(result.verdict)

        def bare() -> None:
            bare_ms.append(_bare_loop_median_ms(call, 2000))

        def both() -> None:  # rounds 1 and 3: bare loop first; round 2: archbench first
            for step in ((harness, bare) if len(bare_ms) % 2 else (bare, harness)):
                step()
        benchmark.pedantic(both, rounds=3, iterations=1)
    theirs, ours = _median(bare_ms), _median(harness_ms)
    benchmark.extra_info.update(bare_ms=theirs, harness_ms=ours, ratio=ours / theirs, diff_us=(ours - theirs) * 1e3,
                                bare_rounds_ms=bare_ms, harness_rounds_ms=harness_ms, verdicts=verdicts)
    report_figure(
        f"tiny conv (1x3x32x32 -> 8 ch), 1 thread, median of {len(bare_ms)} rounds: archbench {ours * 1e3:.1f} us "
        f"vs bare perf_counter loop {theirs * 1e3:.1f} us: diff {(ours - theirs) * 1e3:+.1f} us, "
        f"ratio {ours / theirs:.3f} "
        f"(rounds: archbench {', '.join(f'{v * 1e3:.1f}' for v in harness_ms)} us [{', '.join(verdicts)}]; "
        f"bare {', '.join(f'{v * 1e3:.1f}' for v in bare_ms)} us)")


@pytest.mark.benchmark(group="agreement with torch.utils.benchmark, shufflenetv2_x1_0@320")
def test_agreement_with_torch_benchmark(benchmark, report_figure) -> None:  # type: ignore[no-untyped-def]
    """archbench's median against ``Timer.blocked_autorange(min_run_time=2)``: both time the
    very same closure over one model and one input tensor (``archbench.cells.sample_input``),
    at 1 thread; two rounds, the second in the opposite order."""
    from torch.utils import benchmark as torch_benchmark

    model, x = archbench.create_model("shufflenetv2_x1_0"), sample_input(1, 320)
    call = lambda: model(x)  # noqa: E731  # the one callable both sides time
    pairs: list[tuple[float, float, float, str, float]] = []
    with cpu_threads(1), torch.inference_mode():
        def both() -> None:
            timer = torch_benchmark.Timer("call()", globals={"call": call}, num_threads=1)
            theirs_first = len(pairs) % 2 == 1
            theirs = timer.blocked_autorange(min_run_time=2).median * 1e3 if theirs_first else math.nan
            ours = measure_latency(call)
            if not theirs_first:
                theirs = timer.blocked_autorange(min_run_time=2).median * 1e3
            pairs.append((ours.stats.median_ms, ours.stats.iqr_ms, theirs, ours.verdict, ours.other_load))
        benchmark.pedantic(both, rounds=2, iterations=1)
    benchmark.extra_info.update(
        rounds=[dict(archbench_median_ms=ours, archbench_iqr_ms=iqr, torch_median_ms=theirs, diff_ms=ours - theirs,
                     within_iqr=abs(ours - theirs) <= iqr, verdict=verdict, other_load=load)
                for ours, iqr, theirs, verdict, load in pairs])
    for index, (ours, iqr, theirs, verdict, load) in enumerate(pairs, 1):
        order = "Timer first" if index % 2 == 0 else "archbench first"
        report_figure(
            f"shufflenetv2_x1_0 @ 320, 1 thread, round {index} ({order}): archbench median {ours:.2f} ms "
            f"(IQR {iqr:.2f} ms, {verdict}, other load {load:.2f} cores) vs Timer.blocked_autorange(min_run_time=2) "
            f"{theirs:.2f} ms: diff {ours - theirs:+.2f} ms ({(ours - theirs) / theirs:+.1%}), "
            f"{'within' if abs(ours - theirs) <= iqr else 'outside'} archbench's IQR")
