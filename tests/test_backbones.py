"""Fidelity of the ESNet and ShuffleNetV2 families (docs/reference.md sections 2-4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archbench
from archbench.models.layers import SqueezeExcite
from archbench.models.shuffle_blocks import DownBlock, SplitBlock
from tests.conftest import built, n_params

TORCHVISION_PARAMS = {
    "shufflenetv2_x0_5": 1_366_792,
    "shufflenetv2_x1_0": 2_278_604,
    "shufflenetv2_x1_5": 3_503_624,
    "shufflenetv2_x2_0": 7_393_996,
}

ESNET_WIDTHS = {"esnet_s": (96, 192, 384), "esnet_m": (128, 256, 512), "esnet_l": (160, 320, 640)}
ESNET_MIDS = {
    "esnet_s": [88, 48, 48, 96, 120, 96, 120, 96, 96, 96, 192, 192, 192],
    "esnet_m": [112, 64, 128, 160, 128, 192, 160, 160, 128, 160, 512, 320, 384],
    "esnet_l": [144, 80, 160, 200, 160, 240, 200, 200, 160, 200, 640, 400, 480],
}
BACKBONES = [*ESNET_WIDTHS, *TORCHVISION_PARAMS, "esnet_yolov5lite"]


def block_mids(model: nn.Module) -> list[int]:
    """The inner width of every block, read off the built modules."""
    mids = []
    for module in model.modules():
        if isinstance(module, SplitBlock):
            mids.append(module.project.conv.in_channels)
        elif isinstance(module, DownBlock):
            mids.append(2 * module.project.conv.in_channels)
    return mids


@pytest.mark.parametrize(("name", "expected"), TORCHVISION_PARAMS.items())
def test_shufflenetv2_classifier_matches_torchvision_to_the_unit(name: str, expected: int) -> None:
    assert n_params(archbench.create_model(name, num_classes=1000)) == expected


@pytest.mark.parametrize("name", ["esnet_m", "esnet_yolov5lite", "shufflenetv2_x0_5.se"])
def test_classifier_form(name: str) -> None:
    model = archbench.create_model(name, num_classes=10)
    backbone = built(name)
    c5 = backbone.out_channels[-1]
    # conv5 1x1 (c5 -> 1024) + BN, then FC 1024 -> 10, on top of the backbone
    assert n_params(model) - n_params(backbone) == c5 * 1024 + 2 * 1024 + 1024 * 10 + 10
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 10)


@pytest.mark.parametrize("name", ESNET_WIDTHS)
def test_esnet_widths_and_mid_channels(name: str) -> None:
    model = built(name)
    assert model.out_channels == ESNET_WIDTHS[name]
    assert model.strides == (8, 16, 32)
    assert block_mids(model) == ESNET_MIDS[name]
    assert [len(getattr(model, s)) for s in model.stage_names] == [3, 7, 3]
    assert all(isinstance(m, nn.Hardswish) for m in model.modules() if isinstance(m, nn.ReLU | nn.Hardswish)
               and not _inside_se(model, m))


def _inside_se(model: nn.Module, target: nn.Module) -> bool:
    return any(target is sub for se in model.modules() if isinstance(se, SqueezeExcite) for sub in se.modules())


@pytest.mark.parametrize("resolution", [320, 416, 640])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_outputs_c3_c4_c5(name: str, resolution: int) -> None:
    model = built(name)
    with torch.inference_mode():
        outs = model(torch.zeros(2, 3, resolution, resolution))
    expected = [(2, c, -(-resolution // s), -(-resolution // s)) for c, s in zip(model.out_channels, model.strides, strict=False)]
    assert [tuple(o.shape) for o in outs] == expected


def se_params(model: nn.Module) -> int:
    return sum(n_params(m) for m in model.modules() if isinstance(m, SqueezeExcite))


@pytest.mark.parametrize("name", ESNET_WIDTHS)
def test_esnet_without_se_removes_exactly_the_se_parameters(name: str) -> None:
    base, nose = built(name), built(f"{name}.nose")
    assert se_params(base) > 0 and se_params(nose) == 0
    assert n_params(base) - n_params(nose) == se_params(base)
    assert set(base.state_dict()) - set(nose.state_dict()) == {k for k in base.state_dict() if ".se." in k}
    assert set(nose.state_dict()) <= set(base.state_dict())


def test_shufflenetv2_with_se_adds_exactly_se_on_every_branch() -> None:
    base, with_se = built("shufflenetv2_x1_0"), built("shufflenetv2_x1_0.se")
    # SE(c) = 2 biased 1x1 convs c -> c/4 -> c; stride-1 branches are 58/116/232 wide,
    # stride-2 branches likewise (out/2).
    def se(c: int) -> int:
        return c * (c // 4) + c // 4 + (c // 4) * c + c
    expected = sum(n * se(c) for c, n in [(58, 4), (116, 8), (232, 4)])
    assert n_params(with_se) - n_params(base) == expected


def test_ghost_vs_dw_branch_changes_only_stride1_expand() -> None:
    ghost, dw = built("esnet_m"), built("esnet_m.dw")
    differing = set(ghost.state_dict()) ^ set(dw.state_dict())
    assert differing and all(".expand." in k for k in differing)
    split_keys = {k for k in differing if k.split(".")[1] != "0"}  # never in a stage's first (stride-2) block
    assert split_keys == differing
    # ghost: 1x1 c/2 -> mid/2 and dw 3x3 on mid/2; dw: 1x1 c/2 -> mid and dw 3x3 on mid.
    mids = [m for m in ESNET_MIDS["esnet_m"]]
    halves = [64] * 3 + [128] * 7 + [256] * 3
    firsts = {0, 3, 10}
    ghost_expand = sum(h * (m // 2) + 2 * (m // 2) + 9 * (m // 2) + 2 * (m // 2)
                       for i, (h, m) in enumerate(zip(halves, mids, strict=False)) if i not in firsts)
    dw_expand = sum(h * m + 2 * m + 9 * m + 2 * m for i, (h, m) in enumerate(zip(halves, mids, strict=False)) if i not in firsts)
    assert n_params(dw) - n_params(ghost) == dw_expand - ghost_expand


def test_activation_override_replaces_every_block_activation() -> None:
    relu = built("esnet_s.relu")
    assert not any(isinstance(m, nn.Hardswish) for m in relu.modules())
    assert n_params(relu) == n_params(built("esnet_s"))
    silu = archbench.create_model("shufflenetv2_x0_5", act="silu")
    assert not any(isinstance(m, nn.ReLU) for m in silu.modules())


def _seed_expected_params() -> int:
    """Parameter count of the YOLOv5-Lite seed's ES_Bottleneck stack, counting only the
    branches its forward uses (stride 1: branch3; stride 2: branch1, branch2, branch4)."""
    def conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
        return cin // groups * cout * k * k + 2 * cout

    def se(c: int) -> int:
        return 2 * c * (c // 4) + c // 4 + c

    total, cin = conv_bn(3, 24, 3), 24
    for out, repeats in [(116, 3), (232, 7), (464, 3)]:
        bf = out // 2
        total += conv_bn(cin, cin, 3, cin) + conv_bn(cin, bf)  # branch1
        total += conv_bn(cin, bf) + conv_bn(bf, bf, 3, bf) + se(bf) + conv_bn(bf, bf)  # branch2
        total += conv_bn(out, out, 3, out) + conv_bn(out, out)  # branch4
        for _ in range(repeats - 1):  # branch3: GhostConv(bf, bf) + SE + 1x1
            total += conv_bn(bf, bf // 2) + conv_bn(bf // 2, bf // 2, 3, bf // 2) + se(bf) + conv_bn(bf, bf)
        cin = out
    return total


def test_seed_esnet_matches_seed_structure() -> None:
    model = built("esnet_yolov5lite")
    assert n_params(model) == _seed_expected_params()
    assert model.out_channels == (116, 232, 464)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())


@pytest.mark.parametrize("name", [*BACKBONES, "esnet_m.dw", "shufflenetv2_x1_0.se", "shufflenetv2_x1_0.ghost"])
def test_no_dead_parameters(name: str) -> None:
    model = archbench.create_model(name)
    outs = model(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_create_model_returns_eval_cpu_module_and_checks_overrides() -> None:
    model = archbench.create_model("esnet_s", se=False)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    with pytest.raises(archbench.ArchbenchError, match="unknown argument 'width'"):
        archbench.create_model("esnet_s", width=3)
    with pytest.raises(archbench.ArchbenchError, match="argument 'se'='no' must be bool"):
        archbench.create_model("esnet_s", se="no")
    with pytest.raises(archbench.ArchbenchError, match="argument 'branch'='conv'"):
        archbench.create_model("esnet_s", branch="conv")
    with pytest.raises(archbench.ArchbenchError, match="unknown activation 'gelu'"):
        archbench.create_model("esnet_s", act="gelu")
