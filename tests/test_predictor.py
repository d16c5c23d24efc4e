"""The latency predictor: table schema, prediction arithmetic, coverage, validation statistics,
refusal across environments, and the CLI's bad input. Synthetic tables only; the one walk
of a real model is at a tiny resolution and times nothing but the tiny profile it checks against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import archbench
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.predict import (
    LatencyTable,
    Predictor,
    RowWork,
    check_table,
    fit_line,
    load_table,
    output_elements,
    plan_rows,
    predict_latency,
    spatial_key,
    table_from_json,
    walk_rows,
)
from archbench.predict.table import calibrate, fit_robust_line
from archbench.predict.validate import (
    MACS_LINEAR,
    NOISE_FLOOR,
    PARAMS_LINEAR,
    PREDICTOR,
    accuracy,
    baselines,
    check_resolutions,
    holdout_names,
    render_markdown,
    summarise,
)
from archbench.registry import default_registry

ENV = {"cpu_model": "Test CPU 9000", "torch": torch.__version__, "intra_op_threads": 1}


def conv_sig(h: int) -> str:
    return f"Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1), bias=False): f32[1,8,{h},{h}] -> f32[1,16,{h},{h}]"


def act_sig(h: int) -> str:
    return f"ReLU(): f32[1,16,{h},{h}] -> f32[1,16,{h},{h}]"


def make_table(**calibration: float) -> LatencyTable:
    """Conv at 10x10 (1.0, 1.2, 1.4 ms) and 20x20 (3.0 ms); ReLU at 10x10 (0.5 ms)."""
    table = LatencyTable(environment=dict(ENV), settings={"threads": 1, "device": "cpu", "batch_size": 1,
                                                          "input": "image", "forms": ["eager"], "resolutions": [40, 80]})
    for ms in (1.0, 1.4, 1.2):
        table.add("eager", {"signature": conv_sig(10), "type": "Conv2d", "kind": "dense", "macs": 12800,
                            "bytes_moved": 10_000, "latency_ms": ms})
    table.add("eager", {"signature": conv_sig(20), "type": "Conv2d", "kind": "dense", "macs": 51200,
                        "bytes_moved": 40_000, "latency_ms": 3.0})
    table.add("eager", {"signature": act_sig(10), "type": "ReLU", "kind": "act", "macs": 0, "bytes_moved": 12_800,
                        "latency_ms": 0.5})
    if calibration:
        table.calibration["eager"] = {"slope": 1.0, "intercept": 0.0, "rms_ms": 0.0, "n": 1.0, **calibration}
    return table


def row(signature: str, kind: str = "dense", macs: int = 0, nbytes: int = 0) -> RowWork:
    return RowWork(signature, kind, signature.split("(")[0], macs, nbytes)


# -- the table ----------------------------------------------------------------------------------
def test_entry_statistics_and_round_trip(tmp_path: Path) -> None:
    table = make_table(slope=2.0, intercept=1.0, rms_ms=0.5)
    entry = table.entries[("eager", conv_sig(10))]
    assert (entry.n, entry.median_ms) == (3, 1.2) and entry.quartiles() == pytest.approx((1.1, 1.3))
    assert entry.sigma_ms == pytest.approx(0.2 / 1.349)
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert (data["schema"], data["schema_version"]) == ("archbench.latency_table", 1)
    assert set(data) >= {"environment", "settings", "build", "calibration", "cells", "entries", "created"}
    first = data["entries"][0]
    assert first["values_ms"] == [1.0, 1.4, 1.2] and first["n"] == 3 and first["median_ms"] == 1.2
    assert {"q1_ms", "q3_ms", "min_ms", "max_ms", "form", "signature", "kind", "macs", "bytes_moved"} <= set(first)
    again = load_table(path)
    assert again.to_json() == table.to_json()


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": "archbench.results"}, "schema is not"),
    ({"schema_version": 2}, "schema_version 2"),
    ({"entries": {}}, "entries must be a list"),
    ({"entries": [{"form": "eager"}]}, "entries[0] has no values_ms"),
    ({"entries": [{"form": "eager", "values_ms": [1.0]}]}, "malformed field"),
])
def test_a_malformed_table_is_one_error(change: dict[str, object], message: str) -> None:
    data = {**make_table().to_json(), **change}
    with pytest.raises(ArchbenchError, match=r"not a usable latency table") as info:
        table_from_json(data, "t.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_calibration_is_the_theil_sen_line_of_the_build_cells() -> None:
    table = make_table()
    # y = 2x + 1, one slow-phase outlier (x = 5: 100 ms), which least squares would follow
    table.cells = [{"form": "eager", "latency_ms": y, "table_sum_ms": x}
                   for x, y in ((1.0, 3.0), (2.0, 5.0), (3.0, 7.0), (4.0, 9.0), (5.0, 100.0))]
    calibrate(table)
    # slope: the median of the 10 pairwise slopes (six are 2); intercept: median(y - 2x) = 1;
    # scale: 1.4826 x median(|residuals|) = 1.4826 x median(0, 0, 0, 0, 89) = 0
    assert table.calibration["eager"] == pytest.approx({"slope": 2.0, "intercept": 1.0, "rms_ms": 0.0, "n": 5.0})
    assert fit_robust_line([2, 2], [1, 3]) == (0.0, 2.0)  # x does not vary: the median
    assert fit_line([1, 2, 3], [3, 5, 7]) == pytest.approx((2.0, 1.0))  # least squares, for the baselines
    assert fit_line([2, 2], [1, 3]) == (0.0, 2.0)  # x does not vary: the mean


# -- prediction arithmetic and coverage ------------------------------------------------------------
def test_prediction_sums_entry_medians_through_the_calibration() -> None:
    table = make_table(slope=2.0, intercept=1.0, rms_ms=0.5)
    p = Predictor(table).predict_rows("v", 40, "eager", [row(conv_sig(10)), row(act_sig(10), "act"), row(conv_sig(10))])
    assert p.sum_ms == pytest.approx(1.2 + 0.5 + 1.2)
    assert p.latency_ms == pytest.approx(2.0 * 2.9 + 1.0)
    sigma = 0.2 / 1.349  # two conv rows; the ReLU entry has one observation: sigma 0
    assert p.uncertainty_ms == pytest.approx(math.sqrt(4.0 * 2 * sigma ** 2 + 0.5 ** 2))
    assert p.counts == {"exact": 3, "interpolated": 0, "fitted": 0, "uncovered": 0} and p.covered


def test_missing_blocks_are_interpolated_fitted_or_uncovered() -> None:
    table = make_table()
    predictor = Predictor(table)
    # same conv at 15x15: linear in output elements between 10x10 (1600, 1.2 ms) and 20x20 (6400, 3.0 ms)
    between = predictor.row("eager", row(conv_sig(15)))
    assert between.status == "interpolated"
    assert between.ms == pytest.approx(1.2 + (3600 - 1600) / (6400 - 1600) * 1.8)
    # beyond the largest: proportional to the elements of the nearest (20x20)
    beyond = predictor.row("eager", row(conv_sig(40)))
    assert (beyond.status, beyond.ms) == ("interpolated", pytest.approx(3.0 * 4))
    # another conv config: the dense kind's least-squares fit on (macs, bytes, 1) over 2 entries
    other = "Conv2d(4, 16, kernel_size=(1, 1), stride=(1, 1), bias=False): f32[1,4,10,10] -> f32[1,16,10,10]"
    fitted = predictor.row("eager", row(other, "dense", macs=12800, nbytes=10_000))
    assert fitted.status == "fitted" and fitted.ms == pytest.approx(1.2, abs=1e-9)
    # a kind the table has one entry of, or none: uncovered, counted as 0 ms and named
    pool = "MaxPool2d(kernel_size=3): f32[1,16,10,10] -> f32[1,16,5,5]"
    p = predictor.predict_rows("v", 40, "eager", [row(conv_sig(10)), row(conv_sig(15)), row(pool, "pool")])
    assert p.counts == {"exact": 1, "interpolated": 1, "fitted": 0, "uncovered": 1}
    assert p.uncovered == [pool] and p.interpolated == [conv_sig(15)] and not p.covered
    assert p.sum_ms == pytest.approx(1.2 + between.ms)


def test_signature_helpers() -> None:
    sig = "SplitBlock (own): aten.cat.default(f32[1,8,4,4],f32[1,8,4,4]) -> f32[1,16,4,4]; aten.view.default(f32[1,16,4,4]) -> f32[1,2,8,4,4]"
    assert output_elements(sig) == 256 + 256
    assert spatial_key(sig) == ("SplitBlock (own): aten.cat.default(f32[1,8,*,*],f32[1,8,*,*]) -> f32[1,16,*,*]; "
                                "aten.view.default(f32[1,16,*,*]) -> f32[1,2,8,*,*]")
    assert spatial_key("Linear(in_features=4): f32[1,4] -> f32[1,2]") == "Linear(in_features=4): f32[1,4] -> f32[1,2]"


def test_the_walk_gives_profile_layers_signatures_and_the_plan_gives_the_whole_walk() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
    frame = archbench.profile_layers(model, 32, samples=3, min_samples=3, max_seconds=0.1,
                                     ceilings=_ceilings())
    walked = plan_rows(model, 32)
    assert [r.signature for r in walked] == list(frame["signature"])
    assert [r.macs for r in walked] == list(frame["macs"]) and [r.kind for r in walked] == list(frame["kind"])
    # an ESNet point planned block by block has the rows of the whole model, walked
    name = "esnet_ratio-" + "0" * 7
    whole, _ = walk_rows(archbench.create_model(name), torch.zeros(1, 3, 64, 64))
    assert sorted(r.signature for r in plan_rows(name, 64)) == sorted(r.signature for r in whole)


def row_by_row(predictor: Predictor, form: str, rows: list[RowWork]) -> tuple[float, float, float]:
    """(latency, uncertainty, sum) as the first predictor added them: one loop over a model's rows."""
    total = variance = 0.0
    for r in rows:
        p = predictor.row(form, r)
        total += p.ms
        variance += p.sigma_ms ** 2
    cal = predictor.table.calibration[form]
    return cal["slope"] * total + cal["intercept"], math.sqrt(cal["slope"] ** 2 * variance + cal["rms_ms"] ** 2), total


def test_planned_predictions_are_a_row_by_row_sum_over_the_whole_walk() -> None:
    """Walks shared between blocks of the same modules (esnet_s and its .dw ablation share their
    stride-2 blocks) and predictions kept per walk change nothing: the plan has the whole model's
    rows, in order, and the prediction is their sum, row by row, to the last bit."""
    from archbench.environment import environment
    from archbench.predict import predict_many
    from archbench.predict.table import _no_cache
    from archbench.spaces import sample_names

    space = default_registry().space("esnet_ratio")
    table = LatencyTable(environment=environment(1), settings={"threads": 1, "device": "cpu", "forms": ["eager"],
                                                              "input": "image", "resolutions": [64]})
    for name in sample_names(space, 2, seed=11):
        for r in plan_rows(name, 64):
            table.add("eager", {"signature": r.signature, "type": r.type, "kind": r.kind, "macs": r.macs,
                                "bytes_moved": r.bytes_moved, "latency_ms": 0.003 + r.macs * 1e-9 + r.bytes_moved * 1e-10})
    table.calibration["eager"] = {"slope": 1.1, "intercept": 0.3, "rms_ms": 0.05, "n": 2.0}
    names = ["esnet_s", "esnet_s.dw", "shufflenetv2_x1_0", *sample_names(space, 2, seed=12)]
    with _no_cache():
        predictions = predict_many(names, [64, 96], table)
    reference = Predictor(table)
    for p in predictions:
        rows, _ = walk_rows(archbench.create_model(p.variant), torch.zeros(1, 3, p.resolution, p.resolution))
        assert plan_rows(p.variant, p.resolution) == rows
        assert (p.latency_ms, p.uncertainty_ms, p.sum_ms) == row_by_row(reference, "eager", rows)
        assert p.rows == len(rows) and sum(p.counts.values()) == len(rows)
    assert {status for p in predictions for status, n in p.counts.items() if n} >= {"exact", "interpolated"}


def _ceilings() -> object:
    from archbench.machine import Ceilings

    fields = Ceilings.__dataclass_fields__
    values = {"peak_gflops": 100.0, "bandwidth_gbps": 10.0}
    return Ceilings(**{k: values.get(k, "test") for k in fields})


# -- refusal across environments ------------------------------------------------------------------
@pytest.mark.parametrize(("env", "threads", "form", "reason"), [
    ({**ENV, "cpu_model": "Other CPU"}, 1, "eager", "cpu_model differs (Test CPU 9000 vs Other CPU)"),
    ({**ENV, "torch": "1.0"}, 1, "eager", "torch differs"),
    ({**ENV, "intra_op_threads": 4}, 4, "eager", "threads differ (1 vs 4)"),
    (ENV, 1, "fused", "the table has no form 'fused'"),
])
def test_a_table_refuses_other_conditions_unless_forced(env: dict[str, object], threads: int, form: str,
                                                        reason: str) -> None:
    table = make_table()
    with pytest.raises(ArchbenchError, match="pass --force") as info:
        check_table(table, form, threads, "cpu", env=env)
    assert reason in str(info.value) and "\n" not in str(info.value)
    warnings = check_table(table, form, threads, "cpu", env=env, force=True)
    assert len(warnings) == 1 and reason in warnings[0] and "--force" in warnings[0]
    assert check_table(table, "eager", 1, "cpu", env=ENV) == []


def test_predict_latency_refuses_here_and_warns_with_force() -> None:
    table = make_table()  # measured on "Test CPU 9000"
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.ReLU())
    with pytest.raises(ArchbenchError, match="cpu_model differs"):
        predict_latency(model, 10, table=table)
    p = predict_latency(model, 10, table=table, force=True)
    assert p.warnings and "--force" in p.warnings[0]
    # the ReLU (its signature at 10x10 with 8 channels: none; kind "act" has one entry: no fit) and
    # the conv (kind "dense/pointwise conv": none) and the root's own row (kind "other"): uncovered
    assert p.counts == {"exact": 0, "interpolated": 0, "fitted": 0, "uncovered": 3}
    relu = predict_latency(nn.Sequential(nn.ReLU()), 10, table=table, env=ENV)
    assert relu.counts["uncovered"] == 2 and relu.sum_ms == 0.0


# -- validation statistics ------------------------------------------------------------------------------
def test_accuracy_figures_are_exact() -> None:
    a = accuracy([110, 190, 300, 280], [100, 200, 300, 400])  # errors +10 %, -5 %, 0, -30 %
    assert a.n == 4
    assert a.mape == pytest.approx(100 * (0.1 + 0.05 + 0 + 0.3) / 4)
    assert a.rmspe == pytest.approx(100 * math.sqrt((0.01 + 0.0025 + 0 + 0.09) / 4))
    assert (a.within_5, a.within_10) == (50.0, 75.0)
    assert a.spearman == pytest.approx(0.8)  # ranks 1,2,4,3: 1 - 6 x 2 / 60
    assert a.kendall == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    with pytest.raises(ArchbenchError):
        accuracy([1.0], [0.0])


def test_baselines_and_summary_on_synthetic_cells() -> None:
    table = make_table()
    # build cells: latency = 2 ms per GMAC + 1, and = 0.5 ms per M params + 3
    table.cells = [{"form": "eager", "latency_ms": 2 * g + 1, "macs": g * 1e9, "params": (2 * g - 2) * 2e6}
                   for g in (1.0, 2.0, 3.0)]
    fits = baselines(table, "eager")
    assert fits[MACS_LINEAR] == pytest.approx((2e-9, 1.0))
    assert fits[PARAMS_LINEAR] == pytest.approx((0.5e-6, 3.0))
    cells = [
        {"resolution": 320, "measured_ms": 5.0, "process_ms": [4.9, 5.1], "predicted_ms": 5.5, "macs": 2e9, "params": 4e6},
        {"resolution": 416, "measured_ms": 10.0, "process_ms": [10.0, 10.0], "predicted_ms": 9.0, "macs": 4e9, "params": 8e6},
    ]
    summary = summarise(cells, table, "eager")
    assert set(summary) == {"all", "320", "416"}
    assert summary["all"][PREDICTOR].mape == pytest.approx(10.0)  # +10 % and -10 %
    assert summary["all"][PREDICTOR].within_10 == 100.0 and summary["all"][PREDICTOR].within_5 == 0.0
    assert summary["320"][MACS_LINEAR].mape == pytest.approx(0.0)  # 2 x 2 + 1 = 5
    assert summary["416"][MACS_LINEAR].mape == pytest.approx(10.0)  # 2 x 4 + 1 = 9 vs 10
    assert summary["320"][PARAMS_LINEAR].mape == pytest.approx(0.0)  # 0.5 x 4 + 3 = 5
    assert summary["all"][NOISE_FLOOR].mape == pytest.approx(100 * (0.2 / 5.1) / 2)
    report = {"table": "t.json", "form": "eager", "threads": 1, "build_resolutions": [320, 640],
              "holdout": {"space": "s", "seed": 1, "count": 2, "resolutions": [320, 416]},
              "summary": summary, "row_counts": {"exact": 3}}
    text = render_markdown(report)
    assert "| 416 px | MACs-linear | 1 | 10.0 |" in text and "noise floor" in text


def test_holdout_draws_none_of_the_build_set_and_needs_a_new_resolution() -> None:
    space = default_registry().space("esnet_ratio")
    from archbench.spaces import sample_names

    build = sample_names(space, 5, 0)
    held = holdout_names(space, build, 6, 0)  # the same seed: its first 5 are the build set, skipped
    assert len(held) == 6 and not set(held) & set(build)
    assert held == sample_names(space, 11, 0)[5:]
    table = make_table()
    check_resolutions(table, [40, 416])
    with pytest.raises(ArchbenchError, match="all in the build set"):
        check_resolutions(table, [40, 80])


# -- the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["predict", "esnet_m", "--table", "missing.json"], "cannot read latency table"),
    (["predictor", "validate", "TABLE", "--resolutions", "40,80"], "all in the build set"),
    (["predictor", "validate", "TABLE", "--resolutions", "40,x"], "malformed resolution"),
    (["predictor", "build", "esnet_m", "--samples", "3", "--out", "t.json"], "--samples needs a space"),
    (["predictor", "build", "esnet_ratio", "--forms", "onnxruntime", "--out", "t.json"], "unknown form for a latency table"),
    (["predictor", "build", "no_such_variant", "--out", "t.json"], "no_such_variant"),
    (["predictor", "build", "esnet_m"], "name the table file to write with --out"),
    (["predictor", "build", "esnet_ratio", "--backend", "ray", "--on", "xeon,arm", "--out", "t.json"],
     "--on takes one label"),
    (["sweep", "esnet_ratio", "--measure-top", "3"], "--measure-top needs --predict-with"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_table().save(tmp_path / "TABLE")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "t.json").exists()


def test_predict_command_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from archbench.environment import environment

    table = make_table()
    table.environment = {**environment(1), **{k: v for k, v in ENV.items() if k == "intra_op_threads"}}
    table.save(tmp_path / "t.json")
    assert main(["predict", "esnet_ratio", "-n", "2", "--table", str(tmp_path / "t.json"), "-r", "64", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(line["resolution"] == 64 and line["rows"] > 100 for line in lines)
    assert all(line["rows_uncovered"] + line["rows_fitted"] + line["rows_exact"] + line["rows_interpolated"]
               == line["rows"] for line in lines)


def test_ranking_keeps_the_predicted_fastest() -> None:
    from archbench.environment import environment
    from archbench.predict import rank_by_prediction
    from archbench.spaces import sample_names

    names = sample_names(default_registry().space("esnet_ratio"), 3, seed=7)
    table = LatencyTable(environment=environment(1), settings={"threads": 1, "device": "cpu", "forms": ["eager"],
                                                              "input": "image", "resolutions": [64]})
    sums = {}
    for name in names:
        rows = plan_rows(name, 64)
        for r in rows:
            table.add("eager", {"signature": r.signature, "type": r.type, "kind": r.kind, "macs": r.macs,
                                "bytes_moved": r.bytes_moved, "latency_ms": 1e-6 * r.macs / 1e3 + 0.001})
        sums[name] = sum({r.signature: 1e-6 * r.macs / 1e3 + 0.001 for r in rows}[r.signature] for r in rows)
    keep, predictions = rank_by_prediction(names, 64, table, 2)
    assert keep == sorted(names, key=sums.__getitem__)[:2]
    assert {p.variant: p.latency_ms for p in predictions} == pytest.approx(sums)


def test_a_run_tabulates_into_entries_cells_and_calibration(tmp_path: Path) -> None:
    from archbench.predict.table import table_from_results_file
    from archbench.results import RunResult, save

    result = RunResult("r", "", "", "", {"variants": ["a", "b", "c"], "resolutions": [40], "threads": 1,
                                         "device": "cpu", "forms": ["eager"], "input": "image"},
                       {**ENV, "cpu_cores": 2, "sweep": {"space": "s", "seed": 3, "samples": 3}})
    for variant, ms, load in (("a", 1.0, 0.0), ("b", 1.4, 0.0), ("c", 9.0, 1.0)):  # c timed while contended
        result.records.append({"variant": variant, "resolution": 40, "batch_size": 1, "device": "cpu",
                               "form": "eager", "status": "ok", "reason": "", "latency_ms_median": 2 * (ms + 0.5) + 1,
                               "macs": 100, "params": 10, "layers_other_load": load, "layers_sum_ms": ms + 0.5})
        result.layers += [{"variant": variant, "resolution": 40, "form": "eager", "module": "c", "signature": conv_sig(10),
                           "type": "Conv2d", "kind": "dense", "macs": 100, "bytes_moved": 10, "latency_ms": ms},
                          {"variant": variant, "resolution": 40, "form": "eager", "module": "r", "signature": act_sig(10),
                           "type": "ReLU", "kind": "act", "macs": 0, "bytes_moved": 10, "latency_ms": 0.5}]
    save(result, tmp_path)
    table = table_from_results_file(tmp_path / "results.json")
    assert table.entries[("eager", conv_sig(10))].values_ms == [1.0, 1.4]
    assert [c["table_sum_ms"] for c in table.cells] == pytest.approx([1.7, 1.7])  # median 1.2 + 0.5, each
    assert table.build["left_out"][0]["variant"] == "c" and table.build["space"] == "s"
    assert table.calibration["eager"]["slope"] == 0.0  # both sums equal: a flat line at the mean
    assert table.calibration["eager"]["intercept"] == pytest.approx((4.0 + 4.8) / 2)
