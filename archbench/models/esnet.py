"""ESNet, the "Enhanced ShuffleNet" backbone of PP-PicoDet (Yu et al., "PP-PicoDet:
A Better Real-Time Object Detector on Mobile Devices", arXiv 2111.00902).

Reference implementation: PaddleDetection ``ppdet/modeling/backbones/esnet.py``.
Also builds the YOLOv5-Lite reproduction of ESNet (ppogg/YOLOv5-Lite
``models/common.py``, ``ES_Bottleneck``), which has no NAS channel ratios and
other activations; see docs/reference.md section 3 and README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from archbench.models.layers import make_divisible
from archbench.models.shuffle_blocks import BlockStyle, Branch, ShuffleStyleNet

STAGE_REPEATS = (3, 7, 3)
BASE_STAGE_CHANNELS = (128, 256, 512)


def esnet_mids(
    stage_channels: Sequence[int], stage_repeats: Sequence[int], channel_ratio: Sequence[float] | None
) -> list[int]:
    """Inner width of every block.

    With PP-PicoDet's NAS ratios: ``make_divisible(int(stage_out * ratio), 8)``.
    Without (the YOLOv5-Lite seed): stride-2 blocks act as ratio 1.0, stride-1 as 0.5.
    """
    outs = [c for c, n in zip(stage_channels, stage_repeats, strict=True) for _ in range(n)]
    if channel_ratio is None:
        firsts = {sum(stage_repeats[:i]) for i in range(len(stage_repeats))}
        return [c if i in firsts else c // 2 for i, c in enumerate(outs)]
    if len(channel_ratio) != len(outs):
        raise ValueError(f"channel_ratio needs {len(outs)} values, got {len(channel_ratio)}")
    return [make_divisible(int(c * r), 8) for c, r in zip(outs, channel_ratio, strict=True)]


def build_esnet(
    scale: float | None = None,
    channel_ratio: Sequence[float] | None = None,
    stage_channels: Sequence[int] | None = None,
    act: str = "hardswish",
    se: bool | Sequence[bool] = True,
    branch: Branch = "ghost",
    ghost_act: str | None = None,
    cheap_act: str | None = None,
    down_expand_act: str | None = None,
    fuse_dw_act: str | None = None,
    stage_repeats: Sequence[int] = STAGE_REPEATS,
    num_classes: int | None = None,
    conv5_channels: int = 1024,
) -> ShuffleStyleNet:
    """ESNet backbone (or classifier when ``num_classes`` is given).

    Args:
        scale: Width scale; stage widths are ``make_divisible(base * scale, 16)``.
        channel_ratio: The 13 NAS ratios, or ``None`` for the seed's fixed widths.
        stage_channels: Explicit stage widths instead of ``scale``.
        se: Squeeze-excite in every block, or one flag per stage (``[true, false, true]``).
    """
    if (scale is None) == (stage_channels is None):
        raise ValueError("give exactly one of scale and stage_channels")
    if stage_channels is None:
        assert scale is not None
        stage_channels = [make_divisible(c * scale, 16) for c in BASE_STAGE_CHANNELS]
    style = BlockStyle(
        act=act, branch=branch, se=True, fuse=True, ghost_act=ghost_act,
        cheap_act=cheap_act, down_expand_act=down_expand_act, fuse_dw_act=fuse_dw_act,
    )
    flags = [se] * len(stage_repeats) if isinstance(se, bool) else list(se)
    if len(flags) != len(stage_repeats) or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"se needs true/false or one true/false per stage ({len(stage_repeats)}), got {se!r}")
    mids = esnet_mids(stage_channels, stage_repeats, channel_ratio)
    return ShuffleStyleNet(
        stage_channels, stage_repeats, mids, [replace(style, se=flag) for flag in flags],
        num_classes=num_classes, conv5_channels=conv5_channels,
    )
