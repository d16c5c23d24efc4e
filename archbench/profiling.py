"""``archbench.profile``: one table of measurements for variants x resolutions x forms.

The same sweep as ``archbench run`` (``archbench.runner.Runner``), kept in memory:
names go through the registry to built models (or a user's modules are measured as
given), each cell is measured by ``archbench.cells.measure_cell``, and the records
become a tidy DataFrame with units in the column names. The first failure raises.

No silent zero: ops the MAC counter has no rule for are listed in ``df.attrs
["unclassified_ops"]`` (per model and resolution: the op, its calls and the modules it
ran in), and each one that may hide MACs (it took a floating-point tensor of rank 2 or
more and is not known to be MAC-free) is warned about once per ``profile`` call with an
``archbench.profilers.compute.UncountedOpWarning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import nn

from archbench.errors import ArchbenchError
from archbench.profilers.compute import UnclassifiedOp, unclassified_from_text, warn_uncounted
from archbench.profilers.latency import LatencyConfig
from archbench.runner import Runner
from archbench.settings import (
    DEFAULT_FORMS,
    DEFAULT_INPUT,
    DEFAULT_PROFILE_METRICS,
    DEFAULT_RESOLUTIONS,
    RunSettings,
)

ModelLike = str | nn.Module


def _as_list(model_or_name: ModelLike | Sequence[ModelLike]) -> list[ModelLike]:
    return [model_or_name] if isinstance(model_or_name, str | nn.Module) else list(model_or_name)


def _named(items: Sequence[object]) -> tuple[list[str], dict[str, nn.Module]]:
    """Names for the items (a variant's own, a module's class name) and the modules given."""
    if not items:
        raise ArchbenchError("nothing to profile: give a variant name or a module")
    names, modules = [], {}
    for item in items:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, nn.Module):
            names.append(type(item).__name__)
            modules[type(item).__name__] = item.eval()
        else:
            raise ArchbenchError(f"cannot profile a {type(item).__name__}: give a variant name or an nn.Module")
    return names, modules


def profile(
    model_or_name: ModelLike | Sequence[ModelLike],
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    batch_size: int = 1,
    device: str = "cpu",
    metrics: Sequence[str] = DEFAULT_PROFILE_METRICS,
    *,
    counters: Sequence[str] = (),
    threads: int = 1,
    repeats: int = 1,
    latency: LatencyConfig | None = None,
    forms: Sequence[str] = DEFAULT_FORMS,
    input: str = DEFAULT_INPUT,
    calibrate: bool = False,
) -> pd.DataFrame:
    """Profile registered variants or modules; one row per model x resolution x form.

    Args:
        model_or_name: A registered name, any module taking a (B, 3, H, W) input, or a list of them.
        metrics: Any of ``params``, ``macs``, ``memory``, ``latency`` (``archbench.metrics``).
        counters: Cross-check counters to run as well: ``fvcore``, ``thop``.
        threads: CPU intra-op (and inter-op) threads, restored afterwards.
        repeats: Latency repeats, each in a fresh process (registered names only);
            1 measures in this process.
        latency: Settings of the latency measurement.
        forms: Deployment forms to time (``archbench.forms.FORMS``: eager, fused,
            channels_last, torchscript, onnxruntime, compile, fp16, bf16); each is
            checked first (``archbench.forms``). Rows are per model x resolution x form.
        input: What the models see (``archbench.inputs``): ``image`` (a photograph,
            the default), ``random`` or ``zeros``.
        calibrate: Also calibrate the BatchNorm statistics of modules given here on
            inputs of that kind before timing (registered variants always are; a user's
            module is otherwise measured as given).

    Returns:
        A DataFrame whose columns carry their units (``params``, ``macs``,
        ``flops`` = 2 x ``macs``, ``act_peak_bytes``, ``latency_ms_median``, ...);
        ``df.attrs`` holds the environment, the counting conventions, the ops the MAC
        counter could not count (``unclassified_ops``: one dict per model x resolution
        x op with ``variant``, ``resolution``, ``batch_size``, ``op``, ``calls``,
        ``modules``, ``may_hide_macs``; empty when every op was counted) and, with
        repeats, the per-process latency rows (``latency_processes``).

    Warns:
        UncountedOpWarning: Once per op (per call of ``profile``) that has no counting
            rule and may hide MACs; ``register_op_rule`` gives it one.
    """
    names, modules = _named(_as_list(model_or_name))
    settings = RunSettings(
        variants=tuple(names), resolutions=tuple(resolutions), batch_size=batch_size, device=device,
        metrics=tuple(metrics), counters=tuple(counters), threads=threads, repeats=repeats,
        forms=tuple(forms), input=input, latency=latency or LatencyConfig(),
    )
    if settings.repeats > 1 and modules:
        raise ArchbenchError("repeats > 1 measures in fresh processes, which need registered variant names")
    runner = Runner(settings, None, models=modules, strict=True, memory_probe=lambda: None,
                    calibrate_models=calibrate)
    result = runner.run()
    frame = pd.DataFrame(result.records).drop(columns=["status", "reason"])
    frame.attrs["environment"] = result.environment
    frame.attrs["conventions"] = result.conventions
    unclassified = unclassified_entries(result.records)
    frame.attrs["unclassified_ops"] = unclassified
    warned: set[str] = set()
    for entry in unclassified:
        if entry["may_hide_macs"] and entry["op"] not in warned:
            warned.add(entry["op"])
            op = UnclassifiedOp(entry["op"], entry["calls"], tuple(entry["modules"]), True)
            warn_uncounted([op], where=f"{entry['variant']} @ {entry['resolution']}: ", stacklevel=2)
    if result.latency_processes:
        frame.attrs["latency_processes"] = result.latency_processes
    return frame


def unclassified_entries(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per model x resolution x batch x op the counter could not count, from the
    records' ``unclassified_calls`` (forms of one cell share it: listed once)."""
    entries: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        for op in unclassified_from_text(record.get("unclassified_calls")):
            key = (record["variant"], record["resolution"], record.get("batch_size"), op.op)
            entries.setdefault(key, {"variant": record["variant"], "resolution": record["resolution"],
                                     "batch_size": record.get("batch_size"), **op.as_dict()})
    return list(entries.values())
