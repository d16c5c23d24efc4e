"""archbench compare: exact metrics, latency against noise, refusal, missing cells, rendering.

Runs are built in code (no measuring) and round-tripped through results.save/load where
the file path matters; nothing here times anything.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from archbench.compare import (
    EXIT_CHANGED,
    EXIT_SAME,
    IMPROVEMENT,
    NOT_COMPARED,
    REGRESSION,
    WITHIN_NOISE,
    CellKey,
    Comparison,
    compare_files,
    compare_runs,
)
from archbench.errors import ArchbenchError
from archbench.metrics import judged
from archbench.render.compare import render_markdown, render_text
from archbench.results import RunResult, save

EXAMPLE = Path(__file__).resolve().parents[1] / "reports" / "esnet-vs-shufflev2" / "results.json"


def _record(variant: str, resolution: int, params: int, latency_ms: float, iqr_ms: float = 0.2) -> dict[str, Any]:
    scale = (resolution / 320) ** 2
    macs = int(params * 250 * scale)
    return {
        "variant": variant, "resolution": resolution, "batch_size": 1, "device": "cpu",
        "status": "ok", "reason": "",
        "params": params, "trainable_params": params,
        "params_stem": 696, "params_stage2": params - 696,
        "macs": macs, "flops": 2 * macs,
        "norm_elems": int(2_876_800 * scale), "activation_elems": int(2_462_415 * scale),
        "macs_stem": int(16_588_800 * scale), "macs_stage2": macs - int(16_588_800 * scale),
        "param_bytes": 4 * params, "buffer_bytes": 39_520, "input_bytes": int(1_228_800 * scale),
        "act_peak_bytes": int(4_915_200 * scale),
        "latency_ms_median": latency_ms, "latency_ms_iqr": iqr_ms,
        "latency_ms_p90": latency_ms * 1.05, "latency_ms_min": latency_ms * 0.95,
        "latency_n": 80, "latency_noise": "ok", "threads": 1,
    }


def make_run(run_id: str = "base") -> RunResult:
    records = [
        _record("esnet_s", 320, 603_659, 20.0),
        _record("esnet_s", 416, 603_659, 32.0),
        _record("shufflenetv2_x1_0", 320, 1_253_604, 22.0),
        _record("shufflenetv2_x1_0", 416, 1_253_604, 36.0),
    ]
    return RunResult(
        run_id=run_id, created="2026-01-01T00:00:00+00:00", command="archbench run",
        archbench_version="0.1.0",
        settings={"variants": ["esnet_s", "shufflenetv2_x1_0"], "resolutions": [320, 416], "batch_size": 1,
                  "device": "cpu", "metrics": ["params", "macs", "memory", "latency"], "counters": [],
                  "threads": 1, "repeats": 1, "baseline": None},
        environment={"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_cores": 2, "torch": "2.13.0+cpu",
                     "onednn": "3.12.0", "python": "3.11.7", "intra_op_threads": 1, "inter_op_threads": 2},
        records=records, complete=True,
    )


def cell(run: RunResult, variant: str, resolution: int) -> dict[str, Any]:
    record = run.record(variant, resolution)
    assert record is not None
    return record


def pair() -> tuple[RunResult, RunResult]:
    base = make_run("base")
    new = copy.deepcopy(base)
    new.run_id = "new"
    return base, new


def write(tmp_path: Path, run: RunResult) -> Path:
    folder = tmp_path / run.run_id
    save(run, folder)
    return folder / "results.json"


def markdown_tables(text: str) -> list[list[str]]:
    """Blocks of consecutive lines starting with '|'."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def assert_valid_table(lines: list[str]) -> None:
    assert len(lines) >= 3, "a table needs a header, a separator and at least one row"
    columns = [len(re.split(r"(?<!\\)\|", line)) for line in lines]
    assert len(set(columns)) == 1, lines
    assert re.fullmatch(r"\|( -{3,}:? \|)+", lines[1]), lines[1]


# -- identical runs ------------------------------------------------------------


def test_identical_files_exit_0(tmp_path: Path) -> None:
    base, new = pair()
    text, code = compare_files(write(tmp_path, base), write(tmp_path, new))
    assert code == EXIT_SAME
    assert "0 exact changes" in text
    assert "0 latency regressions (> max(10%, noise))" in text
    assert "0 missing" in text
    markdown, code = compare_files(write(tmp_path, base), write(tmp_path, new), fmt="markdown")
    assert code == EXIT_SAME
    assert "exit 0" in markdown


@pytest.mark.skipif(not EXAMPLE.exists(), reason="example report not present (sdist)")
def test_committed_example_against_itself() -> None:
    text, code = compare_files(EXAMPLE, EXAMPLE.parent)
    assert code == EXIT_SAME
    assert "0 exact changes" in text and "0 missing" in text


# -- latency -------------------------------------------------------------------


def test_latency_regression_30_percent_is_flagged_and_names_the_cell() -> None:
    base, new = pair()
    cell(new, "esnet_s", 416)["latency_ms_median"] = 32.0 * 1.3
    comparison = compare_runs(base, new)
    assert comparison.exit_code == EXIT_CHANGED
    assert comparison.latency_compared and comparison.refusal is None
    assert [r.key for r in comparison.latency_regressions] == [CellKey("esnet_s", 416, 1, "cpu")]
    latency = comparison.latency_regressions[0].latency
    assert latency is not None and latency.verdict == REGRESSION
    assert latency.change_pct == pytest.approx(30.0) and latency.limit_from == "threshold"
    assert not comparison.exact_changes and not comparison.missing
    text = render_text(comparison)
    assert re.search(r"esnet_s @ 416 px .*\+30\.0% .*regression", text)
    assert "1 latency regression (> max(10%, noise))" in text
    # the other cells are unchanged and not listed by default
    assert "shufflenetv2_x1_0" not in text


def test_change_within_noise_of_both_runs_is_not_a_regression() -> None:
    base, new = pair()
    for run in (base, new):
        cell(run, "esnet_s", 320)["latency_ms_iqr"] = 3.0  # noise = 3 + 3 = 6 ms
    cell(new, "esnet_s", 320)["latency_ms_median"] = 25.0  # +25%, above the 10% threshold
    comparison = compare_runs(base, new)
    row = next(r for r in comparison.rows if r.key == CellKey("esnet_s", 320, 1, "cpu"))
    assert row.latency is not None
    assert row.latency.verdict == WITHIN_NOISE
    assert row.latency.limit_ms == pytest.approx(6.0) and row.latency.limit_from == "noise"
    assert comparison.exit_code == EXIT_SAME
    # the same change with small spreads is a regression
    for run in (base, new):
        cell(run, "esnet_s", 320)["latency_ms_iqr"] = 0.2
    assert compare_runs(base, new).exit_code == EXIT_CHANGED


def test_between_process_spread_is_preferred_over_the_iqr() -> None:
    base, new = pair()
    for run in (base, new):
        cell(run, "esnet_s", 320).update(latency_ms_spread=4.0, latency_ms_iqr=0.1)
    cell(new, "esnet_s", 320)["latency_ms_median"] = 27.0  # +7 ms: over 10% (2 ms), under 4 + 4
    comparison = compare_runs(base, new)
    assert not comparison.latency_regressions
    cell(new, "esnet_s", 320)["latency_ms_median"] = 28.5  # +8.5 ms > 8 ms
    assert len(compare_runs(base, new).latency_regressions) == 1


def test_threshold_sets_the_limit_when_noise_is_small() -> None:
    base, new = pair()
    cell(new, "esnet_s", 320)["latency_ms_median"] = 21.5  # +7.5%
    assert compare_runs(base, new).exit_code == EXIT_SAME
    comparison = compare_runs(base, new, latency_threshold_pct=5)
    assert comparison.exit_code == EXIT_CHANGED
    assert "(> max(5%, noise))" in render_text(comparison)


def test_improvement_is_reported_and_exits_0() -> None:
    base, new = pair()
    cell(new, "shufflenetv2_x1_0", 320)["latency_ms_median"] = 15.0
    comparison = compare_runs(base, new)
    assert comparison.exit_code == EXIT_SAME
    assert [r.key.variant for r in comparison.latency_improvements] == ["shufflenetv2_x1_0"]
    row = comparison.latency_improvements[0]
    assert row.latency is not None and row.latency.verdict == IMPROVEMENT
    assert "1 improvement" in render_text(comparison)


def test_non_latency_columns_do_not_change_the_exit_code() -> None:
    base, new = pair()
    cell(new, "esnet_s", 320).update(latency_ms_p90=99.0, latency_noise="noisy", latency_n=12)
    comparison = compare_runs(base, new)
    assert comparison.exit_code == EXIT_SAME
    metric = comparison.rows[0].metric("latency_ms_p90")
    assert metric is not None and metric.changed and metric.kind == "info"


# -- exact metrics -------------------------------------------------------------


def test_changed_param_count_exits_1_and_shows_old_and_new() -> None:
    base, new = pair()
    record = cell(new, "esnet_s", 416)
    record.update(params=603_700, trainable_params=603_700, param_bytes=4 * 603_700)
    comparison = compare_runs(base, new)
    assert comparison.exit_code == EXIT_CHANGED
    assert [r.key for r in comparison.exact_changes] == [CellKey("esnet_s", 416, 1, "cpu")]
    assert {m.column for m in comparison.exact_changes[0].exact_changes} == {"params", "trainable_params", "param_bytes"}
    params = comparison.exact_changes[0].metric("params")
    assert params is not None and params.abs_change == 41
    text = render_text(comparison)
    assert re.search(r"params\s+603,659\s+->\s+603,700\s+\+41", text)
    assert "3 exact changes in 1 cell" in text
    markdown = render_markdown(comparison)
    assert "| `esnet_s` @ 416 px | `params` | 603,659 -> 603,700 | +41 (+0.0%) |" in markdown


@pytest.mark.parametrize("column", ["macs", "flops", "act_peak_bytes", "norm_elems", "macs_stage2", "params_stem",
                                    "buffer_bytes", "input_bytes"])
def test_every_static_count_is_exact(column: str) -> None:
    base, new = pair()
    cell(new, "shufflenetv2_x1_0", 320)[column] += 1
    comparison = compare_runs(base, new)
    assert comparison.exit_code == EXIT_CHANGED
    assert [m.column for m in comparison.exact_changes[0].exact_changes] == [column]


def test_exact_set() -> None:
    def is_exact(column: str) -> bool:
        return judged(column) == "exact"

    for column in ("params", "trainable_params", "macs", "flops", "act_peak_bytes", "param_bytes",
                   "buffer_bytes", "input_bytes", "pool_elems", "params_backbone", "macs_head"):
        assert is_exact(column), column
    for column in ("latency_ms_median", "latency_ms_iqr", "threads", "fvcore_total", "thop_total",
                   "cuda_max_allocated_bytes", "unclassified_ops"):
        assert not is_exact(column), column


# -- refusal -------------------------------------------------------------------


@pytest.mark.parametrize(("where", "field", "value", "words"), [
    ("environment", "cpu_model", "AMD EPYC 7B13", "cpu_model differs (Intel(R) Xeon(R) Processor vs AMD EPYC 7B13)"),
    ("settings", "threads", 2, "threads differ (1 vs 2)"),
    ("environment", "intra_op_threads", 4, "intra_op_threads differ (1 vs 4)"),
    ("environment", "torch", "2.12.0+cpu", "torch differs (2.13.0+cpu vs 2.12.0+cpu)"),
    ("settings", "device", "cuda", "device differs (cpu vs cuda)"),
    ("settings", "input", "image", "input differs (random vs image)"),
])
def test_refuses_latency_across_environments_but_still_checks_exact(where: str, field: str, value: Any,
                                                                     words: str) -> None:
    base, new = pair()
    getattr(new, where)[field] = value
    cell(new, "esnet_s", 320)["latency_ms_median"] = 40.0  # +100%: would be a regression
    comparison = compare_runs(base, new)
    assert not comparison.latency_compared
    assert comparison.refusal == f"latency not compared: {words}; pass --force to compare anyway"
    assert not comparison.latency_regressions
    assert all(r.latency is None or r.latency.verdict == NOT_COMPARED for r in comparison.rows)
    assert comparison.exit_code == EXIT_SAME
    text = render_text(comparison)
    assert comparison.refusal in text and "latency not compared" in text.splitlines()[-1]

    cell(new, "esnet_s", 320)["params"] = 603_000
    comparison = compare_runs(base, new)
    assert not comparison.latency_compared
    assert comparison.exit_code == EXIT_CHANGED
    assert "603,659" in render_text(comparison) and "603,000" in render_text(comparison)
    markdown = render_markdown(comparison)
    assert "not compared" in markdown and words in markdown


def test_refusal_names_every_differing_field() -> None:
    base, new = pair()
    new.settings["threads"] = 2
    new.environment["torch"] = "2.12.0+cpu"
    comparison = compare_runs(base, new)
    assert comparison.refusal is not None
    assert "threads differ (1 vs 2)" in comparison.refusal and "torch differs" in comparison.refusal


def test_force_compares_anyway_with_a_warning() -> None:
    base, new = pair()
    new.settings["threads"] = 2
    cell(new, "esnet_s", 320)["latency_ms_median"] = 40.0
    comparison = compare_runs(base, new, force=True)
    assert comparison.latency_compared and comparison.refusal is None
    assert len(comparison.latency_regressions) == 1
    assert comparison.exit_code == EXIT_CHANGED
    assert len(comparison.warnings) == 1 and "threads differ (1 vs 2)" in comparison.warnings[0]
    assert "--force" in comparison.warnings[0]
    assert f"warning: {comparison.warnings[0]}" in render_text(comparison)
    assert comparison.warnings[0] in render_markdown(comparison)


def test_runs_without_latency_are_not_compared_for_latency() -> None:
    base, new = pair()
    for record in new.records:
        for column in [c for c in record if c.startswith("latency_")]:
            del record[column]
    comparison = compare_runs(base, new, force=True)
    assert not comparison.latency_compared
    assert comparison.refusal == "latency not compared: the new run did not measure latency"
    assert comparison.exit_code == EXIT_SAME


# -- missing cells -------------------------------------------------------------


def test_cell_missing_from_the_new_run_is_reported() -> None:
    base, new = pair()
    new.records = [r for r in new.records if (r["variant"], r["resolution"]) != ("shufflenetv2_x1_0", 416)]
    comparison = compare_runs(base, new)
    assert [r.key for r in comparison.missing] == [CellKey("shufflenetv2_x1_0", 416, 1, "cpu")]
    assert comparison.exit_code == EXIT_CHANGED
    text = render_text(comparison)
    assert "shufflenetv2_x1_0 @ 416 px: only in the base run (ok), absent from the new run" in text
    assert "1 missing" in text
    markdown = render_markdown(comparison)
    assert "| `shufflenetv2_x1_0` @ 416 px | ok | absent |" in markdown


def test_cell_that_failed_in_the_new_run_is_reported() -> None:
    base, new = pair()
    cell(new, "esnet_s", 320).update(status="failed", reason="RuntimeError: out of memory | twice")
    comparison = compare_runs(base, new)
    assert len(comparison.missing) == 1 and comparison.exit_code == EXIT_CHANGED
    assert "esnet_s @ 320 px: ok in the base run; failed in the new run (RuntimeError" in render_text(comparison)
    for table in markdown_tables(render_markdown(comparison)):
        assert_valid_table(table)


def test_cells_only_gained_are_reported_but_exit_0() -> None:
    base, new = pair()
    new.records.append(_record("esnet_m", 320, 1_338_026, 27.0))
    cell(base, "esnet_s", 416).update(status="skipped", reason="needs 9 GiB")
    comparison = compare_runs(base, new)
    assert {r.key.variant for r in comparison.missing} == {"esnet_m", "esnet_s"}
    assert comparison.exit_code == EXIT_SAME
    text = render_text(comparison)
    assert "esnet_m @ 320 px: only in the new run (ok)" in text
    assert "esnet_s @ 416 px: skipped in the base run (needs 9 GiB); ok in the new run" in text


def test_incomplete_run_gives_a_warning() -> None:
    base, new = pair()
    new.complete = False
    comparison = compare_runs(base, new)
    assert any("incomplete" in w for w in comparison.warnings)


def test_labels_show_batch_and_device_only_when_they_vary() -> None:
    base, new = pair()
    extra = _record("esnet_s", 320, 603_659, 20.0)
    extra["batch_size"] = 8
    new.records.append(extra)
    text = render_text(compare_runs(base, new))
    assert "esnet_s @ 320 px (batch 8): only in the new run" in text


# -- markdown ------------------------------------------------------------------


def test_markdown_is_valid_tables_and_has_the_summary() -> None:
    base, new = pair()
    cell(new, "esnet_s", 416)["latency_ms_median"] = 32.0 * 1.3
    cell(new, "esnet_s", 320)["params"] = 603_700
    new.records.pop()
    comparison = compare_runs(base, new)
    markdown = render_markdown(comparison)
    summary = "1 exact change in 1 cell, 1 latency regression (> max(10%, noise)), 0 improvements, 1 missing"
    assert summary in markdown
    assert summary in render_text(comparison).splitlines()[-1]
    tables = markdown_tables(markdown)
    assert len(tables) == 3  # exact changes, latency, missing
    for table in tables:
        assert_valid_table(table)
    assert "| cell | metric | base -> new | change |" in tables[0][0]
    assert "| `esnet_s` @ 416 px | 32.0 ± 0.2 | 41.6 ± 0.2 | +30.0% | 3.2 (10%) | **regression** |" in tables[1]
    assert "**exit 1: changes found**" in markdown


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ("{\"schema\": \"archbench.resu", "not valid JSON"),
    (json.dumps({"hello": "world"}), "not an archbench results file"),
    (json.dumps([1, 2, 3]), "not an archbench results file"),
])
def test_corrupt_or_foreign_json_is_an_archbench_error(tmp_path: Path, content: str, message: str) -> None:
    good = write(tmp_path, make_run("base"))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ArchbenchError, match=message):
        compare_files(good, bad)
    with pytest.raises(ArchbenchError, match=message):
        compare_files(bad, good)


def test_missing_file_is_an_archbench_error(tmp_path: Path) -> None:
    with pytest.raises(ArchbenchError, match="no such file"):
        compare_files(tmp_path / "nope.json", write(tmp_path, make_run()))


def test_unknown_format_is_an_archbench_error(tmp_path: Path) -> None:
    path = write(tmp_path, make_run())
    with pytest.raises(ArchbenchError, match="unknown format 'html'; expected one of text, markdown"):
        compare_files(path, path, fmt="html")


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf")])
def test_bad_threshold_is_an_archbench_error(tmp_path: Path, threshold: float) -> None:
    path = write(tmp_path, make_run())
    with pytest.raises(ArchbenchError, match="latency threshold"):
        compare_files(path, path, latency_threshold_pct=threshold)
    with pytest.raises(ArchbenchError, match="latency threshold"):
        compare_runs(make_run(), make_run(), latency_threshold_pct=threshold)


def test_malformed_record_key_is_an_archbench_error() -> None:
    base, new = pair()
    new.records[0]["resolution"] = "large"
    with pytest.raises(ArchbenchError, match="record 0 has no valid"):
        compare_runs(base, new)


def test_verbose_text_lists_every_cell_and_changed_column() -> None:
    base, new = pair()
    cell(new, "esnet_s", 320)["latency_ms_p90"] = 30.0
    text = render_text(compare_runs(base, new), verbose=True)
    assert "latency_ms_p90" in text
    assert text.count("within noise") == 4


def test_comparison_is_frozen() -> None:
    comparison = compare_runs(*pair())
    assert isinstance(comparison, Comparison)
    with pytest.raises(AttributeError):
        comparison.refusal = "x"  # type: ignore[misc]
