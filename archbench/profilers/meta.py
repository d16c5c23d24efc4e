"""Counting on the ``meta`` device, fast: shape-only kernels and models built without values.

Params, MACs and the activation peak depend only on shapes, so a forward on meta tensors
gives the numbers ``archbench.profile`` gives on the CPU, exactly, without computing
anything (``archbench expect`` and a sweep's static cells count this way). Two things make
a plain meta pass slower than one would think, and both are replaced here:

* Many of torch's meta kernels are Python reference implementations: a convolution's
  checks and shape arithmetic take about 1 ms a call, and ``empty_like`` on a meta tensor
  works out the output's memory format in Python. ``shape_only_kernels()`` answers the
  ops a convolutional network spends its meta pass on (convolutions, batch norm,
  activations, elementwise arithmetic on equal shapes, concatenation) with an empty
  output of the right shape, dtype and memory format, and leaves every other op, and
  every case it does not cover (string padding, mixed dtypes, broadcasting, unusual
  strides), to torch's own kernel. ``counting_pass`` runs it inside the MAC counter's
  dispatch mode, with the activation tracker fed from the same mode: one Python
  dispatch per op instead of three stacked modes.
* Building a module runs its parameter initialisation, which on meta has no values to
  fill and only costs dispatch: ``no_initialisation()`` makes ``torch.nn.init``'s fill
  functions return their tensor untouched while a model is built on meta.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.init as init
from torch import nn

from archbench.profilers.compute import ComputeCount, count_compute
from archbench.profilers.memory import activation_tracker, torch_fast_paths_on_meta
from archbench.profilers.op_rules import op_name

# Ops whose output has the input's shape, dtype and layout. In-place forms (``relu_``)
# return their input.
SHAPE_PRESERVING_OPS = frozenset({
    "batch_norm", "hardswish", "hardsigmoid", "relu", "relu6", "silu", "leaky_relu",
    "sigmoid", "hardtanh", "tanh", "gelu", "elu",
})
# Elementwise ops of two operands answered for a floating-point tensor and a tensor of the
# same shape and dtype, or a number.
ELEMENTWISE_BINARY_OPS = frozenset({"add", "mul", "sub", "div"})
#: The fill functions of ``torch.nn.init`` that ``no_initialisation`` turns into no-ops.
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)
_CONVOLUTIONS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def empty_output_like(x: Any) -> Any:
    """An empty meta tensor of ``x``'s shape and dtype, contiguous or channels_last as
    ``x`` is (what ``empty_like`` returns for such inputs); ``empty_like`` itself for any
    other layout."""
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(x.shape, dtype=x.dtype, device="meta", memory_format=torch.channels_last)
    return torch.empty_like(x)


def _per_dim(value: int | Sequence[int], dims: int) -> list[int]:
    """A convolution argument given once or per spatial dim, per spatial dim."""
    if isinstance(value, int):
        return [value] * dims
    values = list(value)
    return values * dims if len(values) == 1 else values


def convolution_on_meta(x: Any, weight: Any, stride: int | Sequence[int], padding: int | Sequence[int],
                        dilation: int | Sequence[int]) -> Any:
    """A forward convolution's output on the meta device, its shape by the usual arithmetic
    (``(size + 2 x padding - dilation x (kernel - 1) - 1) // stride + 1`` per spatial dim).
    The input's memory format is kept (channels_last in, channels_last out), as the CPU
    kernel does."""
    dims = weight.dim() - 2
    spatial = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], _per_dim(stride, dims), _per_dim(padding, dims),
                                    _per_dim(dilation, dims), strict=True)
    ]
    shape = (x.shape[0], weight.shape[0], *spatial)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device="meta", memory_format=memory_format)


def _convolution(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any | None:
    """The output of ``convolution`` / ``convNd`` if it is a plain forward one with numeric
    padding, else None."""
    if kwargs:
        return None
    if name == "convolution":  # (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
        if len(args) != 9 or args[6]:
            return None
        return convolution_on_meta(args[0], args[1], args[3], args[4], args[5])
    # convNd (input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
    x, weight = args[0], args[1]
    stride, padding, dilation = (list(args[3:6]) + [1, 0, 1][len(args[3:6]):])
    if isinstance(padding, str) or x.dim() != _CONVOLUTIONS[name] + 2:  # "same"/"valid", or unbatched
        return None
    return convolution_on_meta(x, weight, stride, padding, dilation)


def _elementwise(args: Sequence[Any]) -> Any | None:
    """The output of a binary elementwise op on a floating-point tensor and a tensor of the
    same shape, dtype and device or a number (no broadcasting, no type promotion), else None."""
    first, other = args
    if not first.is_floating_point():
        return None
    if isinstance(other, torch.Tensor):
        if other.shape != first.shape or other.dtype != first.dtype or other.device != first.device:
            return None
    elif not isinstance(other, (int, float)) or isinstance(other, bool):
        return None
    return empty_output_like(first)


def _concatenation(args: Sequence[Any]) -> Any | None:
    """The output of ``cat`` of contiguous tensors of one dtype and rank, else None."""
    tensors, dim = args[0], args[1] if len(args) > 1 else 0
    if not tensors or any(t.dim() != tensors[0].dim() or t.dtype != tensors[0].dtype or not t.is_contiguous()
                          or t.device.type != "meta" for t in tensors):
        return None
    dim = dim % tensors[0].dim()
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")


def shape_only_kernel(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """``func``'s output, by shape alone for the ops and cases the module docstring lists,
    by ``func`` itself otherwise (a ``count_compute`` kernel)."""
    out = None
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.device.type == "meta":
        name = op_name(func)
        inplace = name != func.overloadpacket.__name__  # op_name drops an in-place "_"
        if name in SHAPE_PRESERVING_OPS:
            out = first if inplace else empty_output_like(first)
        elif (name in ELEMENTWISE_BINARY_OPS and not kwargs and len(args) == 2
              and func._overloadname in ("Tensor", "Scalar")):
            out = _elementwise(args)
            out = first if inplace and out is not None else out
        elif (name == "convolution" or name in _CONVOLUTIONS) and func._overloadname == "default":
            out = _convolution(name, args, kwargs)
    elif func.overloadpacket.__name__ == "cat" and func._overloadname == "default" and not kwargs:
        out = _concatenation(args)
    return func(*args, **kwargs) if out is None else out


def counting_pass(model: nn.Module, x: torch.Tensor, *, track_peak: bool) -> tuple[ComputeCount, int | None]:
    """What one forward of ``model`` on ``x`` computes and, with ``track_peak``, its peak of
    live activation bytes, in one dispatch pass; on meta tensors with ``shape_only_kernel``
    and torch's attention fast paths taken as on the CPU."""
    tracker = activation_tracker(model, x) if track_peak else None
    observe = tracker.observe if tracker is not None else None
    if x.device.type == "meta":
        with torch_fast_paths_on_meta():
            compute = count_compute(model, x, kernel=shape_only_kernel, observe=observe)
    else:
        compute = count_compute(model, x, observe=observe)
    return compute, None if tracker is None else tracker.peak_bytes


@contextmanager
def no_initialisation() -> Iterator[None]:
    """``torch.nn.init``'s fill functions return their tensor untouched inside the block
    (a model built on the meta device has no values to initialise)."""
    saved = {name: getattr(init, name) for name in INIT_FUNCTIONS if hasattr(init, name)}

    def untouched(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    for name in saved:
        setattr(init, name, untouched)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


__all__ = ["convolution_on_meta", "counting_pass", "empty_output_like", "no_initialisation", "shape_only_kernel"]
