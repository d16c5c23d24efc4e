"""Detection heads, inference graph only: no losses, label assignment, box
decoding or NMS. Latency measured through them is model-forward latency, as
PP-PicoDet's and YOLOv5-Lite's published numbers are.

* ``PicoHead``: PP-PicoDet's 2021 head (PaddleDetection ``ppdet/modeling/heads/pico_head.py``
  at commit 7d625608): one tower per level, shared by classification and
  regression, then one 1x1 conv to ``num_classes + 4 (reg_max + 1)`` channels.
* ``YOLODetect``: YOLOv5's anchor-based ``Detect``: a 1x1 conv per level to
  ``num_anchors (num_classes + 5)`` channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from archbench.components import ComponentRegistry
from archbench.models.layers import ActName, DepthwiseSeparable

HEADS = ComponentRegistry[Callable[..., nn.Module]]("head")
"""Heads by the name a detector spec gives (``head = "pico_head"``)."""


@HEADS.register("pico_head")
class PicoHead(nn.Module):
    """Per level: ``num_convs`` x (dw kxk + BN + act, pw 1x1 + BN + act) at width ``channels``,
    then a biased 1x1 conv. Paddle's four learnable ``ScaleReg`` scalars are not
    built: they only rescale box regression during decoding."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 96,
        num_convs: int = 2,
        num_classes: int = 80,
        reg_max: int = 7,
        kernel: int = 5,
        act: ActName = "hardswish",
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            nn.Sequential(
                *(DepthwiseSeparable(c if i == 0 else channels, channels, kernel, 1, act=act)
                  for i in range(num_convs))
            )
            for c in in_channels
        )
        self.out_channels_per_level = num_classes + 4 * (reg_max + 1)
        self.predict = nn.ModuleList(
            nn.Conv2d(channels if num_convs else c, self.out_channels_per_level, 1) for c in in_channels
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [p(t(f)) for t, p, f in zip(self.towers, self.predict, features, strict=True)]


@HEADS.register("yolo_detect")
class YOLODetect(nn.Module):
    """YOLOv5 ``Detect`` without the grid decoding: raw ``na (nc + 5)``-channel maps."""

    def __init__(self, in_channels: Sequence[int], num_anchors: int = 3, num_classes: int = 80) -> None:
        super().__init__()
        self.out_channels_per_level = num_anchors * (num_classes + 5)
        self.predict = nn.ModuleList(nn.Conv2d(c, self.out_channels_per_level, 1) for c in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [p(f) for p, f in zip(self.predict, features, strict=True)]
