"""Deployment forms as a run axis: results, report, failures recorded, unavailable forms skipped."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import pytest

import archbench
import archbench.forms as forms
from archbench.cli import main
from archbench.compare import compare_runs
from archbench.profilers.latency import LatencyConfig
from archbench.results import load
from archbench.runner import Runner
from archbench.settings import RunSettings

QUICK = LatencyConfig(warmup_calls=2, warmup_s=0.0, min_samples=10, min_time_s=0.05, max_time_s=1.0, retries=0)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.skipif(not HAS_ORT, reason="needs onnxruntime (archbench[onnx])")
def test_run_with_forms_records_each_form_and_reports_speedups(tmp_path: Path) -> None:
    settings = RunSettings(variants=("shufflenetv2_x0_5", "esnet_s"), resolutions=(64,),
                           forms=("eager", "fused", "onnxruntime"), latency=QUICK)
    result = Runner(settings, tmp_path).run()
    assert [(r["variant"], r["form"]) for r in result.records] == [
        (v, f) for v in ("shufflenetv2_x0_5", "esnet_s") for f in ("eager", "fused", "onnxruntime")]
    for record in result.records:
        assert record["status"] == "ok", record["reason"]
        if record["form"] == "eager":
            assert record["form_check"] == "reference" and math.isnan(record["form_tolerance"])
        else:  # checked against float64, and the check could have failed (outputs depend on the input)
            assert record["form_ref_rel_err"] <= record["form_tolerance"] and record["form_check"] == "passed"
        assert record["params"] == result.record(record["variant"], 64, "eager")["params"]  # type: ignore[index]
    assert result.record("esnet_s", 64, "eager")["form_max_rel_err"] == 0.0  # type: ignore[index]
    assert "onnx" in result.record("esnet_s", 64, "onnxruntime")["form_note"].lower()  # type: ignore[index]
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Deployment forms: speed-up over eager" in report and "**onnxruntime**" in report
    assert "### Latency, fused (ms)" in report and "Ranking of variants by latency" in report
    assert load(tmp_path).settings["forms"] == ["eager", "fused", "onnxruntime"]
    assert compare_runs(result, load(tmp_path)).exit_code == 0


def test_failed_export_is_recorded_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("tracer exploded\nsecond line")

    monkeypatch.setitem(forms.FORMS._entries, "torchscript", replace(forms.FORMS.get("torchscript"), make=broken))
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), forms=("eager", "torchscript"),
                           latency=QUICK)
    result = Runner(settings, tmp_path).run()
    eager, traced = (result.record("shufflenetv2_x0_5", 64, f) for f in ("eager", "torchscript"))
    assert eager is not None and eager["status"] == "ok" and eager["latency_ms_median"] > 0
    assert traced is not None and traced["status"] == "failed"
    assert traced["reason"] == "torchscript failed: tracer exploded"
    assert "latency_ms_median" not in traced  # never timed


def test_diverging_form_is_recorded_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # any error at all now diverges (float32 rounding included)
    monkeypatch.setattr(forms, "ERROR_FACTOR", 0.0)
    monkeypatch.setitem(forms.FORMS._entries, "channels_last", replace(forms.FORMS.get("channels_last"), tolerance=-1.0))
    settings = RunSettings(variants=("shufflenetv2_x0_5",), resolutions=(64,), forms=("channels_last",),
                           latency=QUICK)
    record = Runner(settings, tmp_path).run().records[0]
    assert record["status"] == "failed" and "channels_last diverges: max relative error" in record["reason"]


def test_cuda_forms_on_cpu_are_skipped_with_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if forms.unavailable_reason("fp16", __import__("torch").device("cpu")) is None:
        pytest.skip("fp16 runs here")
    code = main(["run", "--variants", "shufflenetv2_x0_5", "--resolutions", "64", "--forms", "eager,fp16",
                 "--metrics", "params,latency", "--out", str(tmp_path)])
    assert code == 3
    skipped = load(tmp_path).record("shufflenetv2_x0_5", 64, "fp16")
    assert skipped is not None and skipped["status"] == "skipped" and "needs CUDA" in skipped["reason"]
    assert "1 cell(s) failed or were skipped" in capsys.readouterr().err


def test_profile_forms_and_errors() -> None:
    df = archbench.profile("shufflenetv2_x0_5", resolutions=(64,), metrics=("params", "latency"),
                           forms=("eager", "channels_last"), latency=QUICK)
    assert list(df["form"]) == ["eager", "channels_last"] and (df["params"] == 143_136).all()
    with pytest.raises(archbench.ArchbenchError, match="unknown form 'tensorrt'"):
        archbench.profile("esnet_s", resolutions=(64,), forms=("tensorrt",))
    if forms.unavailable_reason("bf16", __import__("torch").device("cpu")) is not None:
        with pytest.raises(archbench.ArchbenchError, match="form bf16 cannot run on cpu: needs CUDA"):
            archbench.profile("esnet_s", resolutions=(64,), metrics=("latency",), forms=("bf16",))


def test_unknown_form_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--variants", "esnet_s", "--forms", "eager,tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown form 'tflite'" in err
