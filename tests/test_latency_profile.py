"""The latency metric in archbench.profile: columns, interleaving, repeats in processes.

Nothing here asserts how long anything took.
"""

from __future__ import annotations

import pytest
import torch

import archbench
from archbench.metrics import aggregate_repeats
from archbench.profilers.latency import LatencyConfig
from archbench.runner import latency_order

QUICK = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)
LATENCY_COLUMNS = ["latency_ms_median", "latency_ms_iqr", "latency_ms_p90", "latency_ms_min", "latency_n",
                   "latency_ms_cold", "threads", "latency_noise", "latency_other_load"]


def test_latency_row_has_columns_and_verdict() -> None:
    before = torch.get_num_threads()
    df = archbench.profile("shufflenetv2_x1_0", resolutions=(320,), metrics=("latency",), latency=QUICK)
    row = df.iloc[0]
    assert set(LATENCY_COLUMNS) <= set(df.columns)
    assert row["threads"] == 1 and row["latency_n"] >= 10
    assert row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_p90"]
    assert set(row["latency_noise"].split("+")) <= {"ok", "noisy", "contended", "unknown-load", "stalls", "unconverged"}
    assert torch.get_num_threads() == before
    assert df.attrs["environment"]["intra_op_threads"] == 1
    assert {"cpu_model", "cpu_cores", "torch", "onednn"} <= set(df.attrs["environment"])


def test_interleaving_order() -> None:
    assert latency_order(["a", "b", "c"], [320, 416]) == [
        ("a", 320), ("b", 320), ("c", 320), ("a", 416), ("b", 416), ("c", 416)]
    assert latency_order(["a", "b", "c"], [320], rotation=1) == [("b", 320), ("c", 320), ("a", 320)]
    assert latency_order(["a", "b", "c"], [320], rotation=5) == [("c", 320), ("a", 320), ("b", 320)]


def _process_row(median: float, noise: str = "ok") -> dict[str, object]:
    return {"latency_ms_median": median, "latency_ms_iqr": median / 10, "latency_ms_p90": median * 1.1,
            "latency_ms_min": median * 0.9, "latency_n": 20, "latency_ms_cold": 2 * median, "latency_rel_ci": 0.01,
            "latency_wall_ms_median": median, "latency_other_load": 0.1, "latency_attempts": 1,
            "latency_noise": noise, "threads": 1}


def test_aggregate_is_median_of_process_medians_with_spread() -> None:
    agg = aggregate_repeats([_process_row(10.0), _process_row(14.0, "noisy"), _process_row(11.0)])
    assert agg["latency_ms_median"] == 11.0 and agg["latency_ms_spread"] == 4.0
    assert agg["latency_ms_min"] == pytest.approx(9.0) and agg["latency_n"] == 60
    assert agg["latency_noise"] == "noisy" and agg["latency_repeats"] == 3
    assert aggregate_repeats([_process_row(10.0), _process_row(12.0)])["latency_ms_median"] == 11.0


def test_repeats_run_in_separate_processes() -> None:
    df = archbench.profile(["shufflenetv2_x0_5", "esnet_s"], resolutions=(64,), metrics=("latency",),
                           repeats=2, latency=QUICK)
    per_process = df.attrs["latency_processes"]
    assert len(per_process) == 4  # 2 variants x 2 processes
    pids = {row["pid"] for row in per_process}
    assert len(pids) == 2 and all(p != __import__("os").getpid() for p in pids)
    # process 1 is rotated: esnet_s first
    assert [r["variant"] for r in per_process if r["process"] == 1] == ["esnet_s", "shufflenetv2_x0_5"]
    for row in df.itertuples():
        medians = sorted(p["latency_ms_median"] for p in per_process if p["variant"] == row.variant)
        assert row.latency_ms_median == pytest.approx(sum(medians) / 2)
        assert row.latency_ms_spread == pytest.approx(medians[1] - medians[0])
        assert row.latency_repeats == 2


def test_repeats_need_registered_names() -> None:
    with pytest.raises(archbench.ArchbenchError, match="need registered variant names"):
        archbench.profile(torch.nn.Conv2d(3, 3, 1), resolutions=(32,), metrics=("latency",), repeats=2)
