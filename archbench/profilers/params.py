"""Parameter counts: total, trainable, and split by part and stage.

A parameter shared by several modules is counted once, and attributed to the
first part (in forward order) that owns it. Parts come from a model's
``parts()`` (detectors: backbone/neck/head; backbones: stem/stages), or from its
top-level children for any other module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """Named top-level parts of a model, in forward order."""
    parts = getattr(model, "parts", None)
    if callable(parts):
        return dict(parts())
    return dict(model.named_children())


def model_stages(model: nn.Module) -> dict[str, nn.Module]:
    """Parts one level down: ``backbone.stem``, ``backbone.stage2``, ..., ``neck``, ``head``."""
    stages: dict[str, nn.Module] = {}
    for name, part in model_parts(model).items():
        sub = model_parts(part) if callable(getattr(part, "parts", None)) else {}
        if sub:
            stages.update({f"{name}.{s}": m for s, m in sub.items()})
        else:
            stages[name] = part
    return stages


def count_unique(modules: dict[str, nn.Module]) -> dict[str, int]:
    """Parameters per named module, each tensor counted once (first owner wins)."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name, module in modules.items():
        total = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        counts[name] = total
    return counts


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model; ``by_part`` and ``by_stage`` sum to the parameters the parts cover."""

    total: int
    trainable: int
    by_part: dict[str, int]
    by_stage: dict[str, int]


def count_params(model: nn.Module) -> ParamCount:
    unique = list(model.parameters())  # nn.Module.parameters() already yields shared tensors once
    return ParamCount(
        total=sum(p.numel() for p in unique),
        trainable=sum(p.numel() for p in unique if p.requires_grad),
        by_part=count_unique(model_parts(model)),
        by_stage=count_unique(model_stages(model)),
    )
