"""What each ATen op costs: a table of rules, one small counting function per kind of op.

A rule says *what* an op is counted as and *how much* of it, from the op's positional
arguments and its output:

* **MACs** (``"macs"``, the headline): convolutions, ``out_elements * in_channels /
  groups * kernel area`` (transposed: ``in_elements * out_channels / groups * kernel
  area``), and matrix products (linear, addmm, mm, bmm, matmul: ``M * N * K``). Biases
  are not MACs.
* **Element counts** for what the headline leaves out, by category (``CATEGORIES``):
  ``norm`` and ``activation`` (input elements), ``elementwise`` (output elements),
  ``pool`` (input elements; ``mean`` reductions count here), ``data_movement`` (output
  elements of concatenation, copies and upsampling; a ``reshape``/``contiguous`` counts
  only when it really copies, as the one in a channel shuffle does).
* **Free** (``"free"``): views, shape queries, dropout and factories; seen, costing 0.

* **Attention** (``attention_rules``): ``scaled_dot_product_attention`` in every backend's
  ATen form and the fused fast paths of ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoderLayer``: the two attention matmuls count ``B x heads x Lq x Lk
  x d`` MACs each; the scores' scaling and softmax are element counts. A fused op's rule
  returns amounts of several kinds (``{"macs": ..., "activation": ...}``).

``einsum`` has no rule on purpose: the counter decomposes it under itself, so the matrix
products it runs (``bmm``) are counted as they run, contraction order included.

Rules are looked up by ``op_name``: the op's overload-packet name with an in-place
trailing ``_`` removed, so ``aten.relu_.default`` follows the rule for ``"relu"``.
``register_op_rule`` adds a rule for an op the table lacks (one the counter would list
as unclassified), and ``unregister_op_rule`` removes it again. ``MAC_FREE_OPS`` names ops
without a rule that are known to do no multiply-accumulates (comparisons, indexing,
sorting, rounding, scans): the counter still lists them, without a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

CATEGORIES: tuple[str, ...] = ("norm", "activation", "elementwise", "pool", "data_movement")
"""Element-count categories, in the order reports show them."""

KINDS: tuple[str, ...] = ("macs", *CATEGORIES, "free")
"""What a rule can count an op as: MACs, elements of one category, or nothing."""

Count = Callable[[Sequence[Any], Any], int | Mapping[str, int]]
"""How much one call costs, from its positional arguments (keyword arguments put back
in schema order) and its output: an amount of the rule's kind, or, for a fused op that
does several kinds of work, amounts by kind (``{"macs": ..., "norm": ...}``, keys from
``KINDS`` except ``"free"``)."""


Rule = tuple[str, Count]
"""How one op is counted: (``kind``: ``"macs"``, one of ``CATEGORIES`` or ``"free"``;
``count``: how much of ``kind`` one call adds, from (args, output); not called for
``"free"``)."""


# ----------------------------------------------------------------------------- counting functions


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
    same = result.untyped_storage()._cdata == source.untyped_storage()._cdata  # also on meta (no data)
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


def _matmul_macs(operand: int) -> Count:
    """M * N * K: output elements times the reduced dimension of ``args[operand]``."""

    def macs(args: Sequence[Any], out: Any) -> int:
        return _first_tensor(out).numel() * args[operand].shape[-1]

    return macs


def _addbmm_macs(args: Sequence[Any], out: Any) -> int:
    """``addbmm``: the batch of products is summed into one (n, p) output: b * n * m * p."""
    batch1 = args[1]
    return _first_tensor(out).numel() * batch1.shape[0] * batch1.shape[-1]


def _free(args: Sequence[Any], out: Any) -> int:
    return 0


# ----------------------------------------------------------------------------- the table


def _rules() -> dict[str, Rule]:
    """Rules by op name, in-place ``_`` suffix removed (``relu_`` follows ``relu``)."""
    table: dict[str, Rule] = {}

    def add(kind: str, count: Count, names: Iterable[str]) -> None:
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
    add("macs", _addbmm_macs, ("addbmm",))
    add("norm", _input_numel, (
        "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training", "_batch_norm_impl_index", "_batch_norm_with_update",
        "_batch_norm_no_update", "cudnn_batch_norm", "miopen_batch_norm", "layer_norm",
        "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm",
        "linalg_vector_norm", "norm",  # F.normalize's norm (cosine attention)
    ))
    add("activation", _input_numel, (
        "relu", "relu6", "hardswish", "hardsigmoid", "hardtanh", "silu", "leaky_relu", "sigmoid",
        "tanh", "gelu", "elu", "selu", "celu", "mish", "softplus", "prelu", "_prelu_kernel",
        "threshold", "clamp", "clamp_min", "clamp_max", "softmax", "_softmax", "log_softmax",
        "_log_softmax", "_safe_softmax", "_masked_softmax",
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
        "as_strided", "alias", "detach", "diagonal", "lift_fresh", "dropout", "feature_dropout",
        "alpha_dropout", "empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like",
        "full", "full_like", "rand", "randn", "randint", "arange", "scalar_tensor", "size",
        "sym_size", "stride", "sym_stride", "sym_numel", "is_same_size",
    ))
    return table


_RULES = _rules()

MAC_FREE_OPS: frozenset[str] = frozenset({
    # comparisons and logic
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "__and__",
    "__or__", "__xor__", "isnan", "isinf", "isfinite", "isclose", "signbit", "any", "all",
    # selection, indexing, masks
    "where", "masked_fill", "masked_select", "masked_scatter", "index", "index_put",
    "_index_put_impl", "index_add", "index_copy", "index_fill", "gather", "scatter",
    "scatter_add", "scatter_reduce", "take", "nonzero", "argwhere", "tril", "triu", "diag",
    "diag_embed", "embedding", "one_hot", "unique", "_unique2", "bincount", "bucketize",
    "searchsorted", "repeat_interleave", "tile", "unfold", "im2col", "fill", "zero",
    "new_zeros", "new_ones", "new_empty", "new_full", "empty_strided", "eye", "linspace",
    "logspace", "_local_scalar_dense", "item", "lift_fresh_copy", "resize", "set",
    # sorting, order statistics and scans
    "sort", "argsort", "topk", "kthvalue", "median", "nanmedian", "mode", "max", "min",
    "argmax", "argmin", "aminmax", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp",
    # rounding and elementwise functions (elementwise work, no multiply-accumulate)
    "floor", "ceil", "round", "trunc", "frac", "sign", "sgn", "fmod", "remainder",
    "floor_divide", "nan_to_num", "erf", "erfc", "erfinv", "exp2", "expm1", "log1p", "log2",
    "log10", "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "hypot",
    "logsumexp", "logaddexp", "sigmoid_backward", "lerp", "bernoulli", "normal", "uniform",
    "random", "multinomial", "exponential",
})
"""Ops without a rule that are known to do no multiply-accumulates. The counter lists
them among the unclassified ops like any other, but ``archbench.profile`` does not warn
about them."""


def _strip_inplace(name: str) -> str:
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def op_name(func: torch._ops.OpOverload) -> str:
    """The name an op's rule is filed under: its overload-packet name with an in-place
    trailing ``_`` removed (``aten.relu_.default`` -> ``"relu"``; dunder names such as
    ``__and__`` are kept whole)."""
    return _strip_inplace(func.overloadpacket.__name__)


def rule_for(name: str) -> Rule | None:
    """The rule for an op name as ``op_name`` gives it, or ``None`` if there is none."""
    return _RULES.get(name)


def register_op_rule(
    names: str | Iterable[str], kind: str, count: Count, *, replace: bool = False
) -> None:
    """Count one or more ops the table has no rule for (or, with ``replace``, recount one).

    The counter lists an op without a rule in ``ComputeCount.unclassified_ops`` (as
    ``"aten.cumsum.default"``); registering its name (``"cumsum"``) makes every later
    ``count_compute`` count it, in-place variant (``cumsum_``) included::

        register_op_rule("cumsum", "elementwise", lambda args, out: out.numel())

    A custom op (``torch.library``) is registered by its name without namespace
    (``mylib::fused_mlp`` -> ``"fused_mlp"``); a fused op that does several kinds of
    work returns amounts by kind::

        register_op_rule("fused_mlp", "macs",
                         lambda args, out: {"macs": ..., "activation": out.numel()})

    The table is process-wide: ``archbench.profile``, ``archbench show``, ``archbench
    expect`` (meta device) and the pytest plugin's ``archbench_profile`` all count through
    it. For the command line, register in a module that is imported before counting,
    such as the builder module a variant spec names (``builder = "pkg.mod:build"``).
    ``unregister_op_rule`` takes a rule out again.

    Args:
        names: One op name or several, as ``op_name`` gives them: no ``aten.`` prefix,
            no overload, no in-place ``_`` suffix.
        kind: ``"macs"``, one of ``CATEGORIES``, or ``"free"`` (seen, costs 0).
        count: ``count(args, out) -> int``: how much of ``kind`` one call adds, from its
            positional arguments (keyword arguments put back in schema order) and output;
            or a mapping of amounts by kind (``KINDS`` except ``"free"``).
        replace: Allow replacing a rule the name already has.

    Raises:
        ValueError: On an unknown ``kind``, a malformed name, or a name that already has
            a rule (without ``replace``). Nothing is registered then.
        TypeError: ``count`` is not callable.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}; choose from {', '.join(KINDS)}")
    if not callable(count):
        raise TypeError(f"count must be callable, got {type(count).__name__}")
    wanted = list(dict.fromkeys([names] if isinstance(names, str) else names))
    if not wanted:
        raise ValueError("no op names given")
    for name in wanted:
        if not name or "." in name or _strip_inplace(name) != name:
            raise ValueError(
                f"bad op name {name!r}: give the overload-packet name without 'aten.', "
                f"overload or in-place '_' (as op_name gives it, e.g. 'cumsum')"
            )
        if name in _RULES and not replace:
            kind_now = _RULES[name][0]
            raise ValueError(f"op {name!r} already has a rule ({kind_now}); pass replace=True")
    for name in wanted:
        _RULES[name] = (kind, count)


def unregister_op_rule(name: str) -> Rule:
    """Remove the rule for ``name`` (one ``register_op_rule`` added, or a built-in one)
    and return it; ``count_compute`` then treats the op as one without a rule again
    (decomposed if it can be, else listed in ``unclassified_ops``).

    Raises:
        KeyError: ``name`` has no rule.
    """
    if name not in _RULES:
        raise KeyError(f"op {name!r} has no rule")
    return _RULES.pop(name)


def _register_attention_rules() -> None:
    from archbench.profilers.attention_rules import ATTENTION_RULES

    for kind, count, names in ATTENTION_RULES:
        register_op_rule(names, kind, count)


_register_attention_rules()


__all__ = [
    "CATEGORIES",
    "KINDS",
    "MAC_FREE_OPS",
    "Count",
    "Rule",
    "op_name",
    "register_op_rule",
    "rule_for",
    "unregister_op_rule",
]
