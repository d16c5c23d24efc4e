"""What a sweep's machinery costs (printed, never asserted): a static cell on the meta device
against one CPU forward, static throughput over 1 and 2 workers, the per-cell overhead of the
local and Ray backends against ``archbench.profile`` of the same cell, and Ray's start-up.

    pytest tests/benchmarks/test_sweep_cost.py --benchmarks -s
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import archbench
from archbench.inputs import sample_input
from archbench.profilers.latency import cpu_threads
from archbench.settings import RunSettings
from archbench.spaces import sample_names
from archbench.sweep import LocalBackend
from archbench.sweep_jobs import static_job

SPACE = archbench.default_registry().space("esnet_ratio")
NAMES = sample_names(SPACE, 16, seed=0)
STATIC = ("params", "macs", "memory")


def jobs(names: list[str]) -> list[dict[str, Any]]:
    settings = RunSettings(variants=tuple(names), resolutions=(320,), metrics=STATIC)
    return [{"settings": settings.to_json(), "specs": [], "variant": n, "resolution": 320} for n in names]


def median_s(call: Callable[[], object], rounds: int = 7) -> float:
    call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_static_cell_vs_forward(report_figure: Callable[[str], None]) -> None:
    ratios = []
    for job in jobs(NAMES[:4]):
        model = archbench.create_model(job["variant"])
        x = sample_input(1, 320)
        with cpu_threads(1), torch.inference_mode():
            forward = median_s(lambda model=model, x=x: model(x))
        with cpu_threads(1):
            static = median_s(lambda job=job: static_job(job))
        ratios.append(static / forward)
    report_figure(f"static cell (build on meta + count) / one CPU forward, esnet_ratio @ 320, 1 thread: "
                  f"median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


@pytest.mark.parametrize("workers", [1, 2])
def test_static_throughput(workers: int, report_figure: Callable[[str], None]) -> None:
    backend = LocalBackend(workers)
    try:
        list(backend.static(jobs(NAMES[:workers])))  # workers started and warm
        start = time.perf_counter()
        done = list(backend.static(jobs(NAMES)))
        elapsed = time.perf_counter() - start
    finally:
        backend.close()
    report_figure(f"static cells of esnet_ratio @ 320 with {workers} worker(s): {len(done) / elapsed:.1f} cells/s")


def test_overhead_vs_profile(report_figure: Callable[[str], None]) -> None:
    job = jobs(NAMES[:1])[0]
    profile = median_s(lambda: archbench.profile(job["variant"], resolutions=(320,)), rounds=5)
    in_process = median_s(lambda: static_job(job), rounds=5)
    backend = LocalBackend(1)
    try:
        local = median_s(lambda: list(backend.static([job])), rounds=5)
    finally:
        backend.close()
    line = (f"one static cell: archbench.profile {profile * 1e3:.0f} ms; sweep job in process "
            f"{in_process * 1e3:.0f} ms; through the local backend {local * 1e3:.0f} ms "
            f"(overhead {(local - in_process) * 1e3:+.0f} ms)")
    try:
        from archbench.ray_backend import RayBackend
    except ImportError:  # pragma: no cover
        report_figure(line + "; Ray not installed")
        return
    start = time.perf_counter()
    ray_backend = RayBackend(workers=1)
    startup = time.perf_counter() - start
    try:
        remote = median_s(lambda: list(ray_backend.static([job])), rounds=5)
    finally:
        ray_backend.close()
    report_figure(f"{line}; through Ray {remote * 1e3:.0f} ms (overhead {(remote - in_process) * 1e3:+.0f} ms); "
                  f"Ray start-up (private instance) {startup:.1f} s")
