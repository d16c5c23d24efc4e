"""archbench run / report: files, schema round trip, golden markdown, plots, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from archbench.cli import main
from archbench.registry import build_registry
from archbench.render.markdown import render_markdown
from archbench.results import SCHEMA_VERSION, RunResult, load, save
from archbench.runner import Runner
from archbench.settings import RunSettings
from archbench.specs import SpecFile, VariantSpec
from archbench.tables import ablation_pairs

GOLDEN = Path(__file__).parent / "golden" / "report.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run")
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        code = main(["run", "--variants", "shufflenetv2_x0_5,esnet_s,esnet_s.nose", "--resolutions", "64",
                     "--baseline", "shufflenetv2_x0_5", "--out", str(out)])
    assert code == 0
    return out, buffer.getvalue()


def test_run_writes_results_csv_report_and_plots(small_run: tuple[Path, str]) -> None:
    out, stdout = small_run
    for name in ("results.json", "results.csv", "report.md", "latency_vs_resolution.png", "macs_vs_latency.png",
                 "params_vs_latency.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert "shufflenetv2_x0_5" in stdout and "esnet_s.nose" in stdout and "Δ latency" in stdout
    result = load(out / "results.json")
    assert result.complete and [r["status"] for r in result.records] == ["ok"] * 3
    record = result.record("esnet_s", 64)
    assert record is not None
    assert record["params"] == 603_659 and record["flops"] == 2 * record["macs"]
    assert record["latency_ms_median"] > 0 and record["threads"] == 1
    csv_header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert csv_header[:7] == ["variant", "resolution", "batch_size", "device", "form", "status", "reason"]


def test_schema_round_trip_report_gives_same_tables(small_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = small_run
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "archbench.results" and data["schema_version"] == SCHEMA_VERSION
    assert main(["report", str(out / "results.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()
    assert (tmp_path / "results.csv").read_text() == (out / "results.csv").read_text()
    save(load(out / "results.json"), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == data


def test_report_has_ablation_and_baseline_sections(small_run: tuple[Path, str]) -> None:
    report = (small_run[0] / "report.md").read_text()
    assert "## Change against the baseline `shufflenetv2_x0_5`" in report
    assert "**`esnet_s` -> `esnet_s.nose`: se = builder default -> False**" in report
    assert "| 64 px | -80,343 (-13.3%) |" in report  # SE parameters of ESNet-s, exactly


def synthetic_result() -> RunResult:
    """A fixed, hand-made run: the markdown renderer's golden input."""
    env = {"cpu_model": "Test CPU", "cpu_cores": 2, "torch": "2.13.0+cpu", "onednn": "3.12.0", "python": "3.11.7"}
    settings = {"variants": ["picodet_s", "picodet_s.nose", "esnet_s"], "resolutions": [320, 416], "batch_size": 1,
                "device": "cpu", "metrics": ["params", "macs", "memory", "latency"], "threads": 1, "repeats": 1,
                "baseline": "picodet_s"}
    variants = {
        "picodet_s": {"family": "picodet", "kind": "detector", "base": None, "builder": "detector",
                      "args": {"backbone": "esnet_s"}},
        "picodet_s.nose": {"family": "picodet", "kind": "detector", "base": "picodet_s", "builder": "detector",
                           "args": {"backbone": "esnet_s", "se": False}},
        "esnet_s": {"family": "esnet", "kind": "backbone", "base": None, "builder": "esnet", "args": {"scale": 0.75}},
    }

    def record(variant: str, r: int, params: int, macs: int, peak: int, ms: float, noise: str = "ok") -> dict[str, object]:
        parts = {"params_backbone": 603_659, "params_neck": 249_600, "params_head": 139_456,
                 "macs_backbone": macs // 2, "macs_neck": macs // 4, "macs_head": macs - macs // 2 - macs // 4}
        return {"variant": variant, "resolution": r, "batch_size": 1, "device": "cpu", "form": "eager",
                "status": "ok", "reason": "",
                "params": params, "macs": macs, "flops": 2 * macs, "act_peak_bytes": peak,
                **(parts if variant.startswith("picodet") else {}),
                "latency_ms_median": ms, "latency_ms_iqr": ms / 20, "latency_ms_p90": ms * 1.1, "latency_n": 50,
                "latency_other_load": 0.9 if noise != "ok" else 0.0, "latency_attempts": 3 if noise != "ok" else 1,
                "latency_noise": noise, "threads": 1}

    records = [
        record("picodet_s", 320, 992_715, 350_963_528, 5_107_200, 31.2),
        record("picodet_s", 416, 992_715, 593_460_248, 8_631_168, 52.7),
        record("picodet_s.nose", 320, 912_372, 350_884_800, 5_107_200, 27.9),
        record("picodet_s.nose", 416, 912_372, 593_381_520, 8_631_168, 47.0, noise="contended"),
        record("esnet_s", 320, 603_659, 162_913_928, 4_915_200, 18.1),
        {"variant": "esnet_s", "resolution": 416, "batch_size": 1, "device": "cpu", "form": "eager", "status": "failed",
         "reason": "out of memory: simulated"},
    ]
    return RunResult(run_id="golden", created="2026-01-01T00:00:00+00:00", command="archbench run --golden",
                     archbench_version="0.1.0", settings=settings, environment=env,
                     conventions={"flops": "exactly 2 x macs"}, variants=variants, records=records, complete=False)


def test_markdown_golden() -> None:
    text = render_markdown(synthetic_result(), plots=["latency_vs_resolution.png"])
    if os.environ.get("ARCHBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_ablation_pairs_need_one_differing_argument() -> None:
    pairs = ablation_pairs(synthetic_result())
    assert [(p.base, p.changed, p.axis, p.before, p.after) for p in pairs] == [
        ("picodet_s", "picodet_s.nose", "se", None, False)]


def _broken_registry() -> object:
    specs = [
        VariantSpec("good", "demo", "backbone", "tests.plugin_demo:build_tiny", {"width": 4}),
        VariantSpec("bad", "demo", "backbone", "tests.plugin_demo:build_tiny", {"width": -1}),
    ]
    return build_registry([SpecFile((), tuple(specs))], entry_points=False)


def test_failed_build_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    settings = RunSettings(variants=("bad", "good"), resolutions=(32,), metrics=("params", "macs", "memory"))
    result = Runner(settings, tmp_path, registry=_broken_registry()).run()  # type: ignore[arg-type]
    bad, good = result.record("bad", 32), result.record("good", 32)
    assert bad is not None and bad["status"] == "failed" and "RuntimeError" in bad["reason"]
    assert good is not None and good["status"] == "ok" and good["params"] == 3 * 4 * 9 + 8
    assert load(tmp_path).records == result.records


def test_cell_too_big_for_memory_is_skipped_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import archbench.cells

    def must_not_run(*args: object) -> None:
        raise AssertionError("a cell that does not fit was run")

    monkeypatch.setattr(archbench.cells, "static_columns", must_not_run)
    # esnet_s at batch 1024 x 640 px: an activation peak of about 19 GiB on a machine with 1 GiB free.
    settings = RunSettings(variants=("esnet_s",), resolutions=(640,), batch_size=1024, metrics=("params", "memory"))
    result = Runner(settings, tmp_path, memory_probe=lambda: 2**30).run()
    record = result.records[0]
    assert record["status"] == "skipped"
    assert record["reason"].startswith("needs an estimated 23.44 GiB") and "of the 1.00 GiB available" in record["reason"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": "archbench.results", "schema_version": 1, "run_id": "x", "settings": {}, "environment": {}, "rec',
         "not valid JSON"),
        ('{"hello": "world"}', "not an archbench results file"),
        ('{"schema": "archbench.results", "schema_version": 99}', "schema version 99 is not supported"),
        ('{"schema": "archbench.results", "schema_version": 1, "run_id": "x", "settings": {}, "environment": {}, '
         '"records": [{"variant": "a"}]}', "record 0 lacks resolution"),
    ],
)
def test_report_rejects_corrupt_or_foreign_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
