"""archbench: benchmark lightweight detection architectures.

Public API (stable)::

    archbench.list_variants(pattern=None) -> list[str]
    archbench.create_model(name, **overrides) -> torch.nn.Module
    archbench.profile(model_or_name, resolutions=(320, 416, 640), batch_size=1,
                      device="cpu", metrics=("params", "macs", "memory")) -> pandas.DataFrame
    archbench.profile_layers(target, resolution=320, *, batch_size=1, device="cpu", threads=1,
                             form="eager", input="image") -> pandas.DataFrame  (one row per layer)
    archbench.machine_ceilings(device="cpu", threads=1) -> Ceilings  (peak_gflops, bandwidth_gbps)
    archbench.predict_latency(target, resolution=320, *, table) -> Prediction  (latency_ms, uncertainty_ms,
                              counts of exact / interpolated / fitted / uncovered rows)

Importing archbench does not import torch; building a model does.
"""

from __future__ import annotations

from typing import Any

from archbench.errors import ArchbenchError, SpecError, UnknownVariantError
from archbench.factory import create_model
from archbench.registry import default_registry

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``archbench.profile`` and the others import torch, so they are loaded on first use (PEP 562).
    if name == "profile":
        from archbench.profiling import profile

        return profile
    if name == "profile_layers":
        from archbench.profilers.layers import profile_layers

        return profile_layers
    if name == "machine_ceilings":
        from archbench.machine import machine_ceilings

        return machine_ceilings
    if name == "predict_latency":
        from archbench.predict.table import predict_latency

        return predict_latency
    raise AttributeError(f"module 'archbench' has no attribute {name!r}")


def list_variants(pattern: str | None = None) -> list[str]:
    """Registered variant names, optionally filtered by a wildcard or a family name.

    A pattern without wildcard characters matches as a substring
    (``list_variants("esnet")`` lists the ESNet family and its ablations).
    """
    return [spec.name for spec in default_registry().filter(pattern)]


__all__ = [
    "ArchbenchError",
    "SpecError",
    "UnknownVariantError",
    "__version__",
    "create_model",
    "list_variants",
    "machine_ceilings",
    "predict_latency",
    "profile",
    "profile_layers",
]
