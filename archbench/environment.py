"""What a measurement ran on: machine, software and settings, recorded with every run."""

from __future__ import annotations

import os
import platform
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def usable_cpus() -> list[int]:
    """CPUs this process may run on (its affinity), falling back to all."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def onednn_version() -> str | None:
    import torch

    config = torch.__config__.show()
    match = re.search(r"(?:oneDNN|MKL-DNN|mkldnn)\D*v?(\d+\.\d+(?:\.\d+)?)", config, re.IGNORECASE)
    return match.group(1) if match else None


#: Runtimes a deployment form can run on besides torch (distribution names).
RUNTIME_PACKAGES: tuple[str, ...] = ("onnxruntime", "onnx", "openvino", "ncnn", "pnnx")


def package_version(distribution: str) -> str | None:
    """An installed distribution's version (from its metadata, without importing it), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str]:
    """Versions of the inference runtimes installed here (``RUNTIME_PACKAGES``; torch is
    recorded on its own), each under its own name."""
    found = {name: package_version(name) for name in RUNTIME_PACKAGES}
    return {name: v for name, v in found.items() if v is not None}


@cache
def static_environment() -> dict[str, Any]:
    """Facts that do not change during a run."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": len(usable_cpus()),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onednn": onednn_version(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        **runtime_versions(),
    }
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def environment(threads: int | None = None, device: str = "cpu", tf32: bool | None = None) -> dict[str, Any]:
    """Static facts plus the current thread settings and, for a GPU run, the GPU it runs on
    (``cuda:N``'s own, not device 0's) and the float32 precision policy."""
    import torch

    info = {
        **static_environment(),
        "intra_op_threads": threads if threads is not None else torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if torch.device(device).type == "cuda":
        from archbench.devices import cuda_index

        index = cuda_index(torch.device(device))
        info.update(gpu_index=index, gpu_model=torch.cuda.get_device_name(index))
        if tf32 is not None:
            info.update(cudnn_tf32=tf32, cuda_matmul_tf32=tf32)
    return info
