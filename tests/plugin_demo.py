"""A stand-in third-party package for the entry-point test."""

from __future__ import annotations

from torch import nn

from archbench.specs import VariantSpec


def build_tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))


def variants() -> list[VariantSpec]:
    return [VariantSpec("demo_tiny", "demo", "backbone", "tests.plugin_demo:build_tiny", {"width": 8})]
