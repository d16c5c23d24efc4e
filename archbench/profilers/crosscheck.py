"""Cross-checks: the two common third-party counters, run quietly on a deep copy.

``fvcore_count`` runs fvcore's ``FlopCountAnalysis`` (a TorchScript trace) and
``thop_count`` runs thop's ``profile`` (module forward hooks). Neither touches the
caller's model, prints, warns or logs: what they say is kept in
``CrossCheck.messages``. Each result states the convention its tool follows
(``FVCORE_CONVENTION``, ``THOP_CONVENTION``), which differs from ``count_compute``'s
beyond the convolution + linear part; ``conv_linear_macs`` is the part to compare.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from archbench.capture import captured_output, summarize_lines
from archbench.profilers.compute import Inputs, _as_tuple


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
    """

    tool: str
    total: int
    convention: str
    conv_linear_macs: int
    breakdown: dict[str, int]
    unsupported: dict[str, int]
    messages: dict[str, int]


FVCORE_CONVENTION = (
    "fvcore: 1 per MAC for conv (bias ignored) and linear/addmm/matmul/bmm/einsum; "
    "adds eval BatchNorm at 2/elem (1 without affine), GroupNorm/LayerNorm at 5/elem, "
    "adaptive_avg_pool2d at 1 per input elem, upsample_nearest2d at 1 and "
    "upsample_bilinear2d at 4 per output elem; Hardswish/Hardsigmoid/SiLU/add/mul/"
    "max_pool/mean are unsupported (0); relu/cat/reshape are ignored (0)"
)
THOP_CONVENTION = (
    "thop: module forward hooks; Conv out_elems*in/groups*k (bias ignored; ConvTranspose "
    "uses the same formula, which is wrong for it), Linear in_features*out_elems; adds "
    "BatchNorm/LayerNorm/InstanceNorm at 2/elem, 4/elem with affine (so eval BN = 4/elem), "
    "AdaptiveAvgPool at (in_area/out_area + 1) per output elem, AvgPool at 1 per output "
    "elem, nn.Upsample at 1 (nearest) or 11 (bilinear) per output elem; ReLU/LeakyReLU/"
    "MaxPool/Dropout 0; modules without a rule (Hardswish, Hardsigmoid, SiLU, Identity) 0; "
    "functional ops (torch.cat, x * s, F.interpolate, tensor.mean) are invisible (0)"
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
    )


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

    def walk(module: nn.Module, info: Mapping[str, Any]) -> None:
        # mirror thop's own traversal: a module with a rule that is not a container is a leaf
        for name, child in module.named_children():
            ops, _, nested = info[name]
            has_rule = type(child) in register_hooks
            if has_rule and not isinstance(child, nn.Sequential | nn.ModuleList):
                breakdown[type(child).__name__] += _integral(ops, "thop")
            elif next(child.children(), None) is not None:
                walk(child, nested)
            elif not has_rule:
                unsupported[type(child).__name__] += 1

    walk(subject, layers)
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
    )


__all__ = [
    "FVCORE_CONVENTION",
    "THOP_CONVENTION",
    "CrossCheck",
    "fvcore_count",
    "thop_count",
]
