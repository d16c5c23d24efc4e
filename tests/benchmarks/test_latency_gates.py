"""Latency gates: forward latency of the default comparison's variants at 320/416/640.

Timing, so collected only with ``--benchmarks`` (never in the default run or CI). Saved
and compared with pytest-benchmark, failing when a median regresses past a threshold::

    pytest tests/benchmarks/test_latency_gates.py --benchmarks --benchmark-autosave \\
        --benchmark-compare --benchmark-compare-fail=median:10% --benchmark-group-by=group

One thread (intra- and inter-op), inference mode, the same seeded input archbench
uses; params and MACs ride along in ``extra_info`` so a saved run says what was timed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import archbench
from archbench.inputs import sample_input
from archbench.profilers.compute import count_compute
from archbench.profilers.latency import cpu_threads
from archbench.settings import DEFAULT_VARIANTS

VARIANTS = DEFAULT_VARIANTS.split(",")
RESOLUTIONS = (320, 416, 640)
ROUNDS = dict(rounds=20, warmup_rounds=5, iterations=1)

BY_RESOLUTION = [
    pytest.param(r, id=f"{r}px", marks=pytest.mark.benchmark(group=f"forward @ {r}px")) for r in RESOLUTIONS
]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: archbench.create_model(name) for name in VARIANTS}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with cpu_threads(1):
        yield


@pytest.mark.parametrize("resolution", BY_RESOLUTION)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_latency(benchmark: Any, models: dict[str, nn.Module], variant: str, resolution: int) -> None:
    model, x = models[variant], sample_input(1, resolution)
    benchmark.extra_info.update(
        variant=variant, resolution=resolution, threads=torch.get_num_threads(),
        params=sum(p.numel() for p in model.parameters()), macs=count_compute(model, x).macs,
    )
    with torch.inference_mode():
        benchmark.pedantic(model, args=(x,), **ROUNDS)
