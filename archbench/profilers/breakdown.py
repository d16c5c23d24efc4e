"""Per-module breakdown: params, MACs, output shape and bytes, down to a chosen depth.

One forward pass under global module hooks that exist only for the pass (the
model itself gets none), plus one ``count_compute`` pass for the MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.utils._pytree import tree_flatten

from archbench.profilers.compute import count_compute


@dataclass(frozen=True)
class ModuleRow:
    module: str  # dotted name; "" is the whole model
    type: str
    depth: int
    params: int
    macs: int
    output_shape: str  # the first output tensor's shape, and how many more there are
    output_bytes: int


def _output_info(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[str, int]]:
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[str, tuple[str, int]] = {}

    def hook(module: nn.Module, _args: Any, output: Any) -> None:
        name = names.get(id(module))
        if name is None or name in seen:
            return
        tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        shapes = "x".join(map(str, tensors[0].shape)) if tensors else ""
        if len(tensors) > 1:
            shapes += f" (+{len(tensors) - 1} more)"
        seen[name] = (shapes, sum(t.numel() * t.element_size() for t in tensors))

    handle = register_module_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return seen


def module_breakdown(model: nn.Module, x: torch.Tensor, max_depth: int = 3) -> list[ModuleRow]:
    """Rows for the model and every named module down to ``max_depth`` dotted levels."""
    compute = count_compute(model, x)
    outputs = _output_info(model, x)
    rows = []
    for name, module in model.named_modules():
        depth = 0 if not name else name.count(".") + 1
        if depth > max_depth:
            continue
        prefix = f"{name}." if name else ""
        macs = sum(v for k, v in compute.macs_by_module.items() if k == name or k.startswith(prefix))
        shape, nbytes = outputs.get(name, ("", 0))
        rows.append(ModuleRow(name, type(module).__name__, depth,
                              sum(p.numel() for p in module.parameters()), macs, shape, nbytes))
    return rows
