"""The speed probe: its readings, the slowdown arithmetic, and where slowed cells go
(report notes, a latency table's build, a predictor's validation)."""

from __future__ import annotations

import math
from itertools import count

import pytest

from archbench.predict.table import LatencyTable, speed_factors, table_from_result
from archbench.predict.validate import at_reference_speed, at_speed, process_slowdowns
from archbench.profilers.latency import LatencyConfig, measure_latency
from archbench.profilers.speed import SLOW_FACTOR, bracket_ms, is_slow, slowdowns, speed_probe
from archbench.render.markdown import notes_section
from archbench.results import RunResult

FAST = LatencyConfig(warmup_calls=1, warmup_s=0.0, min_samples=5, min_time_s=0.01, max_time_s=0.05, retries=0)


def test_a_reading_is_a_positive_time() -> None:
    reading = speed_probe().read_ms()
    assert math.isfinite(reading) and 0 < reading < 1000
    assert speed_probe() is speed_probe()  # one probe per process


def test_slowdowns_are_relative_to_the_fastest_of_the_same_host_and_threads() -> None:
    rows = [
        {"host": "a", "threads": 1, "p": 2.0},
        {"host": "a", "threads": 1, "p": 3.0},
        {"host": "a", "threads": 2, "p": 1.5},  # other threads: its own reference
        {"host": "b", "threads": 1, "p": 4.0},  # other host: its own reference
        {"host": "a", "threads": 1, "p": None},  # not read (a GPU cell, an old result)
        {"host": "a", "threads": 1, "p": float("nan")},
    ]
    factors = slowdowns(rows, "p")
    assert factors[:4] == [1.0, 1.5, 1.0, 1.0]
    assert math.isnan(factors[4]) and math.isnan(factors[5])


def test_slow_is_above_the_factor_and_nan_is_not_slow() -> None:
    assert not is_slow(SLOW_FACTOR) and is_slow(SLOW_FACTOR + 1e-9)
    assert not is_slow(math.nan)
    assert bracket_ms([1.0, 3.0]) == 2.0 and bracket_ms([math.nan, 3.0]) == 3.0 and math.isnan(bracket_ms([]))


def test_measure_latency_reads_the_probe_around_the_sampling() -> None:
    readings = count(start=1)
    calls: list[str] = []

    def speed() -> float:
        calls.append("probe")
        return float(next(readings))

    result = measure_latency(lambda: calls.append("call"), FAST, speed=speed)
    assert result.probe_ms == 1.5  # median of the readings before (1) and after (2)
    sampled = [i for i, c in enumerate(calls) if c == "probe"]
    assert len(sampled) == 2 and sampled[0] > 0 and sampled[1] == len(calls) - 1  # after warm-up, around the samples
    assert math.isnan(measure_latency(lambda: None, FAST).probe_ms)


def _run(probes: dict[str, tuple[float | None, float | None]]) -> RunResult:
    result = RunResult("r", "", "", "", {"variants": list(probes), "resolutions": [64], "forms": ["eager"]}, {})
    for variant, (latency_probe, layers_probe) in probes.items():
        result.records.append({"variant": variant, "resolution": 64, "batch_size": 1, "device": "cpu", "form": "eager",
                               "status": "ok", "reason": "", "threads": 1, "latency_ms_median": 10.0,
                               "latency_probe_ms": latency_probe, "layers_probe_ms": layers_probe})
    return result


def test_a_table_brings_every_cell_to_the_builds_fastest_speed() -> None:
    result = _run({"a": (1.0, 1.25), "b": (2.0, 0.5), "c": (None, None)})
    reference, factors = speed_factors(result)
    assert reference == 0.5  # the fastest reading of either phase
    assert factors == {("a", 64, "eager"): (2.0, 2.5), ("b", 64, "eager"): (4.0, 1.0), ("c", 64, "eager"): (1.0, 1.0)}
    for variant in "abc":
        result.layers.append({"variant": variant, "resolution": 64, "form": "eager", "module": "m", "signature": "S",
                              "type": "Conv2d", "kind": "dense", "macs": 1, "bytes_moved": 1, "latency_ms": 5.0})
    table = table_from_result(result, {})
    assert table.build["probe_reference_ms"] == 0.5
    assert table.entries[("eager", "S")].values_ms == [2.0, 5.0, 5.0]  # 5 / 2.5, 5 / 1, 5 / 1 (no reading)
    assert [c["latency_ms"] for c in table.cells] == [5.0, 2.5, 10.0]  # 10 / 2, 10 / 4, 10
    assert [c["measured_latency_ms"] for c in table.cells] == [10.0, 10.0, 10.0]


def test_the_report_notes_a_slowed_cell_and_keeps_its_latency() -> None:
    result = _run({"a": (1.0, 1.0), "b": (1.25, 1.0)})
    notes = notes_section(result)
    assert "1.25x the run's fastest" in notes and notes.count("ran slow") == 1
    assert result.records[1]["latency_ms_median"] == 10.0


def test_validation_at_speed_keeps_the_processes_that_ran_at_speed() -> None:
    cells = [
        {"process_ms": [10.0, 14.0], "process_slowdown": [1.0, 1.4], "measured_ms": 12.0},  # second slowed
        {"process_ms": [20.0, 21.0], "process_slowdown": [1.05, 1.02], "measured_ms": 20.5},  # both at speed
        {"process_ms": [30.0, 33.0], "process_slowdown": [1.2, 1.3], "measured_ms": 31.5},  # both slowed: dropped
        {"process_ms": [40.0, 42.0], "measured_ms": 41.0},  # no readings (older results): all kept
    ]
    kept = at_speed(cells)
    assert [c["measured_ms"] for c in kept] == [10.0, 20.5, 41.0]
    assert [c["process_ms"] for c in kept] == [[10.0], [20.0, 21.0], [40.0, 42.0]]
    rescaled = at_reference_speed(cells)
    assert [ms for c in rescaled for ms in c["process_ms"]] == pytest.approx(
        [10.0, 10.0, 20.0 / 1.05, 21.0 / 1.02, 25.0, 33.0 / 1.3, 40.0, 42.0])
    assert rescaled[0]["measured_ms"] == pytest.approx(10.0) and rescaled[3]["measured_ms"] == 41.0


def test_process_slowdowns_are_against_the_tables_reference_when_it_has_one() -> None:
    rows = [{"latency_probe_ms": 0.6}, {"latency_probe_ms": 0.9}, {"latency_probe_ms": None}]
    with_reference = LatencyTable(environment={}, settings={}, build={"probe_reference_ms": 0.5})
    assert process_slowdowns(rows, with_reference)[:2] == pytest.approx([1.2, 1.8])
    assert math.isnan(process_slowdowns(rows, with_reference)[2])
    older = LatencyTable(environment={}, settings={})  # no reference: the fastest of the rows
    assert process_slowdowns(rows, older)[:2] == pytest.approx([1.0, 1.5])


@pytest.mark.parametrize("metrics", [("latency",), ("latency", "layers")])
def test_a_cpu_cell_records_its_probe(metrics: tuple[str, ...]) -> None:
    from archbench.cells import Cell, measure_form_latency, measure_layers
    from archbench.factory import create_model
    from archbench.settings import RunSettings

    settings = RunSettings(variants=("esnet_s",), resolutions=(64,), metrics=metrics, latency=FAST)
    model = create_model("esnet_s")
    row = measure_form_latency(model, Cell("esnet_s", 64, "eager"), settings)
    assert row["latency_probe_ms"] > 0
    if "layers" in metrics:
        assert measure_layers(model, Cell("esnet_s", 64, "eager"), settings, budget_s=0.05)["layers_probe_ms"] > 0


def test_compare_says_when_the_machine_ran_at_another_speed() -> None:
    from archbench.compare import compare_runs

    base, slower, same = _run({"a": (0.5, None)}), _run({"a": (0.8, None)}), _run({"a": (0.52, None)})
    for result in (base, slower, same):
        result.complete = True
        result.settings["metrics"] = ["latency"]
    warned = [w for w in compare_runs(base, slower).warnings if "speed probe" in w]
    assert warned == ["the machine ran 1.60x slower while the new run was timed (speed probe, median 0.500 vs "
                      "0.800 ms): latency changes of about that size are the machine's, not the models'"]
    assert "1.60x faster" in " ".join(compare_runs(slower, base).warnings)
    assert not [w for w in compare_runs(base, same).warnings if "speed probe" in w]


def test_where_the_time_goes_marks_layers_timed_while_slowed() -> None:
    from archbench.render.where_time_goes import slowed_layers

    result = _run({"a": (None, 0.5), "b": (None, 0.6), "c": (None, 0.5)})
    assert slowed_layers(result, "eager") == {("b", 64)}
    assert slowed_layers(result, "channels_last") == set()
