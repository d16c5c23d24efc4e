"""What predicting costs (printed, never asserted): 10,000 sampled ``esnet_ratio`` variants
at 320 px from a table, with the per-process caches cold (as in a fresh process: every
distinct block built on meta once, every distinct module structure walked once, nothing
kept on disk) and warm, against building one model.

    pytest tests/benchmarks/test_predictor_cost.py --benchmarks -s
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

import archbench
from archbench.predict import LatencyTable, plan_rows, predict_many
from archbench.predict.table import _WALKS, _WALKS_BY_STRUCTURE, _no_cache
from archbench.spaces import sample_names

SPACE = archbench.default_registry().space("esnet_ratio")
COUNT = 10_000


def synthetic_table(resolution: int) -> LatencyTable:
    """Every row of 30 samples, timed by a made-up roofline (the cost does not depend on values)."""
    from archbench.environment import environment

    table = LatencyTable(environment=environment(1), settings={"threads": 1, "device": "cpu", "batch_size": 1,
                                                              "input": "image", "forms": ["eager"],
                                                              "resolutions": [resolution]})
    for name in sample_names(SPACE, 30, seed=99):
        for row in plan_rows(name, resolution):
            table.add("eager", {"signature": row.signature, "type": row.type, "kind": row.kind, "macs": row.macs,
                                "bytes_moved": row.bytes_moved,
                                "latency_ms": 0.005 + row.macs / 20e9 * 1e3 + row.bytes_moved / 10e9 * 1e3})
    return table


def test_predicting_10000_variants(report_figure: Callable[[str], None]) -> None:
    table = synthetic_table(320)
    names = sample_names(SPACE, COUNT, seed=0)
    registry = archbench.default_registry()
    with _no_cache():
        start = time.perf_counter()
        cold = predict_many(names, [320], table, registry=registry)
        cold_s = time.perf_counter() - start
        blocks, walked = len(_WALKS), len(_WALKS_BY_STRUCTURE)
        start = time.perf_counter()
        warm = predict_many(names, [320], table, registry=registry)
        warm_s = time.perf_counter() - start
    assert [p.latency_ms for p in cold] == [p.latency_ms for p in warm]
    start = time.perf_counter()
    for name in names[:20]:
        with torch.device("meta"):
            archbench.create_model(name)
    build_ms = (time.perf_counter() - start) / 20 * 1e3
    counts = {k: sum(p.counts[k] for p in cold) for k in cold[0].counts}
    report_figure(f"{COUNT:,} esnet_ratio variants @ 320: {cold_s:.2f} s with the caches cold ({blocks} distinct "
                  f"blocks, {walked} walked), {warm_s:.2f} s warm ({warm_s / COUNT * 1e3:.3f} ms per variant); "
                  f"building one model on meta alone takes {build_ms:.1f} ms ({build_ms * COUNT / 1e3:.0f} s for all); "
                  f"rows {counts}")
