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
from archbench.factory import create_meta_model
from archbench.inputs import sample_input
from archbench.profilers.latency import cpu_threads
from archbench.profilers.meta import counting_pass
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
    """The whole static job, and its two parts (the build on meta, the counting pass), each
    over one CPU forward of the same sample measured beside it."""
    parts: dict[str, list[float]] = {"static cell": [], "build on meta": [], "counting pass": []}
    for job in jobs(NAMES[:4]):
        model = archbench.create_model(job["variant"])
        x = sample_input(1, 320)
        meta_model = create_meta_model(job["variant"])
        meta_x = torch.empty(1, 3, 320, 320, device="meta")
        with cpu_threads(1):
            with torch.inference_mode():
                forward = median_s(lambda model=model, x=x: model(x))
            parts["static cell"].append(median_s(lambda job=job: static_job(job)) / forward)
            parts["build on meta"].append(median_s(lambda job=job: create_meta_model(job["variant"])) / forward)
            parts["counting pass"].append(median_s(
                lambda m=meta_model, x=meta_x: counting_pass(m, x, track_peak=True)) / forward)
    report_figure("over one CPU forward, esnet_ratio @ 320, 1 thread: " + "; ".join(
        f"{part} median {statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f})" for part, r in parts.items()))


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
