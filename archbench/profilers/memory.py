"""Inference memory: parameter/buffer/input bytes and the peak of live activation bytes.

The peak comes from a deterministic tracker of live tensor storages (a
``TorchDispatchMode``): every storage an op returns is counted from its
creation until Python frees it; views share their storage and count once;
parameters, buffers and the input are excluded and reported on their own.
Not process RSS, and not a torchinfo-style sum of every layer's output, which
overstates the peak many times over. Kernel-internal scratch space (oneDNN or
cuDNN workspaces) is not a tensor and is not counted.

Because it only reads storage sizes, the same forward on the ``meta`` device
gives the identical peak without allocating anything: a cell can be sized
before it runs.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


class LiveStorageTracker(TorchDispatchMode):
    """Tracks the bytes of storages created by ops while they are alive; keeps the peak."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._excluded = {t.untyped_storage()._cdata for t in exclude}
        self._live: dict[int, tuple[weakref.ref[torch.UntypedStorage], int]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _release(self, key: int) -> None:
        _, nbytes = self._live.pop(key)
        self.live_bytes -= nbytes

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._excluded or key in self._live:
            return
        nbytes = storage.nbytes()

        def release(_ref: object, key: int = key) -> None:
            self._release(key)

        self._live[key] = (weakref.ref(storage, release), nbytes)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def observe(self, out: Any) -> None:
        """Track the storages of an op's output (what the mode does for every op; another
        mode that runs the ops can call it instead, see ``count_compute``'s ``observe``)."""
        if isinstance(out, torch.Tensor):
            self._track(out)
            return
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.observe(out)
        return out


@dataclass(frozen=True)
class MemoryProfile:
    """Inference memory of one forward pass, in bytes."""

    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    act_peak_bytes: int


def activation_tracker(model: nn.Module, inputs: torch.Tensor) -> LiveStorageTracker:
    """A tracker that ignores the model's parameters and buffers and the input.

    Enter it around any forward pass of ``model`` on ``inputs`` (it can share
    the pass with other dispatch modes, such as the compute counter's).
    """
    return LiveStorageTracker([*model.parameters(), *model.buffers(), inputs])


def measure_activation_peak(model: nn.Module, inputs: torch.Tensor) -> int:
    """Peak live activation bytes of one no-grad forward of ``model`` on ``inputs``."""
    with torch.inference_mode(), activation_tracker(model, inputs) as tracker:
        model(inputs)
    return tracker.peak_bytes


def profile_memory(model: nn.Module, inputs: torch.Tensor, act_peak_bytes: int | None = None) -> MemoryProfile:
    """Parameter, buffer and input bytes, and the activation peak of one forward pass
    (measured here unless a pass that already tracked it gives ``act_peak_bytes``)."""
    return MemoryProfile(
        param_bytes=tensor_bytes(model.parameters()),
        buffer_bytes=tensor_bytes(model.buffers()),
        input_bytes=tensor_bytes([inputs]),
        act_peak_bytes=measure_activation_peak(model, inputs) if act_peak_bytes is None else act_peak_bytes,
    )


@contextmanager
def torch_fast_paths_on_meta() -> Iterator[None]:
    """Let ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take their inference
    fast paths (``_native_multi_head_attention``, ``_transformer_encoder_layer_fwd``) on
    meta tensors, as they do on the CPU and CUDA, so that a meta pass runs the same ops as
    ``archbench.profile``: the same MACs and the same activation peak.

    Their device checks accept ``torch.utils.backend_registration._privateuse1_backend_name``
    (read when the module runs), which names no device until a backend is registered;
    for the pass it names ``meta``. Left alone when a backend has taken the name.
    """
    import torch.utils.backend_registration as registration

    if registration._privateuse1_backend_name != "privateuseone":
        yield
        return
    registration._privateuse1_backend_name = "meta"
    try:
        yield
    finally:
        registration._privateuse1_backend_name = "privateuseone"


def estimate_activation_peak(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """The activation peak computed on the meta device: nothing is allocated."""
    meta_model = copy.deepcopy(model).to("meta")
    with torch_fast_paths_on_meta():
        return measure_activation_peak(meta_model, torch.empty(input_shape, dtype=dtype, device="meta"))
