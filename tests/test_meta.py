"""Counting on the meta device: shape-only kernels agree with torch's own meta kernels,
models built without initialisation have the same shapes, and a meta cell's static
columns are the CPU's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.init as init

from archbench.factory import create_meta_model, create_model
from archbench.profilers.compute import count_compute
from archbench.profilers.memory import measure_activation_peak
from archbench.profilers.meta import (
    INIT_FUNCTIONS,
    counting_pass,
    no_initialisation,
    shape_only_kernel,
)

aten = torch.ops.aten


def meta(*shape: int, channels_last: bool = False) -> torch.Tensor:
    x = torch.empty(shape, device="meta")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def answered(func: Any, *args: Any) -> torch.Tensor:
    """The kernel's output, checked to be a fresh answer (torch's kernel was not called)."""
    calls: list[Any] = []

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(a)
        return func(*a, **k)

    spy.overloadpacket = func.overloadpacket  # type: ignore[attr-defined]
    spy._overloadname = func._overloadname  # type: ignore[attr-defined]
    out = shape_only_kernel(spy, args, {})
    assert not calls, f"{func} fell back to torch's kernel"
    return out


def on_cpu(value: Any) -> Any:
    """A meta argument as a CPU tensor of the same shape, strides and dtype."""
    if isinstance(value, list):
        return [on_cpu(v) for v in value]
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype).zero_() if value.is_meta else value
    return value


def same_as_torch(out: torch.Tensor, func: Any, *args: Any) -> None:
    """``out`` has the shape, strides and dtype the op's CPU kernel gives (what a meta pass
    stands for: torch's own meta kernel of a convolution disagrees on channels_last)."""
    expected = func(*[on_cpu(a) for a in args])
    assert out.device.type == "meta"
    assert (out.shape, out.stride(), out.dtype) == (expected.shape, expected.stride(), expected.dtype)


CASES: list[tuple[str, Callable[[], tuple[Any, ...]]]] = [
    ("conv2d strided, padded", lambda: (aten.conv2d.default, meta(1, 16, 41, 39), meta(32, 16, 3, 3), None, [2, 2], [1, 1], [1, 1], 1)),
    ("conv2d depthwise, dilated", lambda: (aten.conv2d.default, meta(2, 24, 40, 40), meta(24, 1, 5, 5), None, [1, 1], [4, 4], [2, 2], 24)),
    ("conv2d defaults", lambda: (aten.conv2d.default, meta(1, 8, 10, 12), meta(4, 8, 1, 1))),
    ("conv2d channels_last", lambda: (aten.conv2d.default, meta(1, 16, 20, 20, channels_last=True), meta(32, 16, 3, 3), None, [1, 1], [1, 1], [1, 1], 1)),
    ("conv1d", lambda: (aten.conv1d.default, meta(1, 8, 50), meta(16, 8, 7), None, [3], [3], [1], 1)),
    ("convolution", lambda: (aten.convolution.default, meta(1, 8, 33, 33), meta(8, 8, 3, 3), None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1)),
    ("hardswish, channels_last", lambda: (aten.hardswish.default, meta(1, 8, 5, 5, channels_last=True))),
    ("batch_norm", lambda: (aten.batch_norm.default, meta(1, 8, 5, 5), meta(8), meta(8), meta(8), meta(8), False, 0.1, 1e-5, False)),
    ("add, same shape", lambda: (aten.add.Tensor, meta(1, 8, 5, 5), meta(1, 8, 5, 5))),
    ("mul by a number", lambda: (aten.mul.Scalar, meta(1, 8, 5, 5), 0.5)),
    ("cat", lambda: (aten.cat.default, [meta(1, 8, 5, 5), meta(1, 24, 5, 5)], 1)),
    ("cat, negative dim", lambda: (aten.cat.default, [meta(1, 8, 5, 5), meta(1, 8, 5, 7)], -1)),
]


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[name for name, _ in CASES])
def test_shape_only_answers_match_torchs_meta_kernels(case: Callable[[], tuple[Any, ...]]) -> None:
    func, *args = case()
    same_as_torch(answered(func, *args), func, *args)


@pytest.mark.parametrize(
    "func, args",
    [
        (aten.add.Tensor, (meta(1, 8, 5, 5), meta(1, 8, 1, 1))),  # broadcasting
        (aten.add.Tensor, (meta(1, 8, 5, 5), torch.empty(1, 8, 5, 5, device="meta", dtype=torch.float16))),
        (aten.cat.default, ([meta(1, 8, 5, 5, channels_last=True), meta(1, 8, 5, 5, channels_last=True)], 1)),
        (aten.conv2d.padding, (meta(1, 8, 10, 10), meta(8, 8, 3, 3), None, [1, 1], "same", [1, 1], 1)),
    ],
    ids=["broadcasting add", "mixed dtypes", "channels_last cat", "string padding"],
)
def test_cases_not_covered_fall_back_to_torch(func: Any, args: tuple[Any, ...]) -> None:
    out = shape_only_kernel(func, args, {})
    same_as_torch(out, func, *args)


def test_in_place_ops_return_their_input() -> None:
    x = meta(1, 8, 5, 5)
    assert shape_only_kernel(aten.hardswish_.default, (x,), {}) is x
    assert shape_only_kernel(aten.add_.Tensor, (x, meta(1, 8, 5, 5)), {}) is x


def test_no_initialisation_restores_torch_init() -> None:
    saved = {name: getattr(init, name) for name in INIT_FUNCTIONS}
    weight = torch.zeros(3, 4)
    with no_initialisation():
        assert init.kaiming_uniform_(weight) is weight
        assert init.normal_(weight, 0, 1) is weight
    assert not weight.any()  # untouched inside the block
    assert {name: getattr(init, name) for name in INIT_FUNCTIONS} == saved
    init.ones_(weight)
    assert weight.all()


@pytest.mark.parametrize("name", ["esnet_s", "picodet_s", "shufflenetv2_x1_0", "esnet_m_fpn"])
def test_meta_build_has_the_cpu_models_shapes(name: str) -> None:
    cpu, fast = create_model(name), create_meta_model(name)
    assert [(n, p.shape) for n, p in cpu.named_parameters()] == [(n, p.shape) for n, p in fast.named_parameters()]
    assert [(n, b.shape) for n, b in cpu.named_buffers()] == [(n, b.shape) for n, b in fast.named_buffers()]
    assert all(p.is_meta for p in fast.parameters()) and not fast.training


@pytest.mark.parametrize("name, resolution", [("esnet_m", 320), ("picodet_s", 416)])
def test_one_meta_pass_counts_what_the_cpu_counts(name: str, resolution: int) -> None:
    """MACs, elements per category and the activation peak of the fused meta pass equal
    a CPU forward's, counted by the counter and the tracker separately."""
    cpu = create_model(name)
    x = torch.rand(1, 3, resolution, resolution)
    expected = count_compute(cpu, x)
    expected_peak = measure_activation_peak(cpu, x)
    counted, peak = counting_pass(create_meta_model(name), meta(1, 3, resolution, resolution), track_peak=True)
    assert counted.macs == expected.macs and counted.macs > 0
    assert counted.macs_by_module == expected.macs_by_module
    assert counted.elements_by_op == expected.elements_by_op
    assert peak == expected_peak and peak is not None and peak > 0
