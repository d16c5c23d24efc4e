"""Small building blocks shared by every architecture, one home each.

Conventions follow docs/reference.md section 1: ``ConvBN`` is a bias-free conv,
BatchNorm, then an optional activation; padding is always (k - 1) / 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from archbench.components import ComponentRegistry

ActName = str  # "hardswish" | "relu" | "silu" | "leaky_relu" | "none"

ACTIVATIONS = ComponentRegistry[Callable[[], nn.Module]]("activation")
ACTIVATIONS.register("hardswish", nn.Hardswish)
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("silu", nn.SiLU)
ACTIVATIONS.register("leaky_relu", nn.LeakyReLU)  # PyTorch's and Paddle's default slope, 0.01
ACTIVATIONS.register("leaky_relu_0.1", lambda: nn.LeakyReLU(0.1))  # YOLOv5's BottleneckCSP
ACTIVATIONS.register("hardsigmoid", nn.Hardsigmoid)
ACTIVATIONS.register("none", nn.Identity)


def make_activation(name: ActName | None) -> nn.Module:
    """An activation module by name; ``None`` or ``"none"`` gives ``nn.Identity``."""
    return ACTIVATIONS.get("none" if name is None else name)()


def make_divisible(value: float, divisor: int = 16) -> int:
    """Round to the nearest multiple of ``divisor``, never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional activation.

    Args:
        groups: ``in_channels`` for a depthwise conv (see ``ConvBN.dw``).
        act: activation name, or ``None`` for none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: ActName | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride,
            padding=(kernel_size - 1) // 2, groups=groups, bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if act not in (None, "none"):
            self.act = make_activation(act)

    @classmethod
    def dw(cls, channels: int, kernel_size: int = 3, stride: int = 1, act: ActName | None = None) -> ConvBN:
        """A depthwise ConvBN."""
        return cls(channels, channels, kernel_size, stride, groups=channels, act=act)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise kxk ConvBN + act, then pointwise 1x1 ConvBN + act.

    PP-PicoDet's ``DPModule`` and YOLOv5-Lite's ``DWConvblock`` (with ReLU) are this.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
        act: ActName | None = "hardswish",
    ) -> None:
        super().__init__()
        self.dw = ConvBN.dw(in_channels, kernel_size, stride, act=act)
        self.pw = ConvBN(in_channels, out_channels, 1, act=act)


class SqueezeExcite(nn.Module):
    """SE as in ESNet: avg pool -> 1x1 (bias) c -> c/r -> ReLU -> 1x1 (bias) -> Hardsigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(channels // reduction, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * scale


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (ShuffleNet)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class GhostModule(nn.Module):
    """Primary 1x1 ConvBN to ``out/2``, cheap depthwise 3x3 on it, concatenated to ``out``.

    ESNet's cheap op has no activation; YOLOv5-Lite's ``GhostConv`` uses SiLU on both.
    """

    def __init__(
        self, in_channels: int, out_channels: int, act: ActName | None, cheap_act: ActName | None,
    ) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"GhostModule needs an even out_channels, got {out_channels}")
        self.primary = ConvBN(in_channels, out_channels // 2, 1, act=act)
        self.cheap = ConvBN.dw(out_channels // 2, 3, act=cheap_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        return torch.cat([primary, self.cheap(primary)], dim=1)
