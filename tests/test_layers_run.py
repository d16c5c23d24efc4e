"""``layers`` as a run metric: rows in results.json (schema 2), ceilings in the environment,
the cells it cannot profile, resume, and the report's "Where the time goes" section with its
attribution arithmetic and roofline plots. No timing is asserted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import archbench.machine as machine
from archbench.cells import layers_budget_s
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.machine import Ceilings
from archbench.metrics import is_done
from archbench.profilers.layer_views import KIND_DENSE, KIND_NORM_ACT, KIND_SE
from archbench.render.markdown import render_markdown
from archbench.render.where_time_goes import attribute, attribution_sentence, kinds_table
from archbench.results import SCHEMA_VERSION, RunResult, load, save
from archbench.runner import Runner
from archbench.settings import RunSettings
from archbench.tables import AblationPair

CEILINGS = Ceilings(peak_gflops=100.0, bandwidth_gbps=10.0, device="cpu", device_model="test", threads=1,
                    torch_version="test", method="fixed for the test", measured_at="2026-01-01T00:00:00")


@pytest.fixture
def fixed_ceilings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "machine_ceilings", lambda device="cpu", threads=1, **_: CEILINGS)


@pytest.fixture(scope="module")
def layers_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """esnet_s and its .nose ablation at 64 px, eager + torchscript, static + layers."""
    out = tmp_path_factory.mktemp("layers-run")
    patch = pytest.MonkeyPatch()
    patch.setattr(machine, "machine_ceilings", lambda device="cpu", threads=1, **_: CEILINGS)
    try:
        code = main(["run", "--variants", "esnet_s,esnet_s.nose", "--resolutions", "64", "--metrics",
                     "params,macs,layers", "--forms", "eager,torchscript", "--out", str(out), "--overwrite"])
    finally:
        patch.undo()
    assert code == 0
    return out


def test_rows_schema_and_ceilings(layers_run: Path) -> None:
    data = json.loads((layers_run / "results.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert data["environment"]["ceilings"]["peak_gflops"] == 100.0
    rows = data["layers"]
    assert {(r["variant"], r["form"]) for r in rows} == {("esnet_s", "eager"), ("esnet_s.nose", "eager")}
    for variant in ("esnet_s", "esnet_s.nose"):
        mine = [r for r in rows if r["variant"] == variant]
        record = next(r for r in data["records"] if r["variant"] == variant and r["form"] == "eager")
        # the record's summary columns are the sums of its rows
        assert record["layers_sum_ms"] == pytest.approx(sum(r["latency_ms"] for r in mine), rel=1e-9)
        assert record["bytes_moved"] == sum(r["bytes_moved"] for r in mine)
        assert record["macs"] == sum(r["macs"] for r in mine)  # every MAC lands in exactly one row
        assert record["layers_reconciliation"] == pytest.approx(record["layers_sum_ms"] / record["layers_forward_ms"])
        assert record["layers_samples"] >= 5
    se_rows = [r for r in rows if r["kind"] == KIND_SE]
    assert se_rows and all(r["variant"] == "esnet_s" for r in se_rows)  # .nose has no SE
    traced = next(r for r in data["records"] if r["form"] == "torchscript")
    assert traced["layers_sum_ms"] is None and "needs the modules" in traced["layers_note"]


def test_layer_frame_reads_back(layers_run: Path) -> None:
    result = load(layers_run)
    frame = result.layer_frame("esnet_s", 64, "eager")
    assert list(frame.columns[:3]) == ["module", "type", "kind"]
    assert frame.attrs["ceilings"]["bandwidth_gbps"] == 10.0
    assert result.layer_frame("esnet_s", 64, "torchscript").empty


def test_report_section_and_roofline_plot(layers_run: Path) -> None:
    report = (layers_run / "report.md").read_text()
    section = report[report.index("## Where the time goes"):]
    assert "100 GFLOP/s fp32 and 10.0 GB/s" in section
    # a † marks a row timed while other processes kept the CPU busy (a shared machine)
    assert re.search(r"\| `esnet_s`†? \|", section) and re.search(r"\| `esnet_s\.nose`†? \|", section)
    assert "`esnet_s.nose` (se = " in section and "in modules only `esnet_s` has (SE " in section
    assert (layers_run / "roofline_64.png").stat().st_size > 0
    assert "roofline_64.png" in report


def test_resume_keeps_layers_and_overwrite_removes_rooflines(layers_run: Path, tmp_path: Path,
                                                             fixed_ceilings: None) -> None:
    result = load(layers_run)
    settings = RunSettings.from_json(result.settings)
    assert all(is_done(r, settings.metrics) for r in result.records)
    before = len(result.layers)
    Runner(settings, None).run(result)  # nothing left to measure: nothing added
    assert len(result.layers) == before
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("results.json", "roofline_64.png"):
        (copy / name).write_bytes((layers_run / name).read_bytes())
    from archbench.run_folder import clear_earlier_run

    assert set(clear_earlier_run(copy)) == {"results.json", "roofline_64.png"}


def test_version_1_files_still_load(layers_run: Path, tmp_path: Path) -> None:
    data = json.loads((layers_run / "results.json").read_text())
    data["schema_version"] = 1
    del data["layers"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert load(tmp_path).layers == []


def test_a_malformed_layer_row_is_one_line(layers_run: Path, tmp_path: Path) -> None:
    data = json.loads((layers_run / "results.json").read_text())
    data["layers"][3]["latency_ms"] = "fast"
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ArchbenchError, match=r"layers\[3\] has field 'latency_ms' = \"fast\""):
        load(tmp_path)


def test_layers_budget_follows_the_latency_measurement() -> None:
    assert layers_budget_s({"latency_n": 40, "latency_ms_median": 25.0}) == pytest.approx(1.0)
    assert layers_budget_s({}) is None  # latency not measured: the profiler's default


# -- the section's arithmetic on hand-made frames --------------------------------------------


def frame(rows: list[tuple[str, str, float, int, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["module", "kind", "latency_ms", "macs", "bytes_moved", "bound",
                                       "pct_of_roof"]).assign(calls=1, flops=lambda f: 2 * f["macs"])


BASE = frame([("conv", KIND_DENSE, 6.0, 900, 100, "compute", 50.0),
              ("bn", KIND_NORM_ACT, 2.0, 0, 200, "memory", 20.0),
              ("se.fc", KIND_SE, 2.0, 100, 100, "memory", 10.0)])
NOSE = frame([("conv", KIND_DENSE, 5.5, 900, 100, "compute", 50.0),
              ("bn", KIND_NORM_ACT, 2.5, 0, 200, "memory", 20.0)])


def test_attribution_splits_the_difference() -> None:
    pair = AblationPair("m", "m.nose", "se", None, False)
    a = attribute(pair, 320, BASE, NOSE)
    assert (a.base_ms, a.changed_ms, a.delta_ms) == (10.0, 8.0, -2.0)
    assert (a.only_base_ms, a.only_changed_ms, a.shared_delta_ms) == (2.0, 0.0, 0.0)
    assert a.only_base_kinds == {KIND_SE: 2.0}
    assert a.largest_shared == [("conv", -0.5), ("bn", 0.5)]
    assert a.kind_delta_ms == {KIND_SE: -2.0, KIND_DENSE: -0.5, KIND_NORM_ACT: 0.5}
    sentence = attribution_sentence(a)
    assert sentence.startswith("`m.nose` (se = builder default -> False) saves 2.00 ms of layer time against `m`")
    assert "(10.0 ms -> 8.00 ms): 2.00 ms in modules only `m` has (SE 2.00 ms)" in sentence
    assert "+0 ms in the modules both have (largest: `conv` -0.500 ms, `bn` +0.500 ms)" in sentence


def test_kinds_table_shares() -> None:
    table = kinds_table({("m", 320): BASE}, 320)
    assert table is not None
    # dense: 60% of time, 90% of MACs, 25% of bytes; SE: 20 / 10 / 25; memory-bound 40% of the time;
    # % of roof weighted by time: (6x50 + 2x20 + 2x10) / 10 = 36
    assert "| `m` | 10.0 ms | 60 / 90 / 25 | 20 / 10 / 25 | 20 / 0 / 50 | 40 | 36 |" in table
    assert kinds_table({("m", 320): BASE}, 416) is None


def test_no_layers_no_section() -> None:
    result = RunResult("r", "", "", "", {"variants": ["a"], "resolutions": [64], "forms": ["eager"]}, {})
    assert "Where the time goes" not in render_markdown(result)


def test_saved_result_round_trips_layers(tmp_path: Path) -> None:
    result = RunResult("r", "", "", "", {"variants": ["a"], "resolutions": [64], "forms": ["eager"]}, {},
                       layers=[{"variant": "a", "resolution": 64, "form": "eager", "module": "conv",
                                "kind": KIND_DENSE, "latency_ms": 1.5, "macs": 10, "bytes_moved": 40}])
    save(result, tmp_path)
    assert load(tmp_path).layers == result.layers
