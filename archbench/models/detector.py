"""Whole detectors composed from a registered backbone, a neck and a head.

A detector variant is data: which backbone variant, which neck, which head, and
their arguments. Nothing here is specific to one detector.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from archbench.components import ComponentRegistry
from archbench.errors import ArchbenchError
from archbench.models.heads import HEADS
from archbench.models.necks import NECKS


class Detector(nn.Module):
    """backbone -> neck -> head; the forward returns one raw output map per level."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.strides: tuple[int, ...] = tuple(neck.strides)  # type: ignore[arg-type]

    def parts(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "neck": self.neck, "head": self.head}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.neck(self.backbone(x)))


def _construct(
    table: ComponentRegistry[Callable[..., nn.Module]], name: str, inherited: Mapping[str, Any], **kwargs: Any,
) -> nn.Module:
    """Build ``table.get(name)``: ``kwargs`` that are set must be accepted; ``inherited``
    defaults (e.g. the head's width from the neck's) are passed only where accepted."""
    factory = table.get(name)
    accepted = inspect.signature(factory).parameters
    given = {k: v for k, v in kwargs.items() if v is not None}
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ArchbenchError(f"{table.kind} {name!r} does not take {', '.join(unknown)}")
    defaults = {k: v for k, v in inherited.items() if v is not None and k in accepted}
    return factory(**{**defaults, **given})


def build_detector(
    backbone: str,
    neck: str,
    head: str,
    num_classes: int = 80,
    se: bool | None = None,
    branch: str | None = None,
    act: str | None = None,
    neck_channels: int | None = None,
    neck_kernel: int | None = None,
    neck_conv: str | None = None,
    neck_act: str | None = None,
    neck_widths: list[int] | None = None,
    num_levels: int = 4,
    head_channels: int | None = None,
    head_convs: int | None = None,
    head_kernel: int | None = None,
    head_act: str | None = None,
    reg_max: int | None = None,
    num_anchors: int | None = None,
    *,
    create_variant: Callable[..., nn.Module],
) -> Detector:
    """A detector from a registered backbone variant plus a neck and a head by name.

    ``se``, ``branch`` and ``act`` are the backbone's ablation axes; ``neck_*``
    go to the neck (``neck_conv``: ``dw`` or ``dense`` in CSP-PAN), ``head_*``
    to the head (whose width defaults to the neck's). ``num_classes`` sizes the head; the backbone stays headless.
    ``create_variant`` builds the backbone variant by name; the factory passes its own
    (over the registry the detector itself came from).
    """
    backbone_overrides: dict[str, Any] = {k: v for k, v in {"se": se, "branch": branch, "act": act}.items() if v is not None}
    body = create_variant(backbone, **backbone_overrides)
    in_channels, in_strides = body.out_channels, body.strides
    neck_module = _construct(
        NECKS, neck, {}, in_channels=in_channels, in_strides=in_strides, channels=neck_channels,
        kernel=neck_kernel, conv=neck_conv, act=neck_act, widths=neck_widths, num_levels=num_levels,
    )
    head_module = _construct(
        HEADS, head, {"channels": neck_channels}, in_channels=neck_module.out_channels,
        channels=head_channels,
        num_convs=head_convs, num_classes=num_classes, reg_max=reg_max, kernel=head_kernel,
        act=head_act, num_anchors=num_anchors,
    )
    return Detector(body, neck_module, head_module)
