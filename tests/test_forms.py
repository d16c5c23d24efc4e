"""Deployment forms: each is numerically eager's model, never touches the caller's
model, and fails as a one-line ``FormError``."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from archbench import forms
from archbench.errors import ArchbenchError
from archbench.folding import fold_conv_bn
from archbench.forms import (
    FORMS,
    FormError,
    check_forms,
    compare_outputs,
    prepare_form,
    unavailable_reason,
)
from archbench.inputs import sample_input
from archbench.models.layers import ConvBN
from archbench.models.necks import BottleneckCSP
from tests.conftest import built

CPU = torch.device("cpu")
CPU_FORMS = ("eager", "fused", "channels_last", "torchscript", "onnxruntime")
needs_onnxruntime = pytest.mark.skipif(
    unavailable_reason("onnxruntime", CPU) is not None, reason="onnxruntime is not installed"
)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a freshly built model's
    are mean 0, var 1, weight 1, bias 0, which folding would barely change)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def subjects() -> dict[str, nn.Module]:
    return {name: _randomize_bn(copy.deepcopy(built(name))) for name in ("shufflenetv2_x0_5", "picodet_s")}


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, type]], bool]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [(n, type(m)) for n, m in model.named_modules()], model.training


def _assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[tuple[str, type]], bool]) -> None:
    state, types, training = before
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert torch.equal(now[key], value), key
        assert now[key].is_contiguous(), key  # channels_last did not touch the original
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert model.training == training


# -- equivalence ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["shufflenetv2_x0_5", "picodet_s"])
@pytest.mark.parametrize("form", CPU_FORMS)
def test_cpu_form_matches_eager_and_leaves_model_alone(
    subjects: dict[str, nn.Module], name: str, form: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if form == "onnxruntime" and unavailable_reason(form, CPU):
        pytest.skip("onnxruntime is not installed")
    model = subjects[name]
    x = sample_input(1, 64)
    before = _snapshot(model)
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        prepared = prepare_form(form, model, x, threads=1)
    assert escaped == []  # TracerWarning, deprecation and exporter warnings are captured
    assert capfd.readouterr().err == ""  # and so are torch's log lines
    _assert_unchanged(model, before)

    assert prepared.name == form
    if form == "eager":  # the reference itself: nothing to check it against
        assert prepared.max_abs_err == prepared.max_rel_err == 0 and prepared.check == "reference"
        bound = forms.FP32_TOLERANCE
    else:
        # accepted at up to 10 x eager float32's own error against float64, never below 1e-5
        assert 0 < prepared.eager_ref_rel_err < 1e-4
        bound = max(FORMS.get(form).tolerance, forms.ERROR_FACTOR * prepared.eager_ref_rel_err)
        assert prepared.tolerance == bound
        assert 0 <= prepared.ref_rel_err <= bound and prepared.check == "not checked for vacuity: no second input"
    assert 0 <= prepared.max_rel_err < bound
    assert prepared.max_abs_err >= 0 and prepared.prepare_s >= 0 and prepared.cold_ms > 0 and prepared.note
    with torch.inference_mode():
        eager = forms._tensors(model(x))
        again = forms._tensors(prepared.call())
    _, rel = compare_outputs(eager, again)
    assert rel < bound  # the call is the checked form, not a leftover


@needs_onnxruntime
def test_onnxruntime_note_states_exporter_opset_and_threads(subjects: dict[str, nn.Module]) -> None:
    prepared = prepare_form("onnxruntime", subjects["shufflenetv2_x0_5"], sample_input(1, 64), threads=2)
    assert f"opset {forms.ONNX_OPSET}" in prepared.note
    assert "CPUExecutionProvider" in prepared.note and "2 intra-op" in prepared.note


@needs_onnxruntime
@pytest.mark.skipif(not forms._installed("onnxscript"), reason="the torch.export exporter needs onnxscript")
def test_onnx_falls_back_to_the_torch_export_exporter(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    export = torch.onnx.export

    def without_legacy(*args: object, dynamo: bool = True, **kwargs: object) -> object:
        if not dynamo:
            raise RuntimeError("the TorchScript-based exporter is gone")
        return export(*args, dynamo=dynamo, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", without_legacy)
    model = _randomize_bn(nn.Sequential(ConvBN(3, 8, 3, act="hardswish"), ConvBN.dw(8), ConvBN(8, 4, 1)))
    prepared = prepare_form("onnxruntime", model, torch.randn(1, 3, 16, 16))
    assert prepared.note.startswith("torch.export exporter (dynamo=True), opset ")
    assert prepared.max_rel_err < prepared.tolerance
    captured = capfd.readouterr()
    assert captured.out == captured.err == ""


# -- fused -----------------------------------------------------------------------
def _hand_counted() -> nn.Sequential:
    """3 ConvBNs, then YOLOv5's BottleneckCSP: 4 ConvBNs (cv1, cv4, two in m) and one BN
    after a concat. 7 BNs fold, 1 is left."""
    model = nn.Sequential(
        ConvBN(3, 8, 3, act="relu"), ConvBN.dw(8, act="hardswish"), ConvBN(8, 8, 1), BottleneckCSP(8, 8),
    )
    _randomize_bn(model)
    return model


def test_fold_conv_bn_counts_by_hand() -> None:
    model = _hand_counted()
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        expected = model(x)
    assert fold_conv_bn(model) == (7, 1)
    csp = model[3]
    assert isinstance(csp, BottleneckCSP)
    assert isinstance(csp.bn, nn.BatchNorm2d)  # after the concat: left alone
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1
    convbns = [m for m in model.modules() if isinstance(m, ConvBN)]
    assert len(convbns) == 7
    for convbn in convbns:
        assert isinstance(convbn.bn, nn.Identity) and convbn.conv.bias is not None
    assert csp.cv2.bias is None  # plain convs outside a conv-BN pair keep no bias
    with torch.inference_mode():
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_fused_form_reports_folded_and_left() -> None:
    model = _hand_counted()
    prepared = prepare_form("fused", model, torch.randn(1, 3, 16, 16))
    assert prepared.note.startswith("folded 7 BatchNorms into convs; 1 left")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8  # the original keeps all


def test_fold_skips_bn_without_running_stats_and_shared_convs() -> None:
    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(
        nn.Sequential(shared, nn.BatchNorm2d(3)),
        nn.Sequential(shared, nn.BatchNorm2d(3)),
        nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)),
    ).eval()
    assert fold_conv_bn(model) == (0, 3)


# -- failures ----------------------------------------------------------------------
class NotTraceable(nn.Module):
    """Runs eagerly; refuses to be traced or exported."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            raise RuntimeError("cannot trace this model\nsecond line of detail")
        return self.conv(x)


@pytest.mark.parametrize("form", ["torchscript", pytest.param("onnxruntime", marks=needs_onnxruntime)])
def test_failed_export_is_a_one_line_form_error(form: str) -> None:
    with pytest.raises(FormError) as caught:
        prepare_form(form, NotTraceable().eval(), torch.randn(1, 3, 8, 8))
    assert str(caught.value) == f"{form} failed: cannot trace this model"


def test_non_tensor_output_is_a_form_error() -> None:
    class Shape(nn.Module):
        def forward(self, x: torch.Tensor) -> object:
            return {"shape": x.shape}

    with pytest.raises(FormError, match=r"^eager failed: output is not a tensor or a list of tensors: dict$"):
        prepare_form("eager", Shape(), torch.randn(1, 3, 8, 8))


def test_diverging_form_is_a_form_error_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fold = forms.fold_conv_bn

    def fold_and_perturb(model: nn.Module) -> tuple[int, int]:
        counts = fold(model)
        with torch.no_grad():
            next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.add_(0.5)
        return counts

    monkeypatch.setattr(forms, "fold_conv_bn", fold_and_perturb)
    with pytest.raises(FormError) as caught:
        prepare_form("fused", _hand_counted(), torch.randn(1, 3, 16, 16))
    message = str(caught.value)
    found = re.fullmatch(r"fused diverges: max relative error (\S+) against the float64 reference, "
                         r"more than max\(1e-05, 10 x eager's (\S+)\)", message)
    assert found, message
    assert float(found.group(1)) > max(1e-5, 10 * float(found.group(2)))


def test_compare_outputs() -> None:
    e = [torch.tensor([1.0, -4.0]), torch.tensor([0.5])]
    assert compare_outputs(e, [torch.tensor([1.0, -3.0]), torch.tensor([0.5])]) == (1.0, 0.25)
    assert compare_outputs(e, [torch.tensor([1.0, -4.0]), torch.tensor([0.25])]) == (0.25, 0.5)  # worst output
    abs_err, rel_err = compare_outputs(e, [torch.tensor([float("nan"), -4.0]), torch.tensor([0.5])])
    assert abs_err != abs_err and rel_err != rel_err
    with pytest.raises(ValueError, match="1 outputs where eager gives 2"):
        compare_outputs(e, e[:1])


# -- names and availability ------------------------------------------------------------
def test_unknown_forms_are_refused() -> None:
    assert check_forms(["eager", "fused"]) == ("eager", "fused")
    assert check_forms("onnxruntime") == ("onnxruntime",)
    with pytest.raises(ArchbenchError, match=r"^unknown form 'tensorrt'; choose from eager, fused, .*bf16, openvino, .*ncnn_fp16$"):
        check_forms(["eager", "tensorrt"])
    with pytest.raises(ArchbenchError, match="unknown form"):
        prepare_form("int8", nn.Identity(), torch.zeros(1))
    with pytest.raises(ArchbenchError, match="unknown form"):
        unavailable_reason("int8", CPU)


def test_unavailable_reasons_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for form in ("eager", "fused", "channels_last", "torchscript"):
        assert unavailable_reason(form, CPU) is None
    for form in ("fp16", "bf16"):
        assert unavailable_reason(form, CPU) == "needs CUDA (a GPU half-precision form)"
        with pytest.raises(FormError, match=rf"^{form} unavailable: needs CUDA"):
            prepare_form(form, nn.Identity(), torch.zeros(1, 3, 8, 8))
    monkeypatch.setattr(forms, "_installed", lambda module: False)
    assert unavailable_reason("onnxruntime", CPU) == "onnxruntime is not installed (pip install 'archbench[onnx]')"
    monkeypatch.setattr(forms, "_cxx_compiler", lambda: None)
    assert "C++ compiler" in (unavailable_reason("compile", CPU) or "")


def test_import_does_not_import_onnxruntime() -> None:
    code = "import sys, archbench.forms; sys.exit('onnxruntime' in sys.modules or 'onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_forms_are_registered_once_with_their_tolerance() -> None:
    assert FORMS.names() == ("eager", "fused", "channels_last", "torchscript", "onnxruntime", "compile", "fp16", "bf16",
                             "openvino", "openvino_bf16", "ncnn", "ncnn_fp16")
    assert FORMS.get("fp16").tolerance < FORMS.get("bf16").tolerance
    assert FORMS.get("compile").first_call_prepares and not FORMS.get("eager").first_call_prepares
    with pytest.raises(ValueError, match="form 'eager' is already registered"):
        forms.register_form(forms.Form("eager", FORMS.get("eager").make))


def test_a_new_form_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A maker and a ``register_form`` call are all a form needs to be checked and timed."""
    calls: list[int] = []

    def make_halved(model: nn.Module, x: torch.Tensor, threads: int) -> forms.Made:
        def call() -> object:
            calls.append(1)
            return [t * 0.5 for t in model(x)]  # diverges: the check must catch it

        return forms.Made(call, "eager output halved")

    monkeypatch.setattr(FORMS, "_entries", dict(FORMS._entries))  # registered for this test only
    forms.register_form(forms.Form("halved", make_halved, tolerance=0.6))
    assert check_forms(["halved"]) == ("halved",)
    prepared = prepare_form("halved", built("shufflenetv2_x0_5"), sample_input(1, 64))
    assert prepared.note == "eager output halved" and prepared.max_rel_err == pytest.approx(0.5, rel=1e-6)
    FORMS._entries["halved"] = forms.Form("halved", make_halved, tolerance=0.4)
    with pytest.raises(FormError, match=r"halved diverges: max relative error 5\.0e-01 against the float64 "
                                        r"reference, more than max\(4e-01, 10 x eager's"):
        prepare_form("halved", built("shufflenetv2_x0_5"), sample_input(1, 64))
    assert len(calls) == 2


# -- compile and CUDA --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(unavailable_reason("compile", CPU) is not None, reason="torch.compile cannot run here")
def test_compile_matches_eager() -> None:
    model = _randomize_bn(nn.Sequential(ConvBN(3, 8, 3, act="relu")))
    before = _snapshot(model)
    prepared = prepare_form("compile", model, torch.randn(1, 3, 16, 16))
    _assert_unchanged(model, before)
    assert prepared.max_rel_err < prepared.tolerance and prepared.prepare_s > 0
    assert "mode='default'" in prepared.note


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", ["fp16", "bf16", "channels_last", "fused"])
def test_cuda_forms_match_eager(subjects: dict[str, nn.Module], form: str) -> None:
    if unavailable_reason(form, torch.device("cuda")):
        pytest.skip(unavailable_reason(form, torch.device("cuda")) or "")
    model = copy.deepcopy(subjects["shufflenetv2_x0_5"]).cuda()
    prepared = prepare_form(form, model, sample_input(1, 64, "cuda"), x_alt=sample_input(1, 64, "cuda", variant=1))
    assert prepared.ref_rel_err <= prepared.tolerance and prepared.check == "passed"
