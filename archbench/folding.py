"""Conv-BN folding, the ``fused`` deployment form's transformation.

A ``BatchNorm2d`` in eval mode is an affine map per channel, so a ``Conv2d`` directly
followed by one equals a single conv with scaled weights and a bias. The folded
weights are computed in float64 and stored in the conv's dtype.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Give ``conv`` the weight and bias of conv followed by ``bn`` in eval mode (computed in float64)."""
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        scale = (bn.running_var.double() + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        shift = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def fold_conv_bn(model: nn.Module) -> tuple[int, int]:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``.

    The conv takes the folded weight and bias, the BN becomes ``nn.Identity``. A conv
    used in more than one place is left alone (folding would change its other uses).
    Returns ``(folded, left)``: BNs folded and BatchNorm modules of any kind left.
    """
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    folded = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(sequential._modules.items())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if conv is None or bn is None or not _foldable(conv, bn) or uses[id(conv)] > 1:
                continue
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            _fold_into(conv, bn)
            sequential._modules[bn_name] = nn.Identity()
            folded += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return folded, left
