"""The frontier view: Pareto fronts, budgets, rank correlations, matched latency, its
report sections and plots, on hand-made runs with hand-computed answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from archbench.render.frontier import (
    FRONT_DIRECTIONS,
    REGISTERED_MARK,
    average_ranks,
    best_under_budget,
    cells,
    correlations,
    default_budgets,
    direction,
    fastest_with_at_least,
    front,
    front_goal,
    front_members,
    frontier_sections,
    fronts,
    is_sample,
    is_sweep,
    kendall_tau_b,
    matched_latency,
    pair_counts,
    pareto_front,
    spearman,
    undefined_reason,
)
from archbench.render.frontier_plots import FRONTIER_PLOT_FILES, write_frontier_plots
from archbench.results import RunResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(variant: str, latency: float | None, macs: int, params: int, peak: int, resolution: int = 320,
            status: str = "ok", noise: str = "ok", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"variant": variant, "resolution": resolution, "batch_size": 1, "device": "cpu",
                              "form": "eager", "status": status, "reason": "" if status == "ok" else "simulated"}
    if status == "ok":
        record.update(params=params, macs=macs, flops=2 * macs, act_peak_bytes=peak, latency_ms_median=latency,
                      latency_ms_iqr=None if latency is None else latency / 50, latency_noise=noise, **extra)
    return record


def _run(records: list[dict[str, Any]], families: dict[str, str], asked: list[str] | None = None) -> RunResult:
    names = asked or list(dict.fromkeys(r["variant"] for r in records))
    variants: dict[str, dict[str, Any]] = {n: {"family": families.get(n, "demo"), "kind": "backbone", "base": None, "builder": "demo",
                    "args": {}} for n in names}
    settings = {"variants": names, "resolutions": sorted({r["resolution"] for r in records}), "batch_size": 1,
                "device": "cpu", "metrics": ["params", "macs", "memory", "latency"], "threads": 1, "repeats": 1}
    return RunResult(run_id="frontier", created="2026-01-01T00:00:00+00:00", command="archbench sweep demo",
                     archbench_version="0.1.0", settings=settings,
                     environment={"cpu_model": "Test CPU", "cpu_cores": 2}, variants=variants, records=records,
                     complete=True)


def pareto_run() -> RunResult:
    """Samples of one space (and one registered variant), at 320 px. Fronts minimise
    latency and maximise MACs and params, minimise activation peak:

    ======== ======= ===== ====== ===== ============================================
    variant  latency MACs  params peak  on the front of
    ======== ======= ===== ====== ===== ============================================
    demo-a   5       100   1000   1024  all three: the fastest
    demo_s   8       300   2000   2048  MACs (registered); params: demo-c as fast,
                                        more params; peak: demo-a faster, lower
    demo-c   8       250   3000   1024  params; MACs: demo_s as fast, more MACs;
                                        peak: demo-a faster at an equal peak
    demo-d   12      200   1500   512   activation peak (noisy); MACs, params: slower
                                        than demo_s with fewer
    demo-e   10      500   3000   4096  MACs (ties with demo-f); params: demo-c faster
                                        at equal params
    demo-f   10      500   2500   4096  MACs (equal to demo-e in latency and MACs)
    demo-b   11      400   2000   4096  none: demo-e faster with more MACs, params
    demo-g   failed
    demo-h   no latency
    demo-i   not measured (asked for, no record)
    ======== ======= ===== ====== ===== ============================================
    """
    records = [
        _record("demo-a", 5.0, 100, 1000, 1024),
        _record("demo_s", 8.0, 300, 2000, 2048),
        _record("demo-c", 8.0, 250, 3000, 1024),
        _record("demo-d", 12.0, 200, 1500, 512, noise="contended"),
        _record("demo-e", 10.0, 500, 3000, 4096),
        _record("demo-f", 10.0, 500, 2500, 4096),
        _record("demo-b", 11.0, 400, 2000, 4096),
        _record("demo-g", None, 0, 0, 0, status="failed"),
        _record("demo-h", None, 120, 1200, 4096),
    ]
    names = [r["variant"] for r in records] + ["demo-i"]
    return _run(records, {}, names)


# -- (a) Pareto fronts -----------------------------------------------------------------


def test_axis_directions() -> None:
    assert {a: FRONT_DIRECTIONS[a][0] for a in FRONT_DIRECTIONS} == {
        "macs": "max", "params": "max", "act_peak_bytes": "min"}
    assert all(reason for _, reason in FRONT_DIRECTIONS.values())
    assert direction("bytes_moved") == "min"  # not in the table: a cost
    assert front_goal("macs") == "most MACs at a given latency"
    assert front_goal("act_peak_bytes") == "lowest activation peak at a given latency"


def test_pareto_front_minimising_both_keeps_ties_and_drops_dominated_points() -> None:
    points = [("p", 1, 3), ("q", 2, 2), ("r", 2, 3), ("s", 3, 1), ("t", 3, 1), ("u", 4, 4), ("v", 0.5, 3)]
    # v (0.5, 3) dominates p (1, 3): as slow, cheaper; r is dominated by q; u by everything;
    # s and t are equal in both: both kept. Fastest first.
    assert pareto_front(points) == ["s", "t", "q", "v"]
    assert pareto_front(points, "min") == pareto_front(points)
    assert pareto_front([]) == []
    assert pareto_front([("only", 1.0, 1.0)]) == ["only"]


def test_pareto_front_maximising_x() -> None:
    # (key, MACs, latency): most MACs at the least latency
    points = [("p", 1, 3), ("q", 2, 2), ("r", 2, 3), ("s", 3, 1), ("t", 3, 1), ("u", 4, 4), ("v", 0.5, 3),
              ("w", 5, 4), ("z", 1, 1)]
    # s and t (3, 1): the fastest with the most MACs at 1 ms; z (1, 1) as fast with fewer: dominated.
    # q (2, 2): slower than s with fewer MACs: dominated, and so are p, r, v.
    # w (5, 4): the most MACs of all: on; u (4, 4) as slow with fewer: dominated.
    assert pareto_front(points, "max") == ["s", "t", "w"]
    # the same points minimising x instead: z (1, 1) dominates all but v (0.5, 3)
    assert pareto_front(points, "min") == ["z", "v"]
    # a point dominated only in the max direction: a (10 MACs, 5 ms) is beaten by b (12, 5)
    assert pareto_front([("a", 10, 5), ("b", 12, 5), ("c", 8, 4)], "max") == ["c", "b"]
    assert pareto_front([("a", 10, 5), ("b", 12, 5), ("c", 8, 4)], "min") == ["c"]
    with pytest.raises(ValueError, match="sense"):
        pareto_front(points, "up")  # type: ignore[arg-type]


def test_front_of_a_run_excludes_failed_and_missing_cells_and_says_why() -> None:
    result = pareto_run()
    found = front(result, 320, "macs")
    assert found.sense == "max"
    assert found.names == ["demo-a", "demo_s", "demo-e", "demo-f"]  # fastest first; e and f tie
    assert front_members(result, 320, "macs") == found.names
    assert [c.variant for c in found.cells] == ["demo-a", "demo_s", "demo-c", "demo-d", "demo-e", "demo-f",
                                                "demo-b"]
    assert found.excluded == (("demo-g", "failed"), ("demo-h", "no latency"), ("demo-i", "not measured"))
    # params (max): demo-c (8 ms, 3000) beats demo_s (as fast) and demo-e (slower, equal params)
    assert front_members(result, 320, "params") == ["demo-a", "demo-c"]
    # activation peak (min): demo-a (5 ms, 1 KiB) beats demo-c (slower at an equal peak); demo-d has the lowest
    assert front(result, 320, "act_peak_bytes").sense == "min"
    assert front_members(result, 320, "act_peak_bytes") == ["demo-a", "demo-d"]


def test_fronts_cover_each_axis_and_split_by_family() -> None:
    result = pareto_run()
    assert [(f.resolution, f.axis, f.family) for f in fronts(result)] == [
        (320, "macs", None), (320, "params", None), (320, "act_peak_bytes", None)]
    per_family = fronts(two_family_run())
    assert [(f.axis, f.family, f.names) for f in per_family] == [
        # within a family the slower variant has more MACs and params: every one is on both fronts
        ("macs", "alpha", ["a1", "a2"]), ("params", "alpha", ["a1", "a2"]),
        ("macs", "beta", ["b1", "b2"]), ("params", "beta", ["b1", "b2"])]


def test_sample_names_and_sweeps() -> None:
    assert is_sample("esnet_ratio-3fa2c1") and is_sample("demo-a")
    assert not is_sample("esnet_s") and not is_sample("esnet_s.nose") and not is_sample("shufflenetv2_x0_5")
    assert is_sample("esnet_custom", {"space": "esnet_ratio"})
    assert is_sweep(pareto_run()) and not is_sweep(two_family_run())


# -- (b) budgets -----------------------------------------------------------------------


def test_best_under_a_latency_budget_ranks_by_macs_most_first() -> None:
    result = pareto_run()
    fits = best_under_budget(result, 320, "latency_ms_median", 9.0)
    assert [c.variant for c in fits] == ["demo_s", "demo-c", "demo-a"]  # 300, 250, 100 MACs
    assert [c.variant for c in best_under_budget(result, 320, "latency_ms_median", 9.0, top=1)] == ["demo_s"]
    # demo-e and demo-f tie in MACs and latency: run order
    fits = best_under_budget(result, 320, "latency_ms_median", 10.0)
    assert [c.variant for c in fits] == ["demo-e", "demo-f", "demo_s", "demo-c", "demo-a"]
    assert best_under_budget(result, 320, "latency_ms_median", 4.9) == []


def test_fastest_with_at_least_so_many_macs() -> None:
    result = pareto_run()
    # demo_s and demo-c tie at 8 ms: more MACs first; demo-e and demo-f tie in both: run order
    fits = fastest_with_at_least(result, 320, "macs", 250)
    assert [c.variant for c in fits] == ["demo_s", "demo-c", "demo-e", "demo-f", "demo-b"]
    assert [c.variant for c in fastest_with_at_least(result, 320, "macs", 300, top=2)] == ["demo_s", "demo-e"]
    assert fastest_with_at_least(result, 320, "macs", 501) == []
    # params: demo-c and demo_s tie at 8 ms: more params first
    assert [c.variant for c in fastest_with_at_least(result, 320, "params", 2000)][:2] == ["demo-c", "demo_s"]


def test_the_best_under_a_limit_is_on_the_front() -> None:
    result = pareto_run()
    on = set(front_members(result, 320, "macs"))
    for limit in (5.0, 8.0, 9.0, 10.0, 11.0, 12.0):
        assert best_under_budget(result, 320, "latency_ms_median", limit)[0].variant in on
    for limit in (100, 150, 250, 300, 400, 500):
        assert fastest_with_at_least(result, 320, "macs", limit)[0].variant in on


def test_best_under_a_cost_budget_ranks_by_latency_fastest_first() -> None:
    result = pareto_run()
    # activation peak at most 1 KiB: demo-a 5 ms, demo-c 8 ms, demo-d 12 ms; demo-h has no latency
    fits = best_under_budget(result, 320, "act_peak_bytes", 1024)
    assert [c.variant for c in fits] == ["demo-a", "demo-c", "demo-d"]
    # at most 300 MACs by latency: demo_s and demo-c tie at 8 ms, more MACs first
    fits = best_under_budget(result, 320, "macs", 300)
    assert [c.variant for c in fits] == ["demo-a", "demo_s", "demo-c", "demo-d"]


def test_default_budgets_are_rounded_quartiles() -> None:
    assert default_budgets([5.0, 8.0, 8.0, 10.0, 10.0, 12.0]) == [8.0, 9.0, 10.0]
    assert default_budgets([1.0]) == []


# -- (c) rank correlations -------------------------------------------------------------


def test_spearman_and_kendall_without_ties() -> None:
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # 8 concordant, 2 discordant pairs: tau = 6/10; sum d^2 = 4: rho = 1 - 6*4/(5*24)
    assert kendall_tau_b(x, y) == pytest.approx(0.6)
    assert spearman(x, y) == pytest.approx(0.8)
    assert pair_counts(x, y).agreement == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_and_kendall_with_ties() -> None:
    # x tied once: C = 5, D = 0, one pair tied in x only; tau-b = 5 / sqrt(5 * 6)
    x, y = [1, 2, 2, 3], [1, 3, 2, 4]
    assert average_ranks(x) == [1.0, 2.5, 2.5, 4.0]
    assert kendall_tau_b(x, y) == pytest.approx(5 / math.sqrt(30))
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # Pearson of the average ranks
    # ties in both: C = 4, one pair tied in y only, one in both; tau-b = 4 / sqrt(5 * 4)
    x, y = [1, 1, 2, 3], [1, 1, 2, 2]
    counts = pair_counts(x, y)
    assert (counts.concordant, counts.discordant, counts.tied_x, counts.tied_y, counts.tied_both) == (4, 0, 0, 1, 1)
    assert kendall_tau_b(x, y) == pytest.approx(4 / math.sqrt(20))
    assert spearman(x, y) == pytest.approx(4 / math.sqrt(18))


def test_pair_counts_match_a_plain_count_of_every_pair() -> None:
    import random

    rng = random.Random(17)
    x = [rng.choice([1.0, 2.0, 3.0, 4.5]) for _ in range(40)]
    y = [rng.choice([0.1, 0.2, 0.3]) for _ in range(40)]
    kinds = {"c": 0, "d": 0, "x": 0, "y": 0, "b": 0}
    for i in range(40):
        for j in range(i + 1, 40):
            dx, dy = x[j] - x[i], y[j] - y[i]
            kinds["b" if dx == dy == 0 else "x" if dx == 0 else "y" if dy == 0 else "c" if dx * dy > 0 else "d"] += 1
    counts = pair_counts(x, y)
    assert (counts.concordant, counts.discordant, counts.tied_x, counts.tied_y, counts.tied_both) == tuple(
        kinds.values())
    c, d = kinds["c"], kinds["d"]
    assert kendall_tau_b(x, y) == pytest.approx((c - d) / math.sqrt((c + d + kinds["y"]) * (c + d + kinds["x"])))


def test_rank_correlations_are_undefined_with_a_reason() -> None:
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(kendall_tau_b([1, 2], [2, 1]))
    assert undefined_reason([1, 2], [2, 1]) == "fewer than 3 pairs (n = 2)"
    assert undefined_reason([1, 2, None, float("nan")], [2, 1, 3, 4]) == "fewer than 3 pairs (n = 2)"
    assert undefined_reason([5, 5, 5], [1, 2, 3]) == "x is the same for every pair"
    assert undefined_reason([1, 2, 3], [7, 7, 7]) == "y is the same for every pair"
    assert math.isnan(kendall_tau_b([5, 5, 5], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [7, 7, 7]))
    assert undefined_reason([1, 2, 3], [1, 3, 2]) is None
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


def test_correlations_of_a_run_per_predictor() -> None:
    result = pareto_run()
    found = {c.predictor: c for c in correlations(result, 320)}
    assert list(found) == ["macs", "params", "act_peak_bytes"]  # no bytes_moved in this run
    macs, lat = [100, 300, 250, 200, 500, 500, 400], [5, 8, 8, 12, 10, 10, 11]
    assert found["macs"].n == 7 and found["macs"].noisy == 1 and found["macs"].reason == ""
    # by hand, of the 21 pairs: demo-a before all six others, and demo_s, demo-c before demo-e, -f, -b:
    # 12 concordant; demo-d against demo_s, -c, -e, -f, -b and demo-b against demo-e, -f: 7 discordant;
    # demo_s, demo-c tied in latency only; demo-e, demo-f tied in both
    counts = pair_counts(macs, lat)
    assert (counts.concordant, counts.discordant, counts.tied_x, counts.tied_y, counts.tied_both) == (12, 7, 0, 1, 1)
    assert found["macs"].agreement == pytest.approx(12 / 19)
    assert found["macs"].kendall == pytest.approx((12 - 7) / math.sqrt(20 * 19))
    # average ranks: MACs 1, 4, 3, 2, 6.5, 6.5, 5; latency 1, 2.5, 2.5, 7, 4.5, 4.5, 6 (mean 4):
    # covariance 9, variances 27.5 and 27
    assert found["macs"].spearman == pytest.approx(9 / math.sqrt(27.5 * 27))


def test_bytes_moved_is_a_predictor_only_when_recorded() -> None:
    records = [_record(f"demo-{i}", 10.0 + i, 100 * (i + 1), 1000, 4096, bytes_moved=5000 * (i + 1))
               for i in range(4)]
    records.append(_record("demo-4", 20.0, 600, 1000, 4096))  # per-layer measurement did not run here
    found = {c.predictor: c for c in correlations(_run(records, {}), 320)}
    assert found["bytes_moved"].n == 4 and found["bytes_moved"].kendall == pytest.approx(1.0)
    assert found["macs"].n == 5
    assert found["params"].reason == "x is the same for every pair" and math.isnan(found["params"].spearman)


# -- (d) matched latency ---------------------------------------------------------------


def two_family_run() -> RunResult:
    """alpha: a1 (10 ms), a2 (20.5 ms, exactly between b1 and b2); beta: b1 (11 ms), b2 (30 ms)."""
    records = [
        _record("a1", 10.0, 5000, 1000, 400),
        _record("a2", 20.5, 9000, 3000, 800),
        _record("b1", 11.0, 4000, 500, 400, noise="contended"),
        _record("b2", 30.0, 10000, 2000, 1000),
    ]
    return _run(records, {"a1": "alpha", "a2": "alpha", "b1": "beta", "b2": "beta"})


def test_matched_latency_pairs_each_variant_with_the_nearest_of_the_other_family() -> None:
    matches = {m.variant: m for m in matched_latency(two_family_run(), 320)}
    assert {v: m.match for v, m in matches.items()} == {"a1": "b1", "a2": "b1", "b1": "a1", "b2": "a2"}
    a1 = matches["a1"]
    assert (a1.d_params, a1.d_macs, a1.d_act_peak) == (500, 1000, 0)
    assert a1.gap_percent == pytest.approx(-100 / 11)
    assert a1.percent("d_params") == pytest.approx(100.0) and a1.percent("d_macs") == pytest.approx(25.0)
    assert a1.percent("d_act_peak") == pytest.approx(0.0) and a1.noisy  # b1 is noisy
    b1 = matches["b1"]
    assert (b1.d_params, b1.d_macs, b1.gap_percent) == (-500, -1000, pytest.approx(10.0))
    assert b1.percent("d_params") == pytest.approx(-50.0) and b1.percent("d_macs") == pytest.approx(-20.0)
    # a2 is 9.5 ms from both b1 and b2: the faster wins
    assert matches["a2"].gap_percent == pytest.approx(950 / 11)
    assert not matches["b2"].noisy and matches["b2"].d_act_peak == 200
    assert matched_latency(pareto_run(), 320) == []  # one family


# -- markdown ------------------------------------------------------------------------------


def _titles(sections: list[str]) -> list[str]:
    return [s.splitlines()[0] for s in sections]


def test_sections_of_a_sweep() -> None:
    sections = frontier_sections(pareto_run())
    assert _titles(sections) == ["## Frontier", "## Does compute predict latency?"]  # 7 variants: no budgets
    frontier, predict = sections
    assert ("each front holds, at a given latency, the most MACs / the most params / the lowest activation peak "
            "(MACs and params stand in for capacity, what latency buys, as accuracy is not measured; "
            "activation peak is a cost)") in frontier
    assert "6 of 7 variants on a front." in frontier
    assert "| `demo-a` | 5.00 | 100 | 1.00 | 1.00 | MACs, params, activation peak |" in frontier
    assert f"| `demo_s` {REGISTERED_MARK} | 8.00 | 300 | 2.00 | 2.00 | MACs |" in frontier
    assert "| `demo-c` | 8.00 | 250 | 3.00 | 1.00 | params |" in frontier
    assert "| `demo-e` | 10.0 | 500 | 3.00 | 4.00 | MACs |" in frontier
    assert "| `demo-f` | 10.0 | 500 | 2.50 | 4.00 | MACs |" in frontier
    assert "| `demo-d` | 12.0† | 200 | 1.50 | 0.500 | activation peak |" in frontier
    assert "`demo-b`" not in frontier  # a sample on no front is not listed
    assert "Left out: `demo-g` (failed), `demo-h` (no latency), `demo-i` (not measured)." in frontier
    assert ("| variant | latency (ms) | MACs (count) | params (thousands) | activation peak (KiB) "
            "| on the front of |") in frontier
    assert "FLOPs" not in frontier and "FLOPs" not in predict
    assert "| 320 px | MACs | 7 | +0.33 | +0.26 | 63% |" in predict
    assert "undefined because" not in predict
    assert "Bytes moved are not in this run" in predict
    assert ("**How good a proxy are MACs for latency within the space on Test CPU (cpu, 1 thread(s))?** "
            "Poor: Kendall τ-b +0.26 (n = 7)") in predict
    assert "fewer MACs was the faster in 63% of pairs" in predict
    assert "ranked latency better" not in predict  # params -0.05, activation peak +0.22
    assert "1 of 7 latencies flagged as noisy" in predict


def test_best_under_budget_appears_for_many_variants() -> None:
    records = [_record(f"demo-{i}", 10.0 + i, 100 * (i + 1), 1000 + i, 4096) for i in range(8)]
    sections = frontier_sections(_run(records, {}))
    assert _titles(sections) == ["## Frontier", "## Best under budget", "## Does compute predict latency?"]
    budgets = sections[1]
    # latencies 10..17: quartiles 11.75, 13.5, 15.25 -> 12, 14, 15 (two significant figures);
    # MACs 100..800: 275, 450, 625 -> 280, 450, 620
    assert "| latency ≤ 12.0 | 3 of 8 | `demo-2` (12.0, 300); `demo-1` (11.0, 200); `demo-0` (10.0, 100) |" in budgets
    assert "| latency ≤ 15.0 | 6 of 8 | `demo-5` (15.0, 600); `demo-4` (14.0, 500); `demo-3` (13.0, 400) |" in budgets
    # at least so many MACs: the fastest that has them
    assert "| MACs ≥ 280 | 6 of 8 | `demo-2` (12.0, 300); `demo-3` (13.0, 400); `demo-4` (14.0, 500) |" in budgets
    assert "| MACs ≥ 450 | 4 of 8 | `demo-4` (14.0, 500); `demo-5` (15.0, 600); `demo-6` (16.0, 700) |" in budgets
    assert "| MACs ≥ 620 | 2 of 8 | `demo-6` (16.0, 700); `demo-7` (17.0, 800) |" in budgets
    assert "| limit (latency in ms, MACs) | fit | best, top 3 (latency, MACs) |" in budgets
    predict = sections[2]
    assert "| 320 px | MACs | 8 | +1.00 | +1.00 | 100% |" in predict
    assert "Good: Kendall τ-b +1.00 (n = 8)" in predict
    assert "| 320 px | activation peak | 8 | - | - | - | x is the same for every pair |" in predict


def test_a_sweep_lists_registered_variants_off_the_front() -> None:
    # MACs and params (max): demo-a, demo-c, demo-d; demo_m (9 ms, 240) is slower than demo-d with fewer,
    # demo-e (9.5 ms, 200) slower than demo-c with as many, demo-b (6 ms, 90) slower than demo-a with fewer.
    # Activation peak (min): demo-a (5 ms, 1024), demo-b (6 ms, 1000).
    records = [_record("demo-a", 5.0, 100, 100, 1024), _record("demo-b", 6.0, 90, 90, 1000),
               _record("demo_m", 9.0, 240, 240, 4096), _record("demo-c", 7.0, 200, 200, 2048),
               _record("demo-d", 8.0, 250, 250, 3072), _record("demo-e", 9.5, 200, 200, 4096)]
    frontier = frontier_sections(_run(records, {}))[0]
    assert "4 of 6 variants on a front." in frontier
    assert "| `demo-b` | 6.00 | 90.0 | 90.0 | 0.977 | activation peak |" in frontier
    assert f"| `demo_m` {REGISTERED_MARK} | 9.00 | 240 | 240 | 4.00 | - |" in frontier
    assert "`demo-e`" not in frontier and "every registered variant" in frontier


def test_sections_of_a_run_of_two_families() -> None:
    sections = frontier_sections(two_family_run())
    assert _titles(sections) == ["## Frontier", "## At equal latency"]
    frontier, equal = sections
    assert "Pareto fronts of each family's variants" in frontier and REGISTERED_MARK not in frontier
    assert "each front holds, at a given latency, the most MACs / the most params" in frontier
    assert "4 of 4 variants on a front." in frontier  # in each family the slower has more MACs and params
    assert "| `a2` | alpha | 20.5 | 9.00 | 3.00 | MACs, params |" in frontier
    assert "| `a1` | alpha | 10.0 | 5.00 | 1.00 | MACs, params |" in frontier
    assert "| `b1` | beta | 11.0† | 4.00 | 0.500 | MACs, params |" in frontier
    assert ("| variant | nearest in latency | latency (ms) | its latency (ms) | latency gap | Δ params (thousands) "
            "| Δ MACs (thousands) | Δ activation peak (B) |") in equal
    assert "| `a1` (alpha) | `b1` (beta) | 10.0 | 11.0 | -9%† | +0.500 (+100%) | +1.00 (+25%) | 0 (+0%) |" in equal
    assert "| `b2` (beta) | `a2` (alpha) | 30.0 | 20.5 | +46% | -1.00 (-33%) | +1.00 (+11%) | +200 (+25%) |" in equal
    assert ("- `alpha` against `beta` (1 pair(s) within ±10% latency): median MACs +25%, params +100%, "
            "activation peak +0%.") in equal
    assert ("- `beta` against `alpha` (1 pair(s) within ±10% latency): median MACs -20%, params -50%, "
            "activation peak +0%.") in equal


def test_no_sections_for_a_small_run_of_one_family() -> None:
    records = [_record(f"demo_{i}", 10.0 + i, 100 * (i + 1), 1000, 4096) for i in range(4)]
    assert frontier_sections(_run(records, {})) == []
    assert frontier_sections(_run([], {})) == []


def test_sections_of_the_report_golden_run() -> None:
    from tests.test_run_report import synthetic_result

    result = synthetic_result()
    titles = _titles(frontier_sections(result))
    assert titles == ["## Frontier", "## At equal latency"]
    excluded = cells(result, 416)[1]
    assert excluded == [("esnet_s", "failed")]


# -- plots -------------------------------------------------------------------------------------


def test_plots_are_written_when_they_apply(tmp_path: Path) -> None:
    assert write_frontier_plots(pareto_run(), tmp_path) == list(FRONTIER_PLOT_FILES)
    for name in FRONTIER_PLOT_FILES:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    other = tmp_path / "two"
    assert write_frontier_plots(two_family_run(), other) == ["pareto_fronts.png"]
    small = tmp_path / "small"
    records = [_record(f"demo_{i}", 10.0 + i, 100 * (i + 1), 1000, 4096) for i in range(3)]
    assert write_frontier_plots(_run(records, {}), small) == []
    assert not list(small.glob("*.png"))
