"""OpenVINO and ncnn deployment forms (archbench.runtimes) and the ranking / published-reference
report sections (archbench.render.rankings)."""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import archbench
from archbench import forms, runtimes
from archbench.cells import form_columns
from archbench.environment import runtime_versions, static_environment
from archbench.forms import FormError, PreparedForm, prepare_form, unavailable_reason
from archbench.inputs import calibrate_batchnorm, calibration_batches, sample_input
from archbench.profilers.latency import LatencyConfig
from archbench.render import rankings
from archbench.render.markdown import render_markdown
from archbench.results import RunResult
from archbench.runner import Runner
from archbench.settings import RunSettings

CPU = torch.device("cpu")
RUNTIME_FORMS = ("openvino", "openvino_bf16", "ncnn", "ncnn_fp16")


def _needs(form: str) -> None:
    """Skip with the form's own reason where it cannot run here."""
    module = "openvino" if form.startswith("openvino") else "ncnn"
    pytest.importorskip(module, reason=f"{module} is not installed (pip install 'archbench[{module}]')")
    if module == "ncnn":
        pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'archbench[ncnn]')")
    reason = unavailable_reason(form, CPU)
    if reason is not None:
        pytest.skip(reason)


class Small(nn.Module):
    """A few convolutions with BatchNorm and two outputs: well conditioned, converts in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.stem(x)
        return [self.head(self.body(y)), y]


@functools.cache
def _small() -> nn.Module:
    torch.manual_seed(0)
    model = Small().eval()
    calibrate_batchnorm(model, calibration_batches("image", 64))
    return model


@functools.cache
def _picodet_s() -> nn.Module:
    model = archbench.create_model("picodet_s")
    calibrate_batchnorm(model, calibration_batches("image", 160))
    return model


@functools.cache
def _prepared(form: str, subject: str) -> PreparedForm:
    model, resolution = (_small(), 64) if subject == "small" else (_picodet_s(), 160)
    x, x_alt = sample_input(1, resolution), sample_input(1, resolution, variant=1)
    return prepare_form(form, model, x, threads=1, x_alt=x_alt)


# -- the forms, made and checked -------------------------------------------------------
@pytest.mark.parametrize("form", RUNTIME_FORMS)
def test_form_on_a_small_model_passes_its_check(form: str) -> None:
    _needs(form)
    prepared = _prepared(form, "small")
    assert prepared.ref_rel_err <= prepared.tolerance
    if prepared.precision == "fp32":
        assert prepared.check == "passed"  # not vacuous: the outputs move far more than the error allowed
    else:  # outputs move by O(1) between inputs: never 100 x a bf16/fp16 tolerance (forms.VACUITY_MARGIN)
        assert prepared.check.startswith("vacuous: output ")
    assert prepared.tolerance >= max(forms.FORMS.get(form).tolerance, forms.ERROR_FACTOR * prepared.eager_ref_rel_err)
    if prepared.precision == "fp32":
        assert prepared.ref_rel_err < 1e-5
    assert prepared.prepare_s > 0 and prepared.cold_ms > 0
    prepared.call()  # callable again after the check


@pytest.mark.parametrize("form", RUNTIME_FORMS)
def test_form_on_picodet_s_is_within_tolerance(form: str) -> None:
    _needs(form)
    prepared = _prepared(form, "picodet_s")
    assert prepared.ref_rel_err <= prepared.tolerance
    if prepared.precision == "fp32":
        # as close to float64 as eager float32 itself (a BN-calibrated random PicoDet amplifies rounding)
        assert prepared.check == "passed"
        assert prepared.tolerance == max(forms.FP32_TOLERANCE, forms.ERROR_FACTOR * prepared.eager_ref_rel_err)
        assert prepared.ref_rel_err < 3 * prepared.eager_ref_rel_err
    else:
        # bf16/fp16 are grounded in torch's own error at that precision, which on this model is
        # of the order of the outputs themselves: the check says it proves little
        assert "torch eager in torch." in prepared.note
        assert prepared.check.startswith("vacuous")


@pytest.mark.parametrize(("form", "runtime", "precision"), [
    ("openvino", "openvino", "fp32"), ("openvino_bf16", "openvino", "bf16"),
    ("ncnn", "ncnn", "fp32"), ("ncnn_fp16", "ncnn", "fp16"),
])
def test_record_columns_say_runtime_version_precision_threads(form: str, runtime: str, precision: str) -> None:
    _needs(form)
    prepared = _prepared(form, "small")
    columns = form_columns(prepared)
    assert columns["form_runtime"] == f"{runtime} {runtime_versions()[runtime]}"
    assert columns["form_precision"] == precision
    assert columns["form_prepare_s"] == prepared.prepare_s
    assert "1 thread(s)" in prepared.note
    if runtime == "openvino":
        assert f"INFERENCE_PRECISION_HINT {'f32' if precision == 'fp32' else precision} (read back)" in prepared.note
    else:
        assert f"fp16={int(precision == 'fp16')}" in prepared.note
        assert "blobs in0 -> out0, out1" in prepared.note  # read from the converted model


def test_existing_forms_report_their_runtime() -> None:
    prepared = prepare_form("eager", _small(), sample_input(1, 64))
    assert (prepared.runtime, prepared.precision) == (f"torch {torch.__version__}", "fp32")
    pytest.importorskip("onnxruntime")
    import onnxruntime

    prepared = prepare_form("onnxruntime", _small(), sample_input(1, 64))
    assert prepared.runtime == f"onnxruntime {onnxruntime.__version__}"


def test_openvino_threads_and_hints_are_the_runs() -> None:
    assert runtimes.openvino_config(3, "f32") == {"INFERENCE_NUM_THREADS": 3, "INFERENCE_PRECISION_HINT": "f32",
                                                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def test_environment_lists_installed_runtimes() -> None:
    env = static_environment()
    for name, version in runtime_versions().items():
        assert env[name] == version
    for module in ("openvino", "ncnn", "pnnx", "onnxruntime"):
        if forms._installed(module):
            assert module in env


# -- ncnn: conversion folder, blob names, options ----------------------------------------
def _temp_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("archbench-ncnn-*"))


def test_ncnn_conversion_folder_is_removed_or_kept(tmp_path: Path) -> None:
    _needs("ncnn")
    before = _temp_folders()
    prepare_form("ncnn", _small(), sample_input(1, 64), threads=1)
    assert _temp_folders() == before
    kept = tmp_path / "artifacts" / "small-64-ncnn"
    prepare_form("ncnn", _small(), sample_input(1, 64), threads=1, artifacts_dir=kept)
    assert {"model.pt", "model.ncnn.param", "model.ncnn.bin"} <= {p.name for p in kept.iterdir()}
    assert _temp_folders() == before


def test_ncnn_blob_names_are_read_from_the_model() -> None:
    _needs("ncnn")
    import ncnn

    net = ncnn.Net()
    param = "\n".join([
        "7767517", "4 5",
        "Input            data   0 1 data",
        "Split            split  1 2 data a b",
        "ReLU             relu   1 1 a prob10",
        "ReLU             relu2  1 1 b prob2",
    ]) + "\n"
    assert net.load_param_mem(param) == 0
    assert runtimes.ncnn_blob_names(net) == (["data"], ["prob2", "prob10"])  # natural order


def test_ncnn_options_are_fp32_unless_asked() -> None:
    _needs("ncnn")
    import ncnn

    opt = ncnn.Net().opt
    runtimes.ncnn_options(opt, 3, fp16=False)
    assert opt.num_threads == 3
    assert not (opt.use_fp16_storage or opt.use_fp16_packed or opt.use_fp16_arithmetic or opt.use_bf16_storage)
    runtimes.ncnn_options(opt, 1, fp16=True)
    assert opt.use_fp16_storage and opt.use_fp16_packed and opt.use_fp16_arithmetic


def test_pnnx_failure_is_one_line_form_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("ncnn")
    import pnnx

    monkeypatch.setattr(pnnx, "EXEC_PATH", "/bin/false")
    with pytest.raises(FormError, match=r"^ncnn failed: pnnx exited with status 1: no output$"):
        prepare_form("ncnn", _small(), sample_input(1, 64))


def test_ncnn_batch_above_one_fails_with_a_reason() -> None:
    _needs("ncnn")
    with pytest.raises(FormError, match=r"ncnn runs one image per call \(batch size 1\), not 2"):
        prepare_form("ncnn", _small(), sample_input(2, 64))


# -- unavailability --------------------------------------------------------------------
def test_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert unavailable_reason("ncnn", cuda) in ("ncnn runs on the CPU here (device cuda)", runtimes.NCNN_INSTALL_HINT,
                                                "pnnx is not installed (pip install 'archbench[ncnn]')",
                                                "ncnn is not installed (pip install 'archbench[ncnn]')")
    monkeypatch.setattr(forms, "_installed", lambda module: module not in ("openvino", "pnnx"))
    monkeypatch.setattr(runtimes, "_installed", forms._installed)
    assert unavailable_reason("openvino", CPU) == "openvino is not installed (pip install 'archbench[openvino]')"
    assert unavailable_reason("ncnn_fp16", CPU) == "pnnx is not installed (pip install 'archbench[ncnn]')"
    with pytest.raises(FormError, match=r"^openvino_bf16 unavailable: openvino is not installed"):
        prepare_form("openvino_bf16", _small(), sample_input(1, 64))


def test_openvino_bf16_needs_a_bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "_installed", lambda module: True)
    monkeypatch.setattr(runtimes, "openvino_cpu_capabilities", lambda: ("FP32", "INT8"))
    assert unavailable_reason("openvino_bf16", CPU) == (
        "this CPU has no bf16 support in OpenVINO's CPU plugin (OPTIMIZATION_CAPABILITIES: FP32, INT8)")
    assert unavailable_reason("openvino", CPU) is None


def test_unavailable_runtime_is_a_skipped_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "_installed", lambda module: module != "openvino")
    settings = RunSettings(("small",), resolutions=(64,), metrics=("params", "latency"),
                           forms=("eager", "openvino"), latency=LatencyConfig(warmup_calls=1, warmup_s=0.0, min_samples=5, min_time_s=0.05,
                                                         max_time_s=0.5, retries=0))
    result = Runner(settings, out_dir=None, models={"small": _small()}, strict=False).run()  # as `archbench run`
    record = result.record("small", 64, "openvino")
    assert record is not None and record["status"] == "skipped"
    assert "openvino is not installed (pip install 'archbench[openvino]')" in record["reason"]


# -- the report sections ----------------------------------------------------------------
def _record(variant: str, resolution: int, form: str, ms: float, iqr: float = 0.01, **extra: Any) -> dict[str, Any]:
    return {"variant": variant, "resolution": resolution, "batch_size": 1, "device": "cpu", "form": form,
            "status": "ok", "reason": "", "latency_ms_median": ms, "latency_ms_iqr": iqr, **extra}


def _result(records: list[dict[str, Any]], forms_: list[str], variants: list[str]) -> RunResult:
    return RunResult("hand-made", "2026-01-01T00:00:00Z", "archbench run", "0",
                     {"variants": variants, "resolutions": sorted({r["resolution"] for r in records}),
                      "forms": forms_, "threads": 1, "metrics": ["params", "macs", "latency"]},
                     {"cpu_model": "test"}, records=records, complete=True)


@pytest.fixture
def hand_made() -> RunResult:
    latency = {  # (variant, resolution, form): ms
        ("a", 320, "eager"): 10.0, ("b", 320, "eager"): 20.0, ("c", 320, "eager"): 30.0,
        ("a", 320, "ncnn"): 5.0, ("b", 320, "ncnn"): 6.0, ("c", 320, "ncnn"): 7.0,
        ("a", 416, "eager"): 15.0, ("b", 416, "eager"): 25.0, ("c", 416, "eager"): 35.0,
        ("a", 416, "ncnn"): 9.0, ("b", 416, "ncnn"): 8.0, ("c", 416, "ncnn"): 8.05,
    }
    records = [_record(v, r, f, ms, form_precision="fp32") for (v, r, f), ms in latency.items()]
    return _result(records, ["eager", "ncnn"], ["a", "b", "c"])


def test_rankings_per_resolution_and_verdict(hand_made: RunResult) -> None:
    assert rankings.latency_rankings(hand_made, 320) == {"eager": ["a", "b", "c"], "ncnn": ["a", "b", "c"]}
    assert rankings.latency_rankings(hand_made, 416) == {"eager": ["a", "b", "c"], "ncnn": ["b", "c", "a"]}
    assert rankings.ranking_verdict(rankings.latency_rankings(hand_made, 320)) == "same order in all 2 forms"
    assert rankings.ranking_verdict(rankings.latency_rankings(hand_made, 416)) == (
        "**changes**: eager: `a` < `b` < `c`; ncnn: `b` < `c` < `a`")
    section = rankings.ranking_section(hand_made)
    assert section is not None
    assert "| `ncnn` | `a` < `b` < `c` | `b` < `c` < `a` |" in section  # 8.0 and 8.05 differ by more than the IQR
    assert "- 320 px: same order in all 2 forms." in section


def test_ranking_marks_neighbours_within_noise(hand_made: RunResult) -> None:
    for r in hand_made.records:
        r["latency_ms_iqr"] = 0.1 if r["form"] == "ncnn" and r["resolution"] == 416 else 0.01
    section = rankings.ranking_section(hand_made)
    assert section is not None and "| `ncnn` | `a` < `b` < `c` | `b` ≈ `c` < `a` |" in section


def test_ranking_leaves_out_variants_missing_in_a_form(hand_made: RunResult) -> None:
    hand_made.records = [r for r in hand_made.records if not (r["variant"] == "a" and r["form"] == "ncnn")]
    assert rankings.latency_rankings(hand_made, 416) == {"eager": ["b", "c"], "ncnn": ["b", "c"]}


def test_published_ratio_arithmetic() -> None:
    assert rankings.published_ratio("picodet_shufflenetv2", "picodet_s", 416, "ncnn") == pytest.approx(15.06 / 12.37)
    assert rankings.published_ratio("picodet_shufflenetv2", "picodet_s", 416, "Paddle Lite") == pytest.approx(
        10.63 / 9.82)
    assert rankings.published_ratio("picodet_shufflenetv2", "picodet_s", 320, "ncnn") is None  # not in the zoo
    assert rankings.published("picodet_l", 640) == rankings.PublishedModel(
        "PicoDet-L", "picodet_l", 640, 3.30, 8.91, 54.11, 50.55)


def test_published_section_beside_measured_ratios() -> None:
    records = [
        _record("picodet_s", 416, "eager", 20.0, params=1_000_000, macs=600_000_000, form_precision="fp32"),
        _record("picodet_shufflenetv2", 416, "eager", 30.0, params=1_200_000, macs=750_000_000,
                form_precision="fp32"),
        _record("picodet_s", 416, "ncnn", 10.0, form_precision="fp32"),
        _record("picodet_shufflenetv2", 416, "ncnn", 11.0, form_precision="fp32"),
    ]
    result = _result(records, ["eager", "ncnn"], ["picodet_s", "picodet_shufflenetv2"])
    assert rankings.measured_ratio(result, "picodet_shufflenetv2", "picodet_s", 416, "eager") == pytest.approx(1.5)
    assert rankings.measured_ratio(result, "picodet_shufflenetv2", "picodet_s", 416, "ncnn") == pytest.approx(1.1)
    assert rankings.measured_ratio(result, "picodet_shufflenetv2", "picodet_s", 320, "ncnn") is None
    section = rankings.published_section(result)
    assert section is not None
    assert "other hardware" in section
    assert "| PicoDet-S | `picodet_s` | 416 | 0.99 | 1.24 | 12.37 | 9.82 | 1.00 | 1.20 | 20.0 | 10.0 |" in section
    assert "| published, ncnn | Snapdragon 865 (ARM), 4 threads, FP16 (other hardware) | 1.22 |" in section
    assert "| published, Paddle Lite | Snapdragon 865 (ARM), 4 threads, FP16 (other hardware) | 1.08 |" in section
    assert "| measured, eager | this machine, 1 thread(s), fp32 | 1.50 |" in section
    assert "| measured, ncnn | this machine, 1 thread(s), fp32 | 1.10 |" in section
    assert "params at 416 px: published 1.182, here 1.20; MACs (published: FLOPs) at 416 px: published 1.234, here 1.25" \
        in section
    report = render_markdown(result)
    assert "## Ranking of variants by latency, per form" in report and "## Published reference" in report


def test_no_ranking_or_reference_for_one_form_of_unpublished_variants() -> None:
    result = _result([_record("a", 320, "eager", 1.0), _record("b", 320, "eager", 2.0)], ["eager"], ["a", "b"])
    assert rankings.ranking_sections(result) == []
    alone = _result([_record("picodet_s", 416, "eager", 1.0)], ["eager"], ["picodet_s"])
    assert rankings.published_section(alone) is None  # no pair: nothing measured to set the ratio beside


def test_model_is_left_alone_by_runtime_forms() -> None:
    _needs("openvino")
    model = copy.deepcopy(_small())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare_form("openvino", model, sample_input(1, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_keeps_artifacts_per_cell_and_overwrite_removes_them(tmp_path: Path) -> None:
    _needs("ncnn")
    from archbench.cli import main

    out = tmp_path / "run"
    args = ["run", "--variants", "esnet_s", "--resolutions", "64", "--metrics", "latency", "--forms", "ncnn",
            "--out", str(out)]
    assert main([*args, "--keep-artifacts"]) == 0
    kept = out / "artifacts" / "esnet_s-64px-ncnn"
    assert {"model.ncnn.param", "model.ncnn.bin"} <= {p.name for p in kept.iterdir()}
    assert main([*args, "--overwrite"]) == 0  # replaces the run, kept files included; keeps none this time
    assert not (out / "artifacts").exists()
