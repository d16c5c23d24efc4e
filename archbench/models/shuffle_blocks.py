"""The ShuffleNetV2-style body shared by ESNet and ShuffleNetV2.

Both networks are a stride-4 stem followed by three stages whose first block
halves the resolution. They differ only in data, which ``BlockStyle`` carries:

* the stride-1 branch: ``"dw"`` (ShuffleNetV2's 1x1 -> dw 3x3 -> 1x1) or
  ``"ghost"`` (ESNet's primary 1x1 + cheap dw 3x3, concatenated);
* SE on the branch, or not;
* after the stride-2 concat: channel shuffle (ShuffleNetV2) or a depthwise
  3x3 + pointwise 1x1 fusion (ESNet);
* the activation in each slot (Hardswish, ReLU, SiLU in the YOLOv5-Lite seed).

So "ESNet with the DW branch" and "ShuffleNetV2 with SE" are the same code
with other arguments, never copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from archbench.models.layers import ActName, ConvBN, GhostModule, SqueezeExcite, channel_shuffle

Branch = Literal["ghost", "dw"]
BRANCHES: tuple[str, ...] = ("ghost", "dw")


@dataclass(frozen=True)
class BlockStyle:
    """How the blocks of one network are made.

    Attributes:
        act: Activation of every ConvBN not named below (and of the stem).
        branch: Stride-1 branch form, ``"ghost"`` or ``"dw"``.
        se: Squeeze-excite on the branch of every block.
        fuse: After the stride-2 concat, dw 3x3 + pw 1x1 (ESNet) instead of a shuffle.
        ghost_act: Activation of the ghost branch's primary 1x1 (default ``act``).
        cheap_act: Activation of the ghost branch's cheap dw 3x3 (ESNet: none).
        down_expand_act: Activation of the stride-2 branch's first 1x1 (default ``act``).
        fuse_dw_act: Activation of the fusion dw 3x3 (default ``act``).
    """

    act: ActName
    branch: Branch
    se: bool
    fuse: bool
    ghost_act: ActName | None = None
    cheap_act: ActName | None = None
    down_expand_act: ActName | None = None
    fuse_dw_act: ActName | None = None

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")


def _default(value: ActName | None, fallback: ActName) -> ActName:
    return fallback if value is None else value


class SplitBlock(nn.Module):
    """Stride-1 block: split channels, transform one half, concat, shuffle.

    ``mid`` is the branch's inner width: ESNet's NAS ``mid`` channels, or
    ``channels / 2`` for ShuffleNetV2.
    """

    def __init__(self, channels: int, mid: int, style: BlockStyle) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"SplitBlock needs an even channel count, got {channels}")
        half = channels // 2
        if style.branch == "ghost":
            self.expand: nn.Module = GhostModule(
                half, mid, act=_default(style.ghost_act, style.act), cheap_act=style.cheap_act
            )
        else:
            self.expand = nn.Sequential(ConvBN(half, mid, 1, act=style.act), ConvBN.dw(mid, 3))
        self.se = SqueezeExcite(mid) if style.se else nn.Identity()
        self.project = ConvBN(mid, half, 1, act=style.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        out = torch.cat([kept, self.project(self.se(self.expand(transformed)))], dim=1)
        return channel_shuffle(out, 2)


class DownBlock(nn.Module):
    """Stride-2 block: two branches on the full input, concatenated.

    The second branch is ``mid / 2`` wide (ShuffleNetV2: ``mid = out``).
    """

    def __init__(self, in_channels: int, mid: int, out_channels: int, style: BlockStyle) -> None:
        super().__init__()
        if out_channels % 2 or mid % 2:
            raise ValueError(f"DownBlock needs even mid/out channels, got {mid}/{out_channels}")
        half, branch = out_channels // 2, mid // 2
        self.shortcut = nn.Sequential(
            ConvBN.dw(in_channels, 3, 2), ConvBN(in_channels, half, 1, act=style.act)
        )
        self.expand = ConvBN(in_channels, branch, 1, act=_default(style.down_expand_act, style.act))
        self.dw = ConvBN.dw(branch, 3, 2)
        self.se = SqueezeExcite(branch) if style.se else nn.Identity()
        self.project = ConvBN(branch, half, 1, act=style.act)
        self.fuse = (
            nn.Sequential(
                ConvBN.dw(out_channels, 3, act=_default(style.fuse_dw_act, style.act)),
                ConvBN(out_channels, out_channels, 1, act=style.act),
            )
            if style.fuse
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.project(self.se(self.dw(self.expand(x))))
        out = torch.cat([self.shortcut(x), branch], dim=1)
        return self.fuse(out) if self.fuse is not None else channel_shuffle(out, 2)


class ShuffleStyleNet(nn.Module):
    """Stem (3x3 s2 + max-pool), three stages, and optionally an ImageNet classifier tail.

    ``style`` is one ``BlockStyle`` for every stage, or one per stage (ESNet's search
    space switches SE per stage).

    As a backbone (``num_classes=None``) the forward returns the last feature of
    each stage: C3, C4, C5 at strides 8, 16, 32, declared in ``out_channels``
    and ``strides`` so that necks never repeat channel numbers.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        stage_repeats: Sequence[int],
        mids: Sequence[int],
        style: BlockStyle | Sequence[BlockStyle],
        stem_channels: int = 24,
        num_classes: int | None = None,
        conv5_channels: int = 1024,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(stage_repeats):
            raise ValueError("stage_channels and stage_repeats must have the same length")
        if len(mids) != sum(stage_repeats):
            raise ValueError(f"need one mid per block ({sum(stage_repeats)}), got {len(mids)}")
        styles = [style] * len(stage_channels) if isinstance(style, BlockStyle) else list(style)
        if len(styles) != len(stage_channels):
            raise ValueError(f"need one block style per stage ({len(stage_channels)}), got {len(styles)}")
        self.stem = nn.Sequential(
            ConvBN(3, stem_channels, 3, 2, act=styles[0].act), nn.MaxPool2d(3, 2, 1)
        )
        self.stage_names: tuple[str, ...] = tuple(f"stage{i + 2}" for i in range(len(stage_channels)))
        in_channels, block = stem_channels, 0
        for name, channels, repeats, stage_style in zip(
            self.stage_names, stage_channels, stage_repeats, styles, strict=True
        ):
            blocks: list[nn.Module] = [DownBlock(in_channels, mids[block], channels, stage_style)]
            blocks += [SplitBlock(channels, mids[block + i], stage_style) for i in range(1, repeats)]
            self.add_module(name, nn.Sequential(*blocks))
            in_channels, block = channels, block + repeats
        self.out_channels: tuple[int, ...] = tuple(stage_channels)
        self.strides: tuple[int, ...] = tuple(2 ** (i + 3) for i in range(len(stage_channels)))
        self.num_classes = num_classes
        if num_classes is not None:
            self.conv5 = ConvBN(in_channels, conv5_channels, 1, act=styles[-1].act)
            self.fc = nn.Linear(conv5_channels, num_classes)

    def parts(self) -> dict[str, nn.Module]:
        """Named top-level pieces, in forward order, covering every parameter."""
        named = {"stem": self.stem, **{n: getattr(self, n) for n in self.stage_names}}
        if self.num_classes is not None:
            named.update(conv5=self.conv5, fc=self.fc)
        return named

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x)
        if self.num_classes is None:
            return features
        return self.fc(self.conv5(x).mean((2, 3)))
