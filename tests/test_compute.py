"""The dispatch-level compute counter against hand-computed counts, and against
fvcore and thop on the same models.

What each cross-checker adds on top of conv + linear MACs, as measured here
(fvcore 0.1.5.post20221221, thop 0.1.1, torch 2.13 CPU), with E(op) the elements
``count_compute`` reports for an op:

* fvcore: eval BatchNorm at 2 per element (affine), ``adaptive_avg_pool2d`` at 1 per
  input element, ``upsample_nearest2d`` at 1 per output element. Hardswish, Hardsigmoid,
  add, mul, max_pool2d and mean are "unsupported" (0); relu and cat are ignored (0).
  So ``fvcore - macs = 2 E(batch_norm) + E(adaptive_avg_pool2d) + E(upsample_nearest2d)``.
* thop: BatchNorm2d at 4 per element (``2 * numel``, doubled for affine, eval or not),
  AdaptiveAvgPool2d at ``(in_area / out_area + 1)`` per output element (input elements
  plus output elements); ReLU and MaxPool2d are 0 by rule, Hardswish/Hardsigmoid have
  no rule (0), functional ops (cat, the SE multiply, ``F.interpolate``, ``mean``) are
  invisible. So ``thop - macs = 4 E(batch_norm) + E(adaptive_avg_pool2d) + (its output)``.

On these convolutional networks both agree with ``count_compute`` exactly on the conv +
linear part, module by module (``agreement``). They do not in general: fvcore counts no
attention and thop sees no functional call (``F.linear``, ``@``) and miscounts transposed
convolutions; ``agreement`` then names the modules and the ops (tests at the end).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archbench
from archbench.models.layers import ConvBN, GhostModule, SqueezeExcite, channel_shuffle
from archbench.profilers.compute import (
    ComputeCount,
    UnclassifiedOp,
    aggregate_by_prefix,
    count_compute,
    unclassified_from_text,
    unclassified_to_text,
)
from archbench.profilers.crosscheck import agreement, fvcore_count, thop_count
from archbench.profilers.op_rules import (
    CATEGORIES,
    KINDS,
    op_name,
    register_op_rule,
    rule_for,
    unregister_op_rule,
)


def count(module: nn.Module, *shape: int) -> ComputeCount:
    return count_compute(module, torch.randn(*shape))


def no_other_work(result: ComputeCount, **expected: int) -> None:
    """Every element category is 0 except those given, and nothing went unclassified."""
    measured = {c: result.elements(c) for c in CATEGORIES}
    assert measured == {c: expected.get(c, 0) for c in CATEGORIES}
    assert result.unclassified_ops == frozenset()


# ----------------------------------------------------------------------------- small models


@pytest.mark.parametrize(
    ("conv", "shape", "expected"),
    [
        # out elements x (in / groups) x kh x kw
        # dense: 21600
        (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10), 8 * 10 * 10 * 3 * 3 * 3),
        # depthwise: 7200
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 10, 10), 8 * 10 * 10 * 1 * 3 * 3),
        # 4 groups of 2 input channels: 28800
        (nn.Conv2d(8, 16, 3, padding=1, groups=4), (1, 8, 10, 10), 16 * 10 * 10 * 2 * 3 * 3),
        # dilation 2: output 12 - 4 = 8 wide: 13824
        (nn.Conv2d(4, 6, 3, dilation=2), (1, 4, 12, 12), 6 * 8 * 8 * 4 * 3 * 3),
        # stride 2: output (11 + 2 - 3) / 2 + 1 = 6 wide: 7776
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 11, 11), 6 * 6 * 6 * 4 * 3 * 3),
        # rectangular kernel, no bias: 7560
        (nn.Conv2d(4, 6, (1, 5), padding=(0, 2), bias=False), (1, 4, 7, 9), 6 * 7 * 9 * 4 * 5),
        # conv1d, batch 2: 2304
        (nn.Conv1d(4, 6, 3), (2, 4, 10), 2 * 6 * 8 * 4 * 3),
    ],
    ids=["dense", "depthwise", "grouped", "dilated", "strided", "rect_no_bias", "conv1d"],
)
def test_convolution_macs(conv: nn.Module, shape: tuple[int, ...], expected: int) -> None:
    result = count(conv, *shape)
    assert result.macs == expected
    assert result.macs_by_module == {"": expected}
    no_other_work(result)


def test_bias_is_not_counted() -> None:
    with_bias, without = nn.Conv2d(4, 6, 3), nn.Conv2d(4, 6, 3, bias=False)
    assert count(with_bias, 1, 4, 9, 9).macs == count(without, 1, 4, 9, 9).macs == 6 * 7 * 7 * 4 * 9


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8,), 8 * 4), ((1, 8), 8 * 4), ((5, 8), 5 * 8 * 4), ((2, 3, 8), 2 * 3 * 8 * 4)],
    ids=["unbatched", "batch1", "batch5", "3d"],
)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_macs(shape: tuple[int, ...], expected: int, bias: bool) -> None:
    result = count(nn.Linear(8, 4, bias=bias), *shape)
    assert result.macs == expected
    no_other_work(result)


@pytest.mark.parametrize(
    ("groups", "expected"),
    # each input element feeds (out / groups) x kh x kw outputs: 4*5*5 inputs
    [(1, 4 * 5 * 5 * 6 * 3 * 3), (2, 4 * 5 * 5 * 3 * 3 * 3)],  # 5400, 2700
)
def test_transposed_convolution_macs(groups: int, expected: int) -> None:
    conv, x = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=groups), torch.randn(1, 4, 5, 5)
    result = count_compute(conv, x)
    assert result.macs == expected
    no_other_work(result)
    assert fvcore_count(conv, x).total == expected  # thop uses the forward formula: 26136 / 13068


def test_matrix_products_and_decomposed_ops() -> None:
    class Products(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.einsum("bij,bjk->bik", x, x)  # no rule: decomposed to bmm, 2*4*4*4
            return torch.bmm(y, x) @ x  # bmm 2*4*4*4, matmul 2*4*4*4

    result = count(Products(), 2, 4, 4)
    assert result.macs == 3 * 2 * 4 * 4 * 4
    assert "aten.einsum.default" in result.op_calls
    assert result.unclassified_ops == frozenset()


def test_squeeze_excite() -> None:
    result = count(SqueezeExcite(16), 1, 16, 8, 8)
    # reduce 1x1 16 -> 4 and expand 4 -> 16, both on a 1x1 map
    assert result.macs_by_module == {"reduce": 4 * 16, "expand": 16 * 4}
    assert result.macs == 128
    no_other_work(
        result,
        pool=16 * 8 * 8,  # the global average pool reads every input element
        activation=4 + 16,  # ReLU on 4, Hardsigmoid on 16
        elementwise=16 * 8 * 8,  # x * scale
    )
    assert result.by_module("activation") == {"relu": 4, "gate": 16}
    assert result.by_module("elementwise") == {"": 1024}  # the multiply is SE's own forward


def test_ghost_module() -> None:
    result = count(GhostModule(8, 16, act="relu", cheap_act=None), 1, 8, 6, 6)
    primary = 8 * 6 * 6 * 8  # 1x1, 8 -> 8: 2304
    cheap = 8 * 6 * 6 * 9  # depthwise 3x3 on 8 channels: 2592
    assert result.macs_by_module == {"primary.conv": primary, "cheap.conv": cheap}
    assert result.macs == 4896
    no_other_work(result, norm=2 * 8 * 36, activation=8 * 36, data_movement=16 * 36)
    assert result.by_module("norm") == {"primary.bn": 288, "cheap.bn": 288}
    assert result.by_module("data_movement") == {"": 576}


class Shuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


def test_channel_shuffle_is_data_movement_only() -> None:
    result = count(Shuffle(2), 1, 8, 4, 4)
    assert result.macs == 0
    no_other_work(result, data_movement=8 * 4 * 4)  # view and transpose are free; reshape copies
    assert result.elements_by_op == {"aten.reshape.default": 128}
    assert {"aten.view.default", "aten.transpose.int"} <= set(result.op_calls)


def test_reshape_without_copy_is_free() -> None:
    class Flatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], -1).contiguous()

    no_other_work(count(Flatten(), 2, 8, 4, 4))


@pytest.mark.parametrize(
    "upsample",
    [nn.Upsample(scale_factor=2, mode="nearest"), lambda x: F.interpolate(x, scale_factor=2.0)],
    ids=["module", "functional"],
)
def test_nearest_upsample_is_data_movement_only(
    upsample: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    class Up(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return upsample(x)

    result = count(Up(), 1, 4, 5, 5)
    assert result.macs == 0
    no_other_work(result, data_movement=4 * 10 * 10)  # output elements


def test_batch_of_two_doubles_everything() -> None:
    model = nn.Sequential(ConvBN(3, 8, 3, 2, act="hardswish"), ConvBN.dw(8, 3, act="relu"))
    one, two = count(model, 1, 3, 16, 16), count(model, 2, 3, 16, 16)
    assert one.macs == 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9
    assert two.macs == 2 * one.macs
    for category in CATEGORIES:
        assert two.elements(category) == 2 * one.elements(category)


def test_unknown_ops_are_listed_not_dropped() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1)

    result = count(Odd(), 1, 8)
    assert result.unclassified_ops == frozenset({"aten.cumsum.default"})
    assert result.op_calls["aten.cumsum.default"] == 1
    # with its calls and module; cumsum is known to be MAC-free
    assert result.unclassified == (UnclassifiedOp("aten.cumsum.default", 1, ("",), False),)


class Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x, x)  # pairwise distances: MAC-like work, no rule


class Several(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Inner(), Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        return self.a(y).cumsum(0) + torch.cdist(x[0], x[0]).sum()


def test_unclassified_ops_carry_calls_modules_and_whether_they_may_hide_macs() -> None:
    result = count(Several(), 2, 5, 3)
    cdist = "aten._cdist_forward.default"
    assert result.unclassified == (
        UnclassifiedOp(cdist, 4, ("a", "b", ""), True),  # float tensors of rank >= 2
        UnclassifiedOp("aten.cumsum.default", 1, ("",), False),
    )
    assert result.unclassified[0].describe() == f"{cdist}: 4 calls in a, b, (model)"
    assert unclassified_from_text(unclassified_to_text(result.unclassified)) == list(result.unclassified)
    assert unclassified_from_text(None) == unclassified_from_text("") == []


def test_a_rule_may_count_several_kinds_but_no_unknown_one(user_rules: None) -> None:
    register_op_rule("cumsum", "macs", lambda args, out: {"macs": 3, "pool": out.numel()})
    result = count(Scans(), 2, 3, 8)
    assert result.macs_by_op == {"aten.cumsum.default": 3, "aten.cumsum_.default": 3}
    assert result.elements_by_op["aten.cumsum.default"] == 48 and result.pool == 96
    register_op_rule("cumsum", "macs", lambda args, out: {"flops": 1}, replace=True)
    with pytest.raises(ValueError, match="unknown kind 'flops'"):
        count(Scans(), 2, 3, 8)


# ----------------------------------------------------------------------------- user op rules


def scan_additions(args: Any, out: Any) -> int:
    """A cumulative sum adds each element to the running total, except each line's first:
    ``numel - numel / size(dim)``."""
    x, dim = args[0], args[1]
    return x.numel() - x.numel() // x.shape[dim]


class Scans(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cumsum(x, 2)
        y.cumsum_(dim=1)  # in place, dim by keyword
        return x + y


@pytest.fixture
def user_rules() -> Iterator[None]:
    """Takes out, after the test, any rule it registered for these test-only names."""
    names = ("cumsum", "cumprod")
    assert all(rule_for(name) is None for name in names)
    yield
    for name in names:
        if rule_for(name) is not None:
            unregister_op_rule(name)


def test_op_name_drops_only_an_inplace_suffix() -> None:
    assert op_name(torch.ops.aten.relu_.default) == "relu"
    assert op_name(torch.ops.aten.cumsum.default) == "cumsum"
    assert op_name(torch.ops.aten.__and__.Tensor) == "__and__"
    assert op_name(torch.ops.aten.__iand__.Tensor) == "__iand__"


def test_registered_rule_counts_an_unclassified_op_exactly(user_rules: None) -> None:
    before = count(Scans(), 2, 3, 8)
    assert before.unclassified_ops == {"aten.cumsum.default", "aten.cumsum_.default"}
    assert before.elementwise == 2 * 3 * 8  # the add only

    register_op_rule("cumsum", "elementwise", scan_additions)
    assert rule_for("cumsum") == ("elementwise", scan_additions)
    after = count(Scans(), 2, 3, 8)
    no_other_work(after, elementwise=122)
    # along dim 2 of (2, 3, 8): 2 * 3 lines of 7 additions; then along dim 1, in place:
    # 2 * 8 lines of 2 additions; then the add: 48 output elements
    assert after.elements_by_op == {
        "aten.cumsum.default": 2 * 3 * 7, "aten.cumsum_.default": 2 * 8 * 2,
        "aten.add.Tensor": 48,
    }
    assert after.elements_by_module["elementwise"] == {"": 122}
    assert after.macs == 0 and after.op_calls == before.op_calls

    assert unregister_op_rule("cumsum") == ("elementwise", scan_additions)
    assert rule_for("cumsum") is None
    assert count(Scans(), 2, 3, 8) == before


def test_registered_rule_of_each_kind(user_rules: None) -> None:
    x = torch.randn(2, 3, 8)
    register_op_rule(["cumsum", "cumprod"], "macs", scan_additions)
    result = count_compute(Scans(), x)
    assert result.macs == 42 + 32 and result.macs_by_op == {
        "aten.cumsum.default": 42, "aten.cumsum_.default": 32,
    }
    assert rule_for("cumprod") == rule_for("cumsum")

    register_op_rule("cumsum", "free", scan_additions, replace=True)
    result = count_compute(Scans(), x)
    no_other_work(result, elementwise=48)
    assert result.macs == 0 and result.op_calls["aten.cumsum.default"] == 1
    assert {"macs", "free", *CATEGORIES} == set(KINDS)


def test_register_op_rule_rejects_duplicates_and_bad_input(user_rules: None) -> None:
    register_op_rule("cumsum", "elementwise", scan_additions)
    with pytest.raises(ValueError, match=r"'cumsum' already has a rule \(elementwise\)"):
        register_op_rule("cumsum", "pool", scan_additions)
    with pytest.raises(ValueError, match=r"'conv2d' already has a rule \(macs\)"):
        register_op_rule("conv2d", "macs", scan_additions)
    # all or nothing: cumprod is not registered when a name beside it is taken
    with pytest.raises(ValueError, match="conv2d"):
        register_op_rule(["cumprod", "conv2d"], "elementwise", scan_additions)
    assert rule_for("cumprod") is None
    assert rule_for("cumsum") == ("elementwise", scan_additions)
    for kind in ("flops", "MACs", "free "):
        with pytest.raises(ValueError, match="unknown rule kind"):
            register_op_rule("cumprod", kind, scan_additions)
    for name in ("cumprod_", "aten.cumprod", "aten.cumprod.default", ""):
        with pytest.raises(ValueError, match="bad op name"):
            register_op_rule(name, "elementwise", scan_additions)
    with pytest.raises(ValueError, match="no op names"):
        register_op_rule([], "elementwise", scan_additions)
    with pytest.raises(TypeError, match="callable"):
        register_op_rule("cumprod", "elementwise", 3)  # type: ignore[arg-type]
    assert rule_for("cumprod") is None
    with pytest.raises(KeyError, match="cumprod"):
        unregister_op_rule("cumprod")


def test_aggregate_by_prefix() -> None:
    per_module = {"backbone.stage2.0.conv": 5, "backbone.stage2.1.conv": 7, "backbone.stem": 1,
                  "neck.up": 3, "": 2}
    assert aggregate_by_prefix(per_module, 1) == {"backbone": 13, "neck": 3, "": 2}
    assert aggregate_by_prefix(per_module, 2) == {
        "backbone.stage2": 12, "backbone.stem": 1, "neck.up": 3, "": 2,
    }
    assert aggregate_by_prefix(per_module, 0) == {"": 18}
    with pytest.raises(ValueError, match="depth"):
        aggregate_by_prefix(per_module, -1)


def test_result_is_frozen_and_rows_are_tidy() -> None:
    result = count(SqueezeExcite(16), 1, 16, 8, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.macs = 0  # type: ignore[misc]
    rows = {row["module"]: row for row in result.rows()}
    assert rows["reduce"]["macs"] == 64 and rows["pool"]["pool_elems"] == 1024
    assert sum(int(row["macs"]) for row in rows.values()) == result.macs
    with pytest.raises(ValueError, match="unknown metric"):
        result.by_module("flops")


# ------------------------------------------------------------------------ the model is untouched


HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs",
)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a counter could leave behind on a model."""
    modules = dict(model.named_modules())
    return {
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "buffers": [name for name, _ in model.named_buffers()],
        "training": {name: m.training for name, m in modules.items()},
        "hooks": {
            name: [dict(getattr(m, attr)) for attr in HOOK_DICTS]
            for name, m in modules.items()
        },
        "global_hooks": (
            dict(torch.nn.modules.module._global_forward_hooks),
            dict(torch.nn.modules.module._global_forward_pre_hooks),
        ),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["state_dict"].keys() == after["state_dict"].keys()
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), key
    for field in ("buffers", "training", "hooks", "global_hooks"):
        assert before[field] == after[field], field


def test_count_compute_leaves_a_training_model_as_it_was() -> None:
    block = ConvBN(3, 8, 3, act="relu")
    model = nn.Sequential(block, nn.Dropout(0.5)).train()
    block.bn.eval()  # a mixed state must come back as it was
    before = snapshot(model)
    result = count(model, 2, 3, 8, 8)
    assert_same(before, snapshot(model))  # BN running stats were not updated
    assert result.norm == 2 * 8 * 8 * 8


@pytest.fixture(scope="module")
def shufflenet() -> nn.Module:
    return archbench.create_model("shufflenetv2_x1_0", num_classes=1000)


IMAGE = (1, 3, 224, 224)


COUNTERS = [count_compute, fvcore_count, thop_count]


@pytest.mark.parametrize("counter", COUNTERS, ids=lambda f: f.__name__)
def test_counters_leave_model_untouched_and_print_nothing(
    shufflenet: nn.Module, counter: Callable[..., Any], capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    shufflenet.train()  # thop and our counter switch to eval for the pass: both must restore
    before = snapshot(shufflenet)
    caplog.set_level(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            counter(shufflenet, torch.randn(*IMAGE))
    finally:
        shufflenet.eval()
    before["training"] = {name: True for name in before["training"]}
    after = snapshot(shufflenet)
    after["training"] = {name: True for name in after["training"]}
    assert_same(before, after)
    assert capsys.readouterr() == ("", "")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert caught == []


# ----------------------------------------------------------------------------- ShuffleNetV2 x1.0


def hooked_conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Independent reference: forward hooks on every Conv2d/Linear, removed afterwards."""
    total = 0

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += out.numel() * per_output
        else:
            assert isinstance(module, nn.Linear)
            total += out.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert all(not layer._forward_hooks for layer in layers)
    return total


@pytest.fixture(scope="module")
def shufflenet_counts(shufflenet: nn.Module) -> dict[str, Any]:
    x = torch.randn(*IMAGE)
    return {
        "ours": count_compute(shufflenet, x),
        "reference": hooked_conv_linear_macs(shufflenet, x),
        "fvcore": fvcore_count(shufflenet, x),
        "thop": thop_count(shufflenet, x),
    }


def test_shufflenetv2_x1_0_macs(shufflenet_counts: dict[str, Any]) -> None:
    ours: ComputeCount = shufflenet_counts["ours"]
    assert ours.macs == shufflenet_counts["reference"] == 144_907_992
    assert 144.5e6 <= ours.macs <= 145.5e6  # torchvision: 0.145 GFLOPS (= GMACs); paper: 146M
    assert ours.unclassified_ops == frozenset()
    parts = ours.by_module("macs", depth=1)
    assert list(parts) == ["stem", "stage2", "stage3", "stage4", "conv5", "fc"]
    assert parts["stem"] == 24 * 112 * 112 * 3 * 3 * 3  # 3x3 s2, 3 -> 24
    assert parts["conv5"] == 1024 * 7 * 7 * 464
    assert parts["fc"] == 1024 * 1000
    assert sum(parts.values()) == ours.macs
    assert ours.pool == 24 * 112 * 112 + 1024 * 7 * 7  # max-pool input, global mean input


def test_fvcore_identities_on_shufflenetv2(shufflenet_counts: dict[str, Any]) -> None:
    ours: ComputeCount = shufflenet_counts["ours"]
    fv = shufflenet_counts["fvcore"]
    assert fv.conv_linear_macs == ours.macs
    # no adaptive_avg_pool2d (the classifier uses mean) and no upsample in this model
    assert fv.total - ours.macs == 2 * ours.norm == 3_900_400
    assert fv.breakdown == {
        "conv": ours.macs - 1_024_000, "linear": 1_024_000, "batch_norm": 2 * ours.norm,
    }
    assert fv.unsupported == {"aten::max_pool2d": 1, "aten::mean": 1}


def test_thop_identities_on_shufflenetv2(shufflenet_counts: dict[str, Any]) -> None:
    ours: ComputeCount = shufflenet_counts["ours"]
    th = shufflenet_counts["thop"]
    assert th.conv_linear_macs == ours.macs
    assert th.total - ours.macs == 4 * ours.norm == 7_800_800
    assert th.breakdown["BatchNorm2d"] == 4 * ours.norm
    assert th.breakdown["ReLU"] == th.breakdown["MaxPool2d"] == 0


# ----------------------------------------------------------------------------- PicoDet-S


@pytest.fixture(scope="module")
def picodet_s() -> nn.Module:
    return archbench.create_model("picodet_s")


def test_picodet_s_matches_published_flops(picodet_s: nn.Module) -> None:
    result = count_compute(picodet_s, torch.randn(1, 3, 320, 320))
    assert result.unclassified_ops == frozenset()
    assert list(result.by_module("macs", depth=1)) == ["backbone", "neck", "head"]
    ratio = 2 * result.macs / 0.73e9  # published "FLOPs" = 2 x MACs, 0.73G at 320
    assert ratio == pytest.approx(1.0, rel=0.05)


def test_cross_checker_identities_on_picodet_s(picodet_s: nn.Module) -> None:
    x = torch.randn(1, 3, 320, 320)
    ours = count_compute(picodet_s, x)
    fv, th = fvcore_count(picodet_s, x), thop_count(picodet_s, x)
    by_op = ours.elements_by_op
    pooled = by_op["aten.adaptive_avg_pool2d.default"]  # SE pools: input elements
    pooled_out = by_op["aten.hardsigmoid.default"]  # one SE gate per pooled channel
    assert fv.conv_linear_macs == th.conv_linear_macs == ours.macs
    assert fv.total - ours.macs == 2 * ours.norm + pooled + by_op["aten.upsample_nearest2d.vec"]
    assert th.total - ours.macs == 4 * ours.norm + pooled + pooled_out
    assert fv.unsupported["aten::hardswish"] == th.unsupported["Hardswish"] == 87


# ----------------------------------------------------------------------------- agreement, by module


def test_cross_checks_agree_module_by_module_on_conv_nets(
    shufflenet_counts: dict[str, Any], picodet_s: nn.Module,
) -> None:
    ours: ComputeCount = shufflenet_counts["ours"]
    for tool in ("fvcore", "thop"):
        agreed = agreement(shufflenet_counts[tool], ours)
        assert agreed.agrees and agreed.differences == () and agreed.ops == ()
        assert agreed.summary() == "conv/linear part agrees with archbench"
    x = torch.randn(1, 3, 320, 320)
    ours = count_compute(picodet_s, x)
    assert agreement(fvcore_count(picodet_s, x), ours).agrees
    assert agreement(thop_count(picodet_s, x), ours).agrees


class AttentionAndFunctional(nn.Module):
    """nn.MultiheadAttention (fast path under archbench), an F.linear and a bare matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(x, x, x, need_weights=False)[0]
        y = F.linear(y, self.fc.weight) @ self.fc.weight
        return self.fc(y)


def test_cross_checks_name_the_modules_and_ops_they_miss() -> None:
    B, L, E, h = 2, 5, 16, 4
    model, x = AttentionAndFunctional().eval(), torch.randn(B, L, E)
    ours = count_compute(model, x)
    projections = 4 * B * L * E * E  # Q, K, V and output projections
    matmuls = 2 * B * h * L * L * (E // h)  # Q K^T and softmax(.) V
    functional = 2 * B * L * E * E  # F.linear and the bare matmul
    assert ours.macs_by_module == {"attn": projections + matmuls, "": functional, "fc": B * L * E * E}

    fv = agreement(fvcore_count(model, x), ours)  # traced slow path: projections as linear, SDPA unsupported
    assert not fv.agrees and fv.tool_macs == ours.macs - matmuls
    assert [(d.module, d.archbench_macs, d.tool_macs) for d in fv.differences] == [
        ("attn", projections + matmuls, projections),
    ]
    assert fv.ops == ("aten._native_multi_head_attention.default",)
    assert fv.summary() == (
        f"conv/linear part differs from archbench by -{matmuls:,} MACs (-8.2%) in 1 module(s): attn "
        "(archbench counts there: aten._native_multi_head_attention.default)"
    )

    th = agreement(thop_count(model, x), ours)  # module hooks: nn.Linear only
    assert th.tool_macs == B * L * E * E
    assert [(d.module, d.tool_macs) for d in th.differences] == [("attn", 0), ("", 0)]
    assert th.ops == ("aten._native_multi_head_attention.default", "aten.linear.default", "aten.matmul.default")


def test_thop_miscounts_transposed_convolutions_and_agreement_says_where() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2))
    x = torch.randn(1, 3, 5, 5)
    ours = count_compute(model, x)
    assert ours.macs_by_module == {"0": 4 * 25 * 27, "1": 4 * 25 * 3 * 9}
    assert agreement(fvcore_count(model, x), ours).agrees
    th = agreement(thop_count(model, x), ours)
    assert [d.module for d in th.differences] == ["1"]
    assert th.ops == ("aten.conv_transpose2d.input",)
    assert th.differences[0].tool_macs == 6 * 11 * 11 * 2 * 9  # the forward formula on the output
