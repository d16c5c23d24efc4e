"""The per-layer profile: does it reconcile, and what does it cost (printed, never asserted).

``pytest tests/benchmarks/test_layers_cost.py --benchmarks -s``: for every registered base
variant at 320 px, CPU, 1 thread, the ratio of the sum of layer medians to the whole-model
median measured in the same call (the issue's bar: within 15%, i.e. 0.85-1.15), and the
cost of one ``profile_layers("picodet_s", 320)`` call (the bar: at most 15 s).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from archbench.machine import machine_ceilings
from archbench.profilers.layers import profile_layers
from archbench.registry import default_registry

BAR = 0.15


def base_variants() -> list[str]:
    return [spec.name for spec in default_registry() if not spec.is_ablation]


def test_reconciliation_every_base_variant(report_figure: Callable[[str], None]) -> None:
    machine_ceilings("cpu", 1)  # measured once, cached, outside the profiles
    ratios: dict[str, float] = {}
    for name in base_variants():
        df = profile_layers(name, 320, device="cpu", threads=1)
        ratio = df.attrs["reconciliation"]
        ratios[name] = ratio
        verdict = "ok" if abs(ratio - 1) <= BAR else f"OUTSIDE {BAR:.0%}"
        if df.attrs["contended"]:
            verdict += ", CONTENDED: other processes shared this core"
        report_figure(f"{name} @ 320: layers_sum {df.attrs['layers_sum_ms']:.2f} ms / forward "
                      f"{df.attrs['forward_ms']:.2f} ms = {ratio:.3f} ({verdict}; hooked forward "
                      f"{df.attrs['hooked_forward_ms']:.2f} ms, {len(df)} rows, other load "
                      f"{df.attrs['other_load']:.2f} cores)")
    worst = max(ratios, key=lambda n: abs(ratios[n] - 1))
    outside = [n for n, r in ratios.items() if abs(r - 1) > BAR]
    report_figure(f"{len(ratios)} base variants, ratios {min(ratios.values()):.3f}-{max(ratios.values()):.3f}, "
                  f"worst {worst} {ratios[worst]:.3f}; outside {BAR:.0%}: {', '.join(outside) or 'none'}")


@pytest.mark.benchmark(group="per-layer profile, picodet_s@320")
def test_picodet_s_profile_cost(benchmark, report_figure: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    """One whole ``profile_layers`` call: build, calibrate, count, capture bytes, time (ceilings cached)."""
    machine_ceilings("cpu", 1)
    result = benchmark.pedantic(profile_layers, args=("picodet_s", 320), kwargs={"threads": 1},
                                rounds=3, iterations=1, warmup_rounds=0)
    stats = benchmark.stats.stats
    report_figure(f"profile_layers('picodet_s', 320), 1 thread: median {stats.median:.2f} s, max {stats.max:.2f} s "
                  f"over {stats.rounds} calls (bar 15 s); last call's phases "
                  f"{ {k: round(v, 2) for k, v in result.attrs['phase_s'].items()} } s, "
                  f"ratio {result.attrs['reconciliation']:.3f}, other load {result.attrs['other_load']:.2f} cores")


def test_layers_in_a_run_at_most_doubles_the_latency_phase(report_figure: Callable[[str], None]) -> None:
    """``--metrics ...,latency,layers`` against ``...,latency``: the layers phase's seconds over
    the latency phase's, in one run of the default comparison at 320 px (the bar: at most 1,
    i.e. adding layers at most doubles the timed part of a run)."""
    import time

    from archbench.runner import Runner
    from archbench.settings import DEFAULT_VARIANTS, RunSettings

    machine_ceilings("cpu", 1)
    seconds: dict[str, float] = {}

    class Timed(Runner):
        def _latency_phase(self, result):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            super()._latency_phase(result)
            seconds["latency"] = time.perf_counter() - started

        def _layers_phase(self, result):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            super()._layers_phase(result)
            seconds["layers"] = time.perf_counter() - started

    settings = RunSettings(tuple(DEFAULT_VARIANTS.split(",")), (320,), metrics=("params", "latency", "layers"))
    result = Timed(settings, None).run()
    ratio = seconds["layers"] / seconds["latency"]
    cells = [r for r in result.records if r["status"] == "ok"]
    report_figure(f"{len(cells)} cells at 320 px: latency phase {seconds['latency']:.1f} s, layers phase "
                  f"{seconds['layers']:.1f} s, ratio {ratio:.2f} (bar 1.00: {'ok' if ratio <= 1 else 'OVER'}); "
                  f"per-layer samples {sorted(r['layers_samples'] for r in cells)}")
