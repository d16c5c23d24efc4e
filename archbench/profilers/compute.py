"""Exact compute counts from one forward pass, read where ATen ops are dispatched.

``count_compute`` runs one forward pass under ``torch.inference_mode()`` inside a
``TorchDispatchMode`` and classifies every op it sees:

* **MACs** (the headline): convolutions, ``out_elements * in_channels / groups * kernel
  area`` (transposed: ``in_elements * out_channels / groups * kernel area``), and matrix
  products (linear, addmm, mm, bmm, matmul: ``M * N * K``). Biases are not MACs.
* **Element counts** for what the headline leaves out, by category: ``norm`` and
  ``activation`` (input elements), ``elementwise`` (output elements), ``pool`` (input
  elements; ``mean`` reductions count here), ``data_movement`` (output elements of
  concatenation, copies and upsampling; a ``reshape``/``contiguous`` counts only when it
  really copies, as the one in a channel shuffle does).

Under inference mode on the CPU the mode sees ops *before* their
CompositeImplicitAutograd decomposition (``aten.conv2d``, ``aten.linear``,
``aten.batch_norm``, ``aten.reshape``), and nothing of what runs inside them, so each
convolution is counted exactly once, whichever level it reaches the mode at. An op
without a rule that has such a decomposition is decomposed under the mode, so that its
parts are counted (``einsum`` becomes ``bmm``); any other op without a rule is listed
in ``unclassified_ops``, never silently dropped.

Each op is attributed to the innermost module running it, by its ``named_modules``
name ("backbone.stage2.0.expand.conv"; "" for the root's own forward). The module
stack comes from global module hooks that live only for the pass: nothing is
registered on the model, and the model's state is unchanged.

``fvcore_count`` and ``thop_count`` run the two common third-party counters on a deep
copy, quietly, for cross-checks; each result states the convention its tool follows.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

Inputs = torch.Tensor | tuple[torch.Tensor, ...]

CATEGORIES: tuple[str, ...] = ("norm", "activation", "elementwise", "pool", "data_movement")
"""Element-count categories, in the order reports show them."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ComputeCount:
    """What one forward pass computes. Treat the dicts as read-only.

    Attributes:
        macs: Multiply-accumulates of convolutions and matrix products (headline).
        macs_by_module: Innermost module name -> MACs ("" for the root's own forward).
        norm: Normalization input elements (BatchNorm, LayerNorm, GroupNorm).
        activation: Activation input elements (ReLU, Hardswish, Hardsigmoid, SiLU, ...).
        elementwise: Output elements of arithmetic (add, mul incl. SE scaling, div, ...).
        pool: Pooling input elements (max/avg/adaptive pools, ``mean`` reductions).
        data_movement: Output elements of cat, copies (shuffle reshapes) and upsampling.
        elements_by_module: Category -> innermost module name -> elements.
        macs_by_op: ATen op (``"aten.conv2d.default"``) -> MACs.
        elements_by_op: ATen op -> elements counted for it.
        op_calls: ATen op -> calls seen, including ops decomposed and views (0 cost).
        unclassified_ops: Ops seen that have no rule and no decomposition (counted as 0).
        input_shapes: Shapes of the inputs the pass ran on.
    """

    macs: int
    macs_by_module: dict[str, int]
    norm: int
    activation: int
    elementwise: int
    pool: int
    data_movement: int
    elements_by_module: dict[str, dict[str, int]]
    macs_by_op: dict[str, int]
    elements_by_op: dict[str, int]
    op_calls: dict[str, int]
    unclassified_ops: frozenset[str]
    input_shapes: tuple[tuple[int, ...], ...]

    def elements(self, category: str) -> int:
        """Total elements of one category of ``CATEGORIES``."""
        _check_metric(category, allow_macs=False)
        return int(getattr(self, category))

    def by_module(self, metric: str = "macs", depth: int | None = None) -> dict[str, int]:
        """``"macs"`` or a category per module, optionally summed to a name depth.

        Args:
            metric: ``"macs"`` or one of ``CATEGORIES``.
            depth: Keep this many leading name components (see ``aggregate_by_prefix``).
        """
        _check_metric(metric, allow_macs=True)
        per_module = self.macs_by_module if metric == "macs" else self.elements_by_module[metric]
        return dict(per_module) if depth is None else aggregate_by_prefix(per_module, depth)

    def rows(self, depth: int | None = None) -> list[dict[str, str | int]]:
        """Tidy rows, one per module (or name prefix at ``depth``), in first-use order.

        Columns: ``module``, ``macs`` and ``<category>_elems`` for each category.
        """
        metrics = ("macs", *CATEGORIES)
        tables = {metric: self.by_module(metric, depth) for metric in metrics}
        modules = dict.fromkeys(name for table in tables.values() for name in table)
        return [
            {"module": name, "macs": tables["macs"].get(name, 0),
             **{f"{c}_elems": tables[c].get(name, 0) for c in CATEGORIES}}
            for name in modules
        ]


def aggregate_by_prefix(per_module: Mapping[str, int], depth: int) -> dict[str, int]:
    """Sum per-module counts over the first ``depth`` components of each name.

    ``depth=1`` gives a detector's parts ("backbone", "neck", "head"), ``depth=2`` its
    stages ("backbone.stage2"); ``depth=0`` gives one total under "". Names with fewer
    components (and the root, "") keep their own entry. Order is first appearance.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    totals: dict[str, int] = {}
    for name, value in per_module.items():
        key = ".".join(name.split(".")[:depth]) if name else ""
        totals[key] = totals.get(key, 0) + value
    return totals


def _check_metric(metric: str, allow_macs: bool) -> None:
    allowed = (("macs",) if allow_macs else ()) + CATEGORIES
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(allowed)}")


# ----------------------------------------------------------------------------- op rules

Rule = tuple[str, Callable[[Sequence[Any], Any], int]]
"""(what is counted: "macs", a category or "free", how much from (args, output))."""


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"expected a tensor output, got {type(value).__name__}")


def _input_numel(args: Sequence[Any], out: Any) -> int:
    return args[0].numel() if isinstance(args[0], torch.Tensor) else _first_tensor(args[0]).numel()


def _output_numel(args: Sequence[Any], out: Any) -> int:
    return _first_tensor(out).numel()


def _copied_numel(args: Sequence[Any], out: Any) -> int:
    """Output elements if the op copied, 0 if it returned a view of (or) its input."""
    result, source = _first_tensor(out), args[0]
    same = result.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    return 0 if same else result.numel()


def _conv_macs(args: Sequence[Any], out: Any) -> int:
    # weight is (out, in / groups, *kernel): each output element takes prod(weight[1:]) MACs
    return _first_tensor(out).numel() * math.prod(args[1].shape[1:])


def _conv_transpose_macs(args: Sequence[Any], out: Any) -> int:
    # weight is (in, out / groups, *kernel): each input element feeds prod(weight[1:]) MACs
    return args[0].numel() * math.prod(args[1].shape[1:])


def _convolution_macs(args: Sequence[Any], out: Any) -> int:
    """``aten.convolution``/``_convolution``: ``transposed`` is the 7th argument."""
    return _conv_transpose_macs(args, out) if args[6] else _conv_macs(args, out)


def _matmul_macs(operand: int) -> Callable[[Sequence[Any], Any], int]:
    """M * N * K: output elements times the reduced dimension of ``args[operand]``."""

    def macs(args: Sequence[Any], out: Any) -> int:
        return _first_tensor(out).numel() * args[operand].shape[-1]

    return macs


def _free(args: Sequence[Any], out: Any) -> int:
    return 0


def _rules() -> dict[str, Rule]:
    """Rules by op name, in-place ``_`` suffix removed (``relu_`` follows ``relu``)."""
    table: dict[str, Rule] = {}

    def add(kind: str, count: Callable[[Sequence[Any], Any], int], names: Iterable[str]) -> None:
        for name in names:
            table[name] = (kind, count)

    add("macs", _conv_macs, (
        "conv1d", "conv2d", "conv3d", "_convolution_mode", "mkldnn_convolution", "thnn_conv2d",
        "_slow_conv2d_forward", "_conv_depthwise2d", "slow_conv3d", "slow_conv_dilated2d",
        "slow_conv_dilated3d", "cudnn_convolution", "miopen_convolution",
    ))
    add("macs", _conv_transpose_macs, (
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "slow_conv_transpose2d",
        "slow_conv_transpose3d", "cudnn_convolution_transpose", "miopen_convolution_transpose",
    ))
    add("macs", _convolution_macs, ("convolution", "_convolution", "convolution_overrideable"))
    add("macs", _matmul_macs(0), ("linear", "matmul", "mm", "bmm", "mv", "dot", "vdot"))
    add("macs", _matmul_macs(1), ("addmm", "_addmm_activation", "baddbmm", "addmv"))
    add("norm", _input_numel, (
        "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training", "_batch_norm_impl_index", "_batch_norm_with_update",
        "_batch_norm_no_update", "cudnn_batch_norm", "miopen_batch_norm", "layer_norm",
        "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm",
    ))
    add("activation", _input_numel, (
        "relu", "relu6", "hardswish", "hardsigmoid", "hardtanh", "silu", "leaky_relu", "sigmoid",
        "tanh", "gelu", "elu", "selu", "celu", "mish", "softplus", "prelu", "_prelu_kernel",
        "threshold", "clamp", "clamp_min", "clamp_max", "softmax", "_softmax", "log_softmax",
        "_log_softmax",
    ))
    add("elementwise", _output_numel, (
        "add", "sub", "rsub", "mul", "div", "true_divide", "neg", "pow", "sqrt", "rsqrt", "exp",
        "log", "abs", "reciprocal", "square", "maximum", "minimum", "addcmul", "addcdiv",
    ))
    add("pool", _input_numel, (
        "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
        "max_pool2d_with_indices", "max_pool3d_with_indices", "mkldnn_max_pool2d", "avg_pool1d",
        "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
        "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "mean", "sum",
        "amax", "amin",
    ))
    add("data_movement", _output_numel, (
        "cat", "concat", "concatenate", "stack", "clone", "copy", "_to_copy", "upsample_nearest1d",
        "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d",
        "upsample_bilinear2d", "_upsample_bilinear2d_aa", "upsample_bicubic2d",
        "upsample_trilinear3d", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
        "native_channel_shuffle", "constant_pad_nd", "pad", "reflection_pad1d",
        "reflection_pad2d", "replication_pad1d", "replication_pad2d", "repeat", "roll", "flip",
        "index_select",
    ))
    add("data_movement", _copied_numel, (
        "reshape", "reshape_as", "flatten", "ravel", "contiguous", "to", "type_as",
    ))
    add("free", _free, (
        "view", "_unsafe_view", "view_as", "_reshape_alias", "transpose", "t", "permute",
        "movedim", "swapaxes", "expand", "expand_as", "unsqueeze", "squeeze", "select", "slice",
        "split", "split_with_sizes", "tensor_split", "chunk", "unbind", "narrow", "unflatten",
        "as_strided", "alias", "detach", "lift_fresh", "dropout", "feature_dropout",
        "alpha_dropout", "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like",
        "full", "full_like", "rand", "randn", "randint", "arange", "scalar_tensor", "size",
        "sym_size", "stride", "sym_stride", "sym_numel", "is_same_size",
    ))
    return table


_RULES = _rules()


def _op_name(func: torch._ops.OpOverload) -> str:
    name = func.overloadpacket.__name__
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


# ----------------------------------------------------------------------------- the pass


class _ModuleStack:
    """The innermost running module's name, from global module hooks that exist only
    inside the ``with`` block (so no hook is ever registered on the model itself)."""

    def __init__(self, model: nn.Module) -> None:
        self._names = {id(module): name for name, module in model.named_modules()}
        self._stack = [""]
        self._handles: list[Any] = []

    def current(self) -> str:
        return self._stack[-1]

    def _enter(self, module: nn.Module, args: Any) -> None:
        # a module outside the model (built on the fly) runs under its caller's name
        self._stack.append(self._names.get(id(module), self._stack[-1]))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    def __enter__(self) -> _ModuleStack:
        self._handles = [
            register_module_forward_pre_hook(self._enter),
            register_module_forward_hook(self._leave),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _CountingMode(TorchDispatchMode):
    """Tallies every dispatched op by its rule and the module running it."""

    def __init__(self, where: Callable[[], str]) -> None:
        super().__init__()
        self._where = where
        self.by_module: dict[str, defaultdict[str, int]] = {
            kind: defaultdict(int) for kind in ("macs", *CATEGORIES)
        }
        self.macs_by_op: Counter[str] = Counter()
        self.elements_by_op: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.unclassified: set[str] = set()

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: Any, args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        key = str(func)
        self.calls[key] += 1
        rule = _RULES.get(_op_name(func))
        if rule is None:
            with self:  # count the parts of a composite op we have no rule for
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            self.unclassified.add(key)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        kind, count = rule
        if kind != "free":
            amount = count(_with_kwargs(func, args, kwargs), out)
            self.by_module[kind][self._where()] += amount
            (self.macs_by_op if kind == "macs" else self.elements_by_op)[key] += amount
        return out


def _with_kwargs(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Sequence[Any]:
    """Positional arguments, with any passed by keyword put back in schema order."""
    if not kwargs:
        return args
    full = list(args)
    for argument in func._schema.arguments[len(args):]:
        if argument.kwarg_only:
            break
        full.append(kwargs.get(argument.name, argument.default_value))
    return full


def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def count_compute(model: nn.Module, inputs: Inputs) -> ComputeCount:
    """Count what one inference forward pass of ``model`` on ``inputs`` computes.

    The pass runs in eval mode under ``torch.inference_mode()``; every module's
    ``training`` flag is restored afterwards, and nothing else about the model changes.

    Args:
        model: Any ``nn.Module``.
        inputs: One tensor, or a tuple of positional inputs.
    """
    args = _as_tuple(inputs)
    training = {id(module): module.training for module in model.modules()}
    stack = _ModuleStack(model)
    mode = _CountingMode(stack.current)
    model.eval()
    try:
        with torch.inference_mode(), stack, mode:
            model(*args)
    finally:
        for module in model.modules():
            module.training = training[id(module)]

    def table(kind: str) -> dict[str, int]:
        return {name: value for name, value in mode.by_module[kind].items() if value}

    elements_by_module = {category: table(category) for category in CATEGORIES}
    return ComputeCount(
        macs=sum(mode.by_module["macs"].values()),
        macs_by_module=table("macs"),
        **{category: sum(elements_by_module[category].values()) for category in CATEGORIES},
        elements_by_module=elements_by_module,
        macs_by_op=dict(mode.macs_by_op),
        elements_by_op=dict(mode.elements_by_op),
        op_calls=dict(mode.calls),
        unclassified_ops=frozenset(mode.unclassified),
        input_shapes=tuple(tuple(t.shape) for t in args),
    )


# ----------------------------------------------------------------------------- cross-checks


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


@contextlib.contextmanager
def _captured(logger_names: Sequence[str]) -> Iterator[list[str]]:
    """Capture stdout, stderr, Python warnings and log records (root and the named
    loggers) into a list of lines, filled when the block ends; nothing is printed."""
    lines: list[str] = []
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in logger_names)]

    def keep(record: logging.LogRecord) -> bool:
        lines.append(f"log {record.levelname.lower()}: {record.getMessage()}")
        return False  # dropped: never reaches a handler

    # logging.warning() on a handler-less root would install a stderr handler for good
    placeholder = logging.NullHandler()
    with contextlib.ExitStack() as stack:
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        root.addHandler(placeholder)
        stack.callback(root.removeHandler, placeholder)
        for logger in loggers:
            logger.addFilter(keep)
            stack.callback(logger.removeFilter, keep)
        try:
            yield lines
        finally:
            lines.extend(f"{w.category.__name__}: {w.message}" for w in caught)
            printed = (out.getvalue() + err.getvalue()).splitlines()
            lines.extend(line for line in printed if line.strip())


def _summarize(lines: Iterable[str]) -> dict[str, int]:
    return dict(Counter(line.strip().splitlines()[0][:300] for line in lines if line.strip()))


def _integral(value: float, tool: str) -> int:
    if value != int(value):
        raise ValueError(f"{tool} returned a non-integral count {value}")
    return int(value)


def fvcore_count(model: nn.Module, inputs: Inputs) -> CrossCheck:
    """fvcore's ``FlopCountAnalysis`` (TorchScript trace) on a deep copy, in eval mode."""
    with _captured(_QUIET_LOGGERS) as lines:
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
        messages=_summarize(lines),
    )


def thop_count(model: nn.Module, inputs: Inputs) -> CrossCheck:
    """thop's ``profile`` on a deep copy (it leaves ``total_ops``/``total_params``
    buffers behind on modules without a rule, so it never sees the caller's model)."""
    with _captured(_QUIET_LOGGERS) as lines:
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
        messages=_summarize(lines),
    )


__all__ = [
    "CATEGORIES",
    "ComputeCount",
    "CrossCheck",
    "aggregate_by_prefix",
    "count_compute",
    "fvcore_count",
    "thop_count",
]
