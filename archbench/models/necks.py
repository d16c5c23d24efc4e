"""Necks: every one is built from the backbone's declared ``out_channels`` and
``strides`` and declares its own, so any neck mounts on any backbone.

* ``CSPPAN``: PP-PicoDet's CSP-PAN (PaddleDetection ``ppdet/modeling/necks/csp_pan.py``).
* ``YOLOv5LitePAN``: the YOLOv5-Lite seed's PicoDet-style neck (YOLOv5 ``BottleneckCSP``
  with full 3x3 convs, ``DWConvblock`` downsampling, P6 from concat(P5, lateral)).
* ``FPN``: a plain baseline (1x1 laterals, nearest upsample and add, dw-separable smoothing).

Input resolutions must be multiples of the backbone's largest stride, so that
upsampled maps line up with the lateral ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from archbench.components import ComponentRegistry
from archbench.models.layers import ActName, ConvBN, DepthwiseSeparable, make_activation

ConvKind = Literal["dw", "dense"]

NECKS = ComponentRegistry[Callable[..., nn.Module]]("neck")
"""Necks by the name a detector spec gives (``neck = "csp_pan"``)."""


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _levels(num_levels: int, in_strides: Sequence[int]) -> tuple[bool, tuple[int, ...]]:
    """Whether the neck adds one stride-2 level above the backbone's, and its output strides."""
    n = len(in_strides)
    if num_levels not in (n, n + 1):
        raise ValueError(f"num_levels must be {n} or {n + 1}, got {num_levels}")
    extra = num_levels == n + 1
    return extra, (*in_strides, *((2 * in_strides[-1],) if extra else ()))


def _kxk(channels: int, kernel: int, stride: int, conv: ConvKind, act: ActName) -> nn.Module:
    """PicoDet's ``conv_func``: a DPModule, or a dense kxk ConvBN for the ``dense`` ablation."""
    if conv == "dw":
        return DepthwiseSeparable(channels, channels, kernel, stride, act=act)
    if conv == "dense":
        return ConvBN(channels, channels, kernel, stride, act=act)
    raise ValueError(f"conv must be 'dw' or 'dense', got {conv!r}")


class CSPLayer(nn.Module):
    """CSP layer of CSP-PAN: a main path (1x1, then 1x1 + kxk per block) beside a 1x1 shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, conv: ConvKind, act: ActName,
        num_blocks: int = 1,
    ) -> None:
        super().__init__()
        mid = out_channels // 2
        self.main = ConvBN(in_channels, mid, 1, act=act)
        self.blocks = nn.Sequential(
            *(nn.Sequential(ConvBN(mid, mid, 1, act=act), _kxk(mid, kernel, 1, conv, act))
              for _ in range(num_blocks))
        )
        self.short = ConvBN(in_channels, mid, 1, act=act)
        self.final = ConvBN(2 * mid, out_channels, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(torch.cat([self.blocks(self.main(x)), self.short(x)], dim=1))


@NECKS.register("csp_pan")
class CSPPAN(nn.Module):
    """CSP-PAN: 1x1 channel transform to ``channels``, top-down and bottom-up CSP paths,
    and (with ``num_levels = inputs + 1``) an extra level that sums two stride-2 convs."""

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        channels: int = 96,
        kernel: int = 5,
        conv: ConvKind = "dw",
        num_levels: int = 4,
        act: ActName = "hardswish",
    ) -> None:
        super().__init__()
        n = len(in_channels)
        self.extra, self.strides = _levels(num_levels, in_strides)
        self.transform = nn.ModuleList(ConvBN(c, channels, 1, act=act) for c in in_channels)
        self.top_down = nn.ModuleList(CSPLayer(2 * channels, channels, kernel, conv, act) for _ in range(n - 1))
        self.downsample = nn.ModuleList(_kxk(channels, kernel, 2, conv, act) for _ in range(n - 1))
        self.bottom_up = nn.ModuleList(CSPLayer(2 * channels, channels, kernel, conv, act) for _ in range(n - 1))
        if self.extra:
            self.extra_from_input = _kxk(channels, kernel, 2, conv, act)
            self.extra_from_output = _kxk(channels, kernel, 2, conv, act)
        self.out_channels: tuple[int, ...] = (channels,) * num_levels

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        reduced = [t(f) for t, f in zip(self.transform, features, strict=True)]
        inner = [reduced[-1]]
        for i in range(len(reduced) - 1, 0, -1):
            inner.insert(0, self.top_down[len(reduced) - 1 - i](torch.cat([_up2(inner[0]), reduced[i - 1]], 1)))
        outs = [inner[0]]
        for i in range(len(reduced) - 1):
            down = self.downsample[i](outs[-1])
            outs.append(self.bottom_up[i](torch.cat([down, inner[i + 1]], 1)))
        if self.extra:
            outs.append(self.extra_from_input(reduced[-1]) + self.extra_from_output(outs[-1]))
        return outs


class YOLOConv(ConvBN):
    """YOLOv5's ``Conv``: ConvBN with SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, act="silu")


class BottleneckCSP(nn.Module):
    """YOLOv5's ``BottleneckCSP(c1, c2, n=1, shortcut=False)``: full 3x3 bottlenecks,
    a plain 1x1 shortcut conv, BN + LeakyReLU(0.1) after the concat."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 1) -> None:
        super().__init__()
        mid = out_channels // 2
        self.cv1 = YOLOConv(in_channels, mid)
        self.cv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.cv3 = nn.Conv2d(mid, mid, 1, bias=False)
        self.cv4 = YOLOConv(2 * mid, out_channels)
        self.bn = nn.BatchNorm2d(2 * mid)
        self.act = make_activation("leaky_relu_0.1")
        self.m = nn.Sequential(
            *(nn.Sequential(YOLOConv(mid, mid, 1), YOLOConv(mid, mid, 3)) for _ in range(num_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.cv3(self.m(self.cv1(x))), self.cv2(x)], dim=1)
        return self.cv4(self.act(self.bn(y)))


@NECKS.register("yolov5lite_pan")
class YOLOv5LitePAN(nn.Module):
    """The seed's neck, from its yaml (the yaml's layer numbers are in the comments).

    ``widths`` are the six output widths the yaml gives its CSP blocks and the P6
    DWConvblock: (csp5, csp4, P3, P4, P5, P6) = 232/116/116/116/232/464. Each
    lateral 1x1 Conv is as wide as the CSP block it feeds.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        widths: Sequence[int] = (232, 116, 116, 116, 232, 464),
        kernel: int = 5,
        num_levels: int = 4,
        act: ActName = "relu",
    ) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(widths) != 6:
            raise ValueError("yolov5lite_pan needs three backbone levels and six widths")
        self.extra, self.strides = _levels(num_levels, in_strides)
        c3, c4, c5 = in_channels
        w5, w4, w3, wp4, wp5, wp6 = widths
        self.lateral5 = YOLOConv(c5, w5)  # 7
        self.csp5 = BottleneckCSP(w5 + c5, w5)  # 8-9: cat(lateral5, C5)
        self.lateral4 = YOLOConv(w5, w4)  # 10
        self.csp4 = BottleneckCSP(w4 + c4, w4)  # 11-13: upsample, cat C4
        self.lateral3 = YOLOConv(w4, w3)  # 14
        self.csp3 = BottleneckCSP(w3 + c3, w3)  # 15-17: upsample, cat C3 -> P3
        self.down3 = DepthwiseSeparable(w3, wp4, kernel, 2, act=act)  # 18
        self.pan4 = BottleneckCSP(wp4 + w3, wp4)  # 19-20: cat lateral3 -> P4
        self.down4 = DepthwiseSeparable(wp4, wp5, kernel, 2, act=act)  # 21
        self.pan5 = BottleneckCSP(wp5 + w4, wp5)  # 22-23: cat lateral4 -> P5
        if self.extra:
            self.down5 = DepthwiseSeparable(wp5 + w5, wp6, kernel, 2, act=act)  # 24-25: cat lateral5 -> P6
        self.out_channels: tuple[int, ...] = (w3, wp4, wp5, *((wp6,) if self.extra else ()))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = features
        lat5 = self.lateral5(c5)
        lat4 = self.lateral4(self.csp5(torch.cat([lat5, c5], 1)))
        lat3 = self.lateral3(self.csp4(torch.cat([_up2(lat4), c4], 1)))
        p3 = self.csp3(torch.cat([_up2(lat3), c3], 1))
        p4 = self.pan4(torch.cat([self.down3(p3), lat3], 1))
        p5 = self.pan5(torch.cat([self.down4(p4), lat4], 1))
        outs = [p3, p4, p5]
        if self.extra:
            outs.append(self.down5(torch.cat([p5, lat5], 1)))
        return outs


@NECKS.register("fpn")
class FPN(nn.Module):
    """Plain FPN baseline: 1x1 laterals to ``channels``, nearest upsample + add,
    dw-separable kxk smoothing; an extra stride-2 level from the top output."""

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        channels: int = 96,
        kernel: int = 3,
        num_levels: int = 4,
        act: ActName = "hardswish",
    ) -> None:
        super().__init__()
        n = len(in_channels)
        self.extra, self.strides = _levels(num_levels, in_strides)
        self.lateral = nn.ModuleList(ConvBN(c, channels, 1, act=act) for c in in_channels)
        self.smooth = nn.ModuleList(DepthwiseSeparable(channels, channels, kernel, 1, act=act) for _ in range(n))
        if self.extra:
            self.extra_down = DepthwiseSeparable(channels, channels, kernel, 2, act=act)
        self.out_channels: tuple[int, ...] = (channels,) * num_levels

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up2(laterals[i])
        outs = [s(x) for s, x in zip(self.smooth, laterals, strict=True)]
        if self.extra:
            outs.append(self.extra_down(outs[-1]))
        return outs
