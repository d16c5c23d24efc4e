"""Devices: which one a run means, and doing every piece of its work on that one.

``check_device`` turns ``cpu`` / ``cuda`` / ``cuda:N`` into a ``torch.device`` the machine
has. On a GPU, all of a cell's work (moving the model, making the form, timing with CUDA
events, synchronising, reading allocator peaks) runs inside ``on_device``, so that
``cuda:1`` never means "device 1's tensors, device 0's events and synchronize".

``precision_policy`` makes the float32 maths explicit: on Ampere and newer GPUs PyTorch
runs float32 convolutions in TF32 by default (10-bit mantissa) and float32 matmuls in
full precision. A run sets both to its ``tf32`` setting for its duration and records it,
so "fp32" latency means what the record says.

Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from archbench.errors import ArchbenchError

if TYPE_CHECKING:
    import torch


def check_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:N]`` as a ``torch.device``, checked against what this machine has."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ArchbenchError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ArchbenchError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ArchbenchError(f"--device {device} asked for, but CUDA is not available (torch {torch.__version__})")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ArchbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def cuda_index(device: torch.device) -> int:
    """The CUDA device a ``cuda`` or ``cuda:N`` device means (``cuda`` alone: the current one)."""
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def on_device(device: torch.device) -> Any:
    """A context in which CUDA work (events, synchronize, allocator queries) uses ``device``;
    nothing on the CPU."""
    import torch

    return torch.cuda.device(cuda_index(device)) if device.type == "cuda" else nullcontext()


@contextmanager
def precision_policy(tf32: bool) -> Iterator[None]:
    """Let float32 convolutions and matmuls use TF32 (``True``) or not, restoring both after."""
    import torch

    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def cuda_free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` as the CUDA driver reports it."""
    import torch

    free, _total = torch.cuda.mem_get_info(cuda_index(device))
    return int(free)
