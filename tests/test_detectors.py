"""Necks, heads and whole detectors (docs/reference.md sections 5-8)."""

from __future__ import annotations

import math

import pytest
import torch

import archbench
from archbench.models.detector import Detector
from tests.conftest import built, n_params

# Published PP-PicoDet params (M), 2021 model zoo; Paddle's count includes 4 ScaleReg scalars.
PUBLISHED_M = {"picodet_s": 0.99, "picodet_m": 2.15, "picodet_l": 3.30, "picodet_shufflenetv2": 1.17}
PADDLE_SCALE_SCALARS = 4
EXACT = {"picodet_s": 992_715, "picodet_m": 2_152_554, "picodet_l": 3_305_009, "picodet_shufflenetv2": 1_178_916}


@pytest.mark.parametrize("name", PUBLISHED_M)
def test_picodet_params_reproduce_published_size(name: str) -> None:
    count = n_params(built(name))
    assert count == EXACT[name]
    # The model zoo prints millions truncated to two decimals (3.305M -> 3.30, 1.179M -> 1.17).
    assert math.floor((count + PADDLE_SCALE_SCALARS) / 1e4) / 100 == PUBLISHED_M[name]


def _conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    return cin // groups * cout * k * k + 2 * cout


def _dp(c: int, k: int) -> int:
    return _conv_bn(c, c, k, c) + _conv_bn(c, c)


def _csp_pan(in_channels: tuple[int, ...], c: int, k: int = 5) -> int:
    mid = c // 2
    csp = 2 * _conv_bn(2 * c, mid) + _conv_bn(mid, mid) + _dp(mid, k) + _conv_bn(2 * mid, c)
    transform = sum(_conv_bn(ci, c) for ci in in_channels)
    return transform + 4 * csp + 2 * _dp(c, k) + 2 * _dp(c, k)  # 2 top-down + 2 bottom-up, 2 down, 2 P6


def _pico_head(c: int, convs: int, levels: int = 4, classes: int = 80, k: int = 5) -> int:
    return levels * (convs * _dp(c, k) + c * (classes + 32) + classes + 32)


@pytest.mark.parametrize(("name", "c", "convs"), [("picodet_s", 96, 2), ("picodet_m", 128, 4), ("picodet_l", 160, 4)])
def test_neck_and_head_params_by_hand(name: str, c: int, convs: int) -> None:
    model = built(name)
    assert n_params(model.neck) == _csp_pan(model.backbone.out_channels, c)
    assert n_params(model.head) == _pico_head(c, convs)


@pytest.mark.parametrize(
    ("resolution", "sizes"), [(320, [40, 20, 10, 5]), (416, [52, 26, 13, 7]), (640, [80, 40, 20, 10])]
)
def test_picodet_output_shapes(resolution: int, sizes: list[int]) -> None:
    model = built("picodet_s")
    with torch.inference_mode():
        outs = model(torch.zeros(2, 3, resolution, resolution))
    assert [tuple(o.shape) for o in outs] == [(2, 112, s, s) for s in sizes]
    assert model.strides == (8, 16, 32, 64)


def test_picodet_m_forward_at_416_returns_four_levels() -> None:
    model = archbench.create_model("picodet_m")
    assert isinstance(model, Detector)
    with torch.inference_mode():
        outs = model(torch.zeros(1, 3, 416, 416))
    assert len(outs) == 4 and outs[0].shape == (1, 112, 52, 52)


def test_parts_cover_every_parameter() -> None:
    model = built("picodet_m")
    parts = model.parts()
    assert list(parts) == ["backbone", "neck", "head"]
    assert sum(n_params(p) for p in parts.values()) == n_params(model)
    stages = model.backbone.parts()
    assert list(stages) == ["stem", "stage2", "stage3", "stage4"]
    assert sum(n_params(p) for p in stages.values()) == n_params(model.backbone)


@pytest.mark.parametrize("backbone", ["esnet_s", "shufflenetv2_x0_5", "esnet_yolov5lite"])
@pytest.mark.parametrize(("neck", "extra"), [("csp_pan", {"neck_channels": 64}), ("fpn", {"neck_channels": 64}),
                                             ("yolov5lite_pan", {"neck_channels": None, "head_channels": 64})])
def test_every_neck_mounts_on_every_backbone_family(backbone: str, neck: str, extra: dict[str, int | None]) -> None:
    model = archbench.create_model("picodet_s", backbone=backbone, neck=neck, **extra)
    with torch.inference_mode():
        outs = model(torch.zeros(2, 3, 320, 320))
    assert [o.shape[-1] for o in outs] == [40, 20, 10, 5]
    assert all(o.shape[:2] == (2, 112) for o in outs)


def test_neck_ablations() -> None:
    k3, base = built("picodet_s.k3"), built("picodet_s")
    # 5x5 -> 3x3 removes 16 weights per channel of every depthwise kernel in neck and head.
    dw5 = [m for m in base.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (5, 5)]
    assert n_params(base) - n_params(k3) == sum(16 * m.out_channels for m in dw5)
    assert n_params(built("picodet_s.l3").neck) == n_params(base.neck) - 2 * _dp(96, 5)
    dense = built("picodet_s.dense")
    assert not any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in dense.neck.modules())
    with torch.inference_mode():
        assert len(built("picodet_s.l3")(torch.zeros(1, 3, 320, 320))) == 3


def test_seed_detector_is_anchor_based_with_seed_widths() -> None:
    model = built("picodet_yolov5lite")
    assert model.neck.out_channels == (116, 116, 232, 464)
    with torch.inference_mode():
        outs = model(torch.zeros(1, 3, 416, 416))
    assert [tuple(o.shape[1:]) for o in outs] == [(4 * 85, s, s) for s in (52, 26, 13, 7)]


def test_detector_overrides_route_to_parts() -> None:
    model = archbench.create_model("picodet_s", num_classes=20, se=False)
    assert model.head.predict[0].out_channels == 20 + 32
    assert n_params(model.backbone) == n_params(built("esnet_s.nose"))
    with pytest.raises(archbench.ArchbenchError, match="neck 'fpn' does not take conv"):
        archbench.create_model("esnet_m_fpn", neck_conv="dense")


@pytest.mark.parametrize("name", ["picodet_s", "picodet_shufflenetv2", "picodet_yolov5lite", "esnet_m_fpn"])
def test_detectors_have_no_dead_parameters(name: str) -> None:
    model = archbench.create_model(name)
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
