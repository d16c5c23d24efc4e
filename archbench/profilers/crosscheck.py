"""Cross-checks: the two common third-party counters, run quietly on a deep copy.

``fvcore_count`` runs fvcore's ``FlopCountAnalysis`` (a TorchScript trace) and
``thop_count`` runs thop's ``profile`` (module forward hooks). Neither touches the
caller's model, prints, warns or logs: what they say is kept in
``CrossCheck.messages``. Each result states the convention its tool follows
(``FVCORE_CONVENTION``, ``THOP_CONVENTION``), which differs from ``count_compute``'s
beyond the convolution + linear part; ``conv_linear_macs`` is the part to compare.

That part agrees with ``count_compute`` only where the tool sees every product: fvcore
counts no attention (``scaled_dot_product_attention``, the fused fast paths) and thop
sees modules, not functional calls (``F.linear``, ``@``). ``agreement`` compares a tool
with ``count_compute`` module by module and names the modules, and the ops archbench
counted there, where they differ; it is what ``archbench.profile(counters=...)`` reports.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from archbench.capture import captured_output, summarize_lines
from archbench.profilers.compute import ComputeCount, Inputs, _as_tuple


@dataclass(frozen=True)
class CrossCheck:
    """A third-party counter's result, with the convention it follows.

    Attributes:
        tool: "fvcore" or "thop", with its version.
        total: The tool's headline number.
        convention: What the tool counts, and at what rate (measured, not assumed).
        conv_linear_macs: The tool's own convolution + linear/matmul part.
        breakdown: The tool's own split (fvcore: per operator; thop: per module type).
        unsupported: What the tool saw but counted as 0 (fvcore: ATen ops; thop: leaf
            module types without a rule), with counts (fvcore: calls; thop: modules).
        messages: Captured output, warnings and log lines -> how many times each appeared.
        conv_linear_by_module: The conv + linear/matmul part by module, each module's own
            (its submodules' excluded; "" is the root's own forward).
    """

    tool: str
    total: int
    convention: str
    conv_linear_macs: int
    breakdown: dict[str, int]
    unsupported: dict[str, int]
    messages: dict[str, int]
    conv_linear_by_module: dict[str, int] = field(default_factory=dict)


FVCORE_CONVENTION = (
    "fvcore: 1 per MAC for conv (bias ignored) and linear/addmm/matmul/bmm/einsum; "
    "adds eval BatchNorm at 2/elem (1 without affine), GroupNorm/LayerNorm at 5/elem, "
    "adaptive_avg_pool2d at 1 per input elem, upsample_nearest2d at 1 and "
    "upsample_bilinear2d at 4 per output elem; Hardswish/Hardsigmoid/SiLU/add/mul/"
    "max_pool/mean and scaled_dot_product_attention (attention's two matmuls) are "
    "unsupported (0); relu/cat/reshape are ignored (0); traced with autograd on, so "
    "nn.MultiheadAttention runs its slow path (projections counted as linear)"
)
THOP_CONVENTION = (
    "thop: module forward hooks; Conv out_elems*in/groups*k (bias ignored; ConvTranspose "
    "uses the same formula, which is wrong for it), Linear in_features*out_elems; adds "
    "BatchNorm/LayerNorm/InstanceNorm at 2/elem, 4/elem with affine (so eval BN = 4/elem), "
    "AdaptiveAvgPool at (in_area/out_area + 1) per output elem, AvgPool at 1 per output "
    "elem, nn.Upsample at 1 (nearest) or 11 (bilinear) per output elem; ReLU/LeakyReLU/"
    "MaxPool/Dropout 0; modules without a rule (Hardswish, Hardsigmoid, SiLU, Identity, "
    "MultiheadAttention and its out_proj) 0; functional ops (F.linear, @/matmul, attention, "
    "torch.cat, x * s, F.interpolate, tensor.mean) are invisible (0)"
)

_FVCORE_MATMUL_KEYS = ("conv", "linear", "addmm", "mm", "bmm", "matmul", "einsum")
_QUIET_LOGGERS = ("fvcore", "fvcore.nn.jit_analysis", "fvcore.nn.flop_count", "thop")


def _integral(value: float, tool: str) -> int:
    if value != int(value):
        raise ValueError(f"{tool} returned a non-integral count {value}")
    return int(value)


def fvcore_count(model: nn.Module, inputs: Inputs) -> CrossCheck:
    """fvcore's ``FlopCountAnalysis`` (TorchScript trace) on a deep copy, in eval mode."""
    with captured_output(_QUIET_LOGGERS) as lines:
        import fvcore
        from fvcore.nn import FlopCountAnalysis

        subject = copy.deepcopy(model).eval()
        analysis = (
            FlopCountAnalysis(subject, _as_tuple(inputs))
            .unsupported_ops_warnings(False)  # read back below instead of logged
            .uncalled_modules_warnings(False)
            .tracer_warnings("none")
        )
        total = analysis.total()
        breakdown = {op: _integral(n, "fvcore") for op, n in analysis.by_operator().items()}
        unsupported = dict(analysis.unsupported_ops())
        uncalled = sorted(analysis.uncalled_modules())
        inclusive = {
            name: sum(_integral(n, "fvcore") for op, n in ops.items() if op in _FVCORE_MATMUL_KEYS)
            for name, ops in analysis.by_module_and_operator().items()
        }
    if uncalled:
        lines.append(f"uncalled modules: {', '.join(uncalled)}")
    return CrossCheck(
        tool=f"fvcore {getattr(fvcore, '__version__', '?')}",
        total=_integral(total, "fvcore"),
        convention=FVCORE_CONVENTION,
        conv_linear_macs=sum(breakdown.get(key, 0) for key in _FVCORE_MATMUL_KEYS),
        breakdown=breakdown,
        unsupported=unsupported,
        messages=summarize_lines(lines),
        conv_linear_by_module=_own_counts(subject, inclusive),
    )


def _own_counts(model: nn.Module, inclusive: Mapping[str, int]) -> dict[str, int]:
    """Each module's own count from counts that include its submodules'."""
    own = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        children = sum(inclusive.get(prefix + child, 0) for child, _ in module.named_children())
        if inclusive.get(name, 0) - children:
            own[name] = inclusive.get(name, 0) - children
    return own


def thop_count(model: nn.Module, inputs: Inputs) -> CrossCheck:
    """thop's ``profile`` on a deep copy (it leaves ``total_ops``/``total_params``
    buffers behind on modules without a rule, so it never sees the caller's model)."""
    with captured_output(_QUIET_LOGGERS) as lines:
        import thop
        from thop.profile import register_hooks

        subject = copy.deepcopy(model).eval()
        total, _, layers = thop.profile(
            subject, _as_tuple(inputs), verbose=False, ret_layer_info=True
        )
    breakdown: Counter[str] = Counter()
    unsupported: Counter[str] = Counter()
    by_module: dict[str, int] = {}

    def walk(module: nn.Module, info: Mapping[str, Any], prefix: str) -> None:
        # mirror thop's own traversal: a module with a rule that is not a container is a leaf
        for name, child in module.named_children():
            ops, _, nested = info[name]
            has_rule = type(child) in register_hooks
            if has_rule and not isinstance(child, nn.Sequential | nn.ModuleList):
                kind = type(child).__name__
                breakdown[kind] += _integral(ops, "thop")
                if kind.startswith(("Conv", "Linear")) and ops:
                    by_module[prefix + name] = _integral(ops, "thop")
            elif next(child.children(), None) is not None:
                walk(child, nested, f"{prefix}{name}.")
            elif not has_rule:
                unsupported[type(child).__name__] += 1

    walk(subject, layers, "")
    conv_linear = sum(
        n for kind, n in breakdown.items() if kind.startswith(("Conv", "Linear"))
    )
    return CrossCheck(
        tool=f"thop {getattr(thop, '__version__', '?')}",
        total=_integral(total, "thop"),
        convention=THOP_CONVENTION,
        conv_linear_macs=conv_linear,
        breakdown=dict(breakdown),
        unsupported=dict(unsupported),
        messages=summarize_lines(lines),
        conv_linear_by_module=by_module,
    )


# ----------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class ModuleDifference:
    """A module whose own conv/linear MACs differ between a tool and archbench."""

    module: str  # "" is the root's own forward
    archbench_macs: int
    tool_macs: int
    ops: tuple[str, ...]  # the ATen ops archbench counted MACs for in this module


@dataclass(frozen=True)
class Agreement:
    """Whether a tool's conv + linear part agrees with archbench's MACs, and where not.

    Attributes:
        tool: The tool, with its version.
        archbench_macs: ``count_compute``'s MACs.
        tool_macs: The tool's ``conv_linear_macs``.
        differences: The modules whose own counts differ, largest difference first.
    """

    tool: str
    archbench_macs: int
    tool_macs: int
    differences: tuple[ModuleDifference, ...]

    @property
    def agrees(self) -> bool:
        return self.archbench_macs == self.tool_macs and not self.differences

    @property
    def ops(self) -> tuple[str, ...]:
        """The ATen ops archbench counted in the modules that differ, sorted."""
        return tuple(sorted({op for difference in self.differences for op in difference.ops}))

    def summary(self, modules_shown: int = 3) -> str:
        """One line: ``agrees`` or what differs (the root module is named "(model)")."""
        if self.agrees:
            return "conv/linear part agrees with archbench"
        gap = self.tool_macs - self.archbench_macs
        share = f" ({100 * gap / self.archbench_macs:+.1f}%)" if self.archbench_macs else ""
        names = [d.module or "(model)" for d in self.differences]
        listed = ", ".join(names[:modules_shown]) + (", ..." if len(names) > modules_shown else "")
        ops = ", ".join(self.ops) or "none"
        return (f"conv/linear part differs from archbench by {gap:,} MACs{share} in "
                f"{len(names)} module(s): {listed} (archbench counts there: {ops})")


def agreement(check: CrossCheck, compute: ComputeCount) -> Agreement:
    """Compare a tool's conv + linear part with ``count_compute``'s MACs, module by module."""
    ours = compute.macs_by_module
    names = list(dict.fromkeys([*ours, *check.conv_linear_by_module]))
    differences = [
        ModuleDifference(name, ours.get(name, 0), check.conv_linear_by_module.get(name, 0),
                         tuple(sorted(compute.macs_by_module_op.get(name, {}))))
        for name in names if ours.get(name, 0) != check.conv_linear_by_module.get(name, 0)
    ]
    differences.sort(key=lambda d: -abs(d.archbench_macs - d.tool_macs))
    return Agreement(check.tool, compute.macs, check.conv_linear_macs, tuple(differences))


__all__ = [
    "FVCORE_CONVENTION",
    "THOP_CONVENTION",
    "Agreement",
    "CrossCheck",
    "ModuleDifference",
    "agreement",
    "fvcore_count",
    "thop_count",
]
