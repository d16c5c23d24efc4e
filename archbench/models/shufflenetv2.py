"""ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018, arXiv 1807.11164).

Reference implementation: torchvision ``torchvision/models/shufflenetv2.py``; the
classifier form reproduces its parameter counts to the unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from archbench.models.shuffle_blocks import BlockStyle, Branch, ShuffleStyleNet

STAGE_REPEATS = (4, 8, 4)


def build_shufflenetv2(
    stage_channels: Sequence[int],
    conv5_channels: int = 1024,
    act: str = "relu",
    se: bool = False,
    branch: Branch = "dw",
    stage_repeats: Sequence[int] = STAGE_REPEATS,
    num_classes: int | None = None,
) -> ShuffleStyleNet:
    """ShuffleNetV2 backbone (or classifier when ``num_classes`` is given).

    The stride-2 branch is ``out / 2`` wide and the stride-1 branch ``channels / 2``,
    which is ``mid = out`` and ``mid = out / 2`` in ``ShuffleStyleNet`` terms.
    """
    mids = [c if i == 0 else c // 2 for c, n in zip(stage_channels, stage_repeats, strict=True) for i in range(n)]
    style = BlockStyle(act=act, branch=branch, se=se, fuse=False)
    return ShuffleStyleNet(
        stage_channels, stage_repeats, mids, style,
        num_classes=num_classes, conv5_channels=conv5_channels,
    )
