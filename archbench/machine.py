"""This machine's ceilings: attainable fp32 compute peak and memory bandwidth.

``machine_ceilings(device, threads)`` measures them once per (device model, threads,
torch version) and caches the result as JSON in the user's cache directory
(``$XDG_CACHE_HOME/archbench/machine.json``, else ``~/.cache/archbench/machine.json``);
``refresh=True`` (``archbench machine --refresh``) re-measures.

Method (``METHOD``):

- **compute peak**: a square fp32 GEMM (``torch.mm`` into a preallocated output, n=1024 on
  CPU, 4096 on CUDA), 2 n^3 FLOPs per call; the best of several timed calls after a
  warm-up. The best, not the median: a ceiling is what the machine can attain.
- **bandwidth**: ``dst.copy_(src)`` of a large fp32 buffer (256 MiB on CPU, 1 GiB on
  CUDA, far beyond any cache), bytes read plus bytes written (2 x the buffer) per call;
  the best of several timed calls after a warm-up.

CPU calls are timed with ``perf_counter_ns`` under ``cpu_threads(threads)``; CUDA calls
with CUDA events on the chosen device. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archbench.errors import ArchbenchError

CACHE_FILE = "machine.json"
CACHE_SCHEMA = "archbench.machine"
CACHE_VERSION = 1

METHOD = (
    "peak: best of {repeats} timed fp32 GEMMs (torch.mm, n={gemm_n}, 2n^3 FLOPs each) after a warm-up; "
    "bandwidth: best of {repeats} timed copies of a {copy_mib} MiB fp32 buffer (dst.copy_(src)), "
    "bytes read + written = 2 x {copy_mib} MiB each; {timer}; {threads}"
)

CPU_SIZES = {"gemm_n": 1024, "copy_mib": 256, "repeats": 10}
CUDA_SIZES = {"gemm_n": 4096, "copy_mib": 1024, "repeats": 20}


@dataclass(frozen=True)
class Ceilings:
    """The attainable ceilings of one device at one thread count (GFLOP/s and GB/s, 1e9)."""

    peak_gflops: float
    bandwidth_gbps: float
    device: str  # "cpu" or "cuda:N"
    device_model: str
    threads: int
    torch_version: str
    method: str
    measured_at: str  # ISO 8601, UTC
    cached: bool = False  # read from the cache rather than measured by this call

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte where the memory roof meets the compute roof."""
        return self.peak_gflops / self.bandwidth_gbps

    def roof_gflops(self, intensity: float) -> float:
        """``min(peak, intensity x bandwidth)``: the roofline at ``intensity`` FLOPs per byte."""
        return min(self.peak_gflops, intensity * self.bandwidth_gbps)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ridge_intensity": self.ridge_intensity}

    def __getitem__(self, key: str) -> Any:  # mapping-style access: ceilings["peak_gflops"]
        return self.as_dict()[key]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/archbench`` or ``~/.cache/archbench``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "archbench"


def device_model(device: str) -> str:
    """The CPU model name, or the CUDA device's name."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda":
        from archbench.devices import cuda_index

        return str(torch.cuda.get_device_name(cuda_index(parsed)))
    from archbench.environment import cpu_model

    return cpu_model()


def cache_key(model_name: str, threads: int, torch_version: str) -> str:
    return f"{model_name} | threads={threads} | torch={torch_version}"


def _best_ns(call: Any, repeats: int, device: Any) -> int:
    import torch

    call()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        best = None
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            ns = int(start.elapsed_time(end) * 1e6)
            best = ns if best is None else min(best, ns)
        return max(best or 1, 1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return max(min(times), 1)


def measure_ceilings(device: str = "cpu", threads: int = 1, *, gemm_n: int | None = None,
                     copy_mib: float | None = None, repeats: int | None = None) -> tuple[float, float, str]:
    """Measure ``(peak_gflops, bandwidth_gbps, method)`` now; sizes default per device type."""
    import torch

    from archbench.devices import check_device, on_device
    from archbench.profilers.latency import cpu_threads

    parsed = check_device(device)
    sizes = dict(CUDA_SIZES if parsed.type == "cuda" else CPU_SIZES)
    n = int(gemm_n or sizes["gemm_n"])
    mib = float(copy_mib or sizes["copy_mib"])
    reps = int(repeats or sizes["repeats"])
    elements = max(int(mib * 2**20) // 4, 1)
    with on_device(parsed), cpu_threads(threads), torch.inference_mode():
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(parsed)
        b = torch.randn(n, n, generator=generator).to(parsed)
        c = torch.empty(n, n, device=parsed)
        if parsed.type == "cuda":
            allow_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        try:
            gemm_ns = _best_ns(lambda: torch.mm(a, b, out=c), reps, parsed)
        finally:
            if parsed.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        src = torch.ones(elements, device=parsed)
        dst = torch.empty_like(src)
        copy_ns = _best_ns(lambda: dst.copy_(src), reps, parsed)
    peak = 2.0 * n**3 / gemm_ns  # FLOPs per ns = GFLOP/s
    bandwidth = 2.0 * elements * 4 / copy_ns  # bytes per ns = GB/s
    timer = "CUDA events, TF32 off" if parsed.type == "cuda" else "perf_counter_ns"
    method = METHOD.format(repeats=reps, gemm_n=n, copy_mib=f"{mib:g}", timer=timer,
                           threads="GPU" if parsed.type == "cuda" else f"{threads} CPU thread(s)")
    return peak, bandwidth, method


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"schema": CACHE_SCHEMA, "schema_version": CACHE_VERSION, "entries": entries},
                              indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic


def machine_ceilings(device: str = "cpu", threads: int = 1, *, refresh: bool = False,
                     cache_path: Path | None = None) -> Ceilings:
    """This machine's fp32 compute peak and memory bandwidth, from the cache or measured.

    Args:
        device: ``cpu`` or ``cuda[:N]``.
        threads: CPU intra-op threads the measurement runs at (ignored on CUDA beyond the key).
        refresh: Measure again and replace the cached entry.
        cache_path: The JSON cache file (default ``cache_dir() / "machine.json"``).
    """
    import torch

    from archbench.devices import check_device

    if threads < 1:
        raise ArchbenchError(f"threads must be at least 1, got {threads}")
    parsed = check_device(device)
    name = "cpu" if parsed.type == "cpu" else f"cuda:{parsed.index if parsed.index is not None else 0}"
    model_name = device_model(name)
    key = cache_key(model_name, threads, torch.__version__)
    path = cache_path or cache_dir() / CACHE_FILE
    entries = _read_cache(path)
    entry = entries.get(key)
    if entry is not None and not refresh:
        try:
            return Ceilings(**{k: entry[k] for k in Ceilings.__dataclass_fields__ if k != "cached"}, cached=True)
        except (KeyError, TypeError):
            pass  # a malformed entry is measured again
    peak, bandwidth, method = measure_ceilings(name, threads)
    ceilings = Ceilings(peak_gflops=peak, bandwidth_gbps=bandwidth, device=name, device_model=model_name,
                        threads=threads, torch_version=torch.__version__, method=method,
                        measured_at=datetime.now(UTC).isoformat(timespec="seconds"))
    record = asdict(ceilings)
    record.pop("cached")
    entries[key] = record
    with suppress(OSError):  # an unwritable cache only costs a re-measurement next time
        _write_cache(path, entries)
    return ceilings


__all__ = ["Ceilings", "cache_dir", "cache_key", "machine_ceilings", "measure_ceilings"]
