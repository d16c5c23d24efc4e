"""Reading a per-layer profile: kinds of work, the roofline columns, and groupings.

Pure functions of the module types and of the frame ``profile_layers`` returns (they
measure nothing): which kind of work a layer does (``leaf_kind``, ``own_kind``), the
roofline arithmetic (``add_roofline``) and the coarser views for decisions
(``group_layers``: by kind of work, part, stage, type or module, each group's share of
time beside its share of MACs and of bytes). The roofline is documented in
``archbench.profilers.layers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from archbench.errors import ArchbenchError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

GROUPINGS = ("module", "type", "kind", "part", "stage")

KIND_DENSE = "dense/pointwise conv"
KIND_DEPTHWISE = "depthwise conv"
KIND_SE = "SE"
KIND_NORM_ACT = "normalisation and activation"
KIND_POOL = "pooling"
KIND_DATA = "data movement"
KIND_ELEMENTWISE = "elementwise"
KIND_OTHER = "other"
KINDS = (KIND_DENSE, KIND_DEPTHWISE, KIND_SE, KIND_NORM_ACT, KIND_POOL, KIND_DATA, KIND_ELEMENTWISE, KIND_OTHER)

LAYER_COLUMNS = (
    "module", "type", "kind", "part", "stage", "calls", "latency_ms", "latency_share", "macs", "flops",
    "bytes_moved", "intensity", "attained_gflops", "attained_gbps", "roof_gflops", "pct_of_roof", "bound",
    "signature",
)


# -- module classification ------------------------------------------------------------
def is_container(module: nn.Module) -> bool:
    from torch import nn

    return type(module).forward is nn.Sequential.forward or isinstance(module, nn.ModuleList | nn.ModuleDict)


def is_se(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "squeezeexcit" in name or name in ("se", "selayer", "seblock", "semodule")


def leaf_kind(module: nn.Module) -> str:
    """The kind of work of a leaf module, from its type."""
    from torch import nn

    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        return KIND_DEPTHWISE if depthwise else KIND_DENSE
    if isinstance(module, nn.Linear):
        return KIND_DENSE
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    if isinstance(module, norm_types):
        return KIND_NORM_ACT
    act_types = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.LeakyReLU, nn.Sigmoid, nn.GELU,
                 nn.Tanh, nn.Mish, nn.ELU, nn.PReLU)
    if isinstance(module, act_types):
        return KIND_NORM_ACT
    pool_types = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                  nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
    if isinstance(module, pool_types):
        return KIND_POOL
    if isinstance(module, nn.Upsample | nn.ChannelShuffle | nn.PixelShuffle | nn.Flatten | nn.Identity):
        return KIND_DATA
    return KIND_OTHER


def own_kind(elements: dict[str, int]) -> str:
    """The kind of an ``(own)`` row from the element counts of its ops (``count_compute``):
    the category with the most elements; ``other`` when it runs no counted work (views such
    as ``chunk`` only, or just the Python and module-call overhead between its children)."""
    if elements.get("macs", 0):
        return KIND_DENSE
    ranked = [(elements.get("data_movement", 0), KIND_DATA), (elements.get("elementwise", 0), KIND_ELEMENTWISE),
              (elements.get("norm", 0) + elements.get("activation", 0), KIND_NORM_ACT),
              (elements.get("pool", 0), KIND_POOL)]
    count, kind = max(ranked, key=lambda item: item[0])
    return kind if count else KIND_OTHER  # no counted work: views only, Python and module-call overhead


def add_roofline(df: pd.DataFrame, peak_gflops: float, bandwidth_gbps: float) -> pd.DataFrame:
    """Add ``flops``, ``latency_share``, ``intensity``, attained, roof, ``pct_of_roof`` and ``bound``
    to a frame with ``latency_ms``, ``macs`` and ``bytes_moved``; columns in ``LAYER_COLUMNS`` order."""
    import numpy as np

    df = df.copy()
    seconds = df["latency_ms"].astype(float) / 1e3
    total = float(df["latency_ms"].sum())
    df["latency_share"] = df["latency_ms"] / total if total > 0 else 0.0
    df["flops"] = 2 * df["macs"].astype("int64")
    nbytes = df["bytes_moved"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["intensity"] = np.where(nbytes > 0, df["flops"] / nbytes.where(nbytes > 0, 1.0), 0.0)
        df["attained_gflops"] = np.where(seconds > 0, df["flops"] / seconds.where(seconds > 0, 1.0) / 1e9, 0.0)
        df["attained_gbps"] = np.where(seconds > 0, nbytes / seconds.where(seconds > 0, 1.0) / 1e9, 0.0)
    memory_roof = df["intensity"] * bandwidth_gbps
    df["roof_gflops"] = np.minimum(peak_gflops, memory_roof)
    compute_bound = memory_roof >= peak_gflops
    df["bound"] = np.where(compute_bound, "compute", "memory")
    df["pct_of_roof"] = np.where(compute_bound, 100.0 * df["attained_gflops"] / peak_gflops,
                                 100.0 * df["attained_gbps"] / bandwidth_gbps)
    ordered = [c for c in LAYER_COLUMNS if c in df.columns]
    return df[ordered + [c for c in df.columns if c not in ordered]]


def group_layers(df: pd.DataFrame, by: str = "kind") -> pd.DataFrame:
    """The layer frame grouped for decisions, each group's share of time beside its share of
    MACs and of bytes.

    ``by``: ``kind`` (kinds of work, ``KINDS`` order), ``part``, ``stage`` (part and stage),
    ``type`` (module class) or ``module`` (the rows themselves). Groups keep first-appearance
    order except ``kind``; columns: the key(s), ``layers``, ``calls``, ``latency_ms``,
    ``latency_share``, ``macs``, ``macs_share``, ``bytes_moved``, ``bytes_share``, ``flops``,
    ``intensity``, ``attained_gflops``. ``attrs`` are kept.
    """
    if by not in GROUPINGS:
        raise ArchbenchError(f"unknown grouping {by!r}; choose from {', '.join(GROUPINGS)}")
    keys = ["part", "stage"] if by == "stage" else [by]
    grouped = df.groupby(keys, sort=False).agg(
        layers=("module", "size"), calls=("calls", "sum"), latency_ms=("latency_ms", "sum"),
        macs=("macs", "sum"), bytes_moved=("bytes_moved", "sum"), flops=("flops", "sum"),
    ).reset_index()
    if by == "kind":
        rank = {kind: i for i, kind in enumerate(KINDS)}
        grouped = grouped.sort_values("kind", key=lambda s: s.map(lambda k: rank.get(k, len(rank))), kind="stable")
        grouped = grouped.reset_index(drop=True)
    for column, share in (("latency_ms", "latency_share"), ("macs", "macs_share"), ("bytes_moved", "bytes_share")):
        total = float(grouped[column].sum())
        grouped[share] = grouped[column] / total if total > 0 else 0.0
    nbytes = grouped["bytes_moved"].astype(float)
    grouped["intensity"] = (grouped["flops"] / nbytes.where(nbytes > 0)).fillna(0.0)
    seconds = grouped["latency_ms"].astype(float) / 1e3
    grouped["attained_gflops"] = (grouped["flops"] / seconds.where(seconds > 0) / 1e9).fillna(0.0)
    columns = [*keys, "layers", "calls", "latency_ms", "latency_share", "macs", "macs_share", "bytes_moved",
               "bytes_share", "flops", "intensity", "attained_gflops"]
    result = grouped[columns]
    result.attrs.update(df.attrs)
    return result


__all__ = [
    "GROUPINGS", "KINDS", "LAYER_COLUMNS", "add_roofline", "group_layers", "leaf_kind", "own_kind",
]
