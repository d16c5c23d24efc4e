"""Comparison tables computed from results: pivots, baseline deltas, ablation pairs.

Pure functions of a ``RunResult``: they neither measure nor format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from archbench.metrics import LATENCY, LATENCY_IQR, LATENCY_SPREAD, Column, headline_columns
from archbench.results import RunResult


def ablation_columns() -> tuple[Column, ...]:
    """The headline columns an ablation or a baseline delta shows (``flops`` would repeat ``macs``)."""
    return tuple(c for c in headline_columns() if c.derived_from is None)


def ok_frame(result: RunResult) -> pd.DataFrame:
    """Records with status ok, as a DataFrame."""
    frame = result.frame()
    return frame[frame["status"] == "ok"] if "status" in frame else frame


def variant_order(result: RunResult) -> list[str]:
    """Variants in the order the run was asked for, then any others found in records."""
    asked = list(result.settings.get("variants", []))
    return list(dict.fromkeys([*asked, *(r["variant"] for r in result.records)]))


def pivot(result: RunResult, column: str, form: str | None = None) -> pd.DataFrame:
    """Variants as rows (run order), resolutions as columns, for one deployment form
    (default: the run's first; static metrics are the same in every form)."""
    frame = ok_frame(result)
    if "form" in frame:
        frame = frame[frame["form"] == (form or result.forms[0])]
    if column not in frame or frame[column].isna().all():
        return pd.DataFrame()
    table = frame.pivot_table(index="variant", columns="resolution", values=column, aggfunc="first")
    return table.reindex([v for v in variant_order(result) if v in table.index])


def latency_spread(result: RunResult, form: str | None = None) -> pd.DataFrame:
    """The spread that goes with each latency median: between processes when repeated, else the IQR."""
    repeated = int(result.settings.get("repeats", 1)) > 1
    return pivot(result, (LATENCY_SPREAD if repeated else LATENCY_IQR).name, form)


def speedups(result: RunResult, form: str, reference: str = "eager") -> pd.DataFrame:
    """Latency of ``reference`` divided by latency of ``form`` (above 1: the form is faster)."""
    ref, other = pivot(result, LATENCY.name, reference), pivot(result, LATENCY.name, form)
    if ref.empty or other.empty:
        return pd.DataFrame()
    return ref / other


def ranking_changes(result: RunResult, form: str, reference: str = "eager") -> dict[int, tuple[list[str], list[str]]]:
    """Resolutions at which ordering the variants by latency differs between two forms:
    resolution -> (order under ``reference``, order under ``form``), fastest first,
    over the variants measured in both."""
    ref, other = pivot(result, LATENCY.name, reference), pivot(result, LATENCY.name, form)
    changes = {}
    for resolution in ref.columns.intersection(other.columns):
        both = ref[resolution].dropna().index.intersection(other[resolution].dropna().index)
        order_ref = list(ref.loc[both, resolution].sort_values().index)
        order_other = list(other.loc[both, resolution].sort_values().index)
        if order_ref != order_other:
            changes[int(resolution)] = (order_ref, order_other)
    return changes


def deltas_percent(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Percent change of every row against the ``baseline`` row."""
    if baseline not in table.index:
        return pd.DataFrame()
    base = table.loc[baseline]
    return (table - base) / base * 100.0


@dataclass(frozen=True)
class AblationPair:
    base: str
    changed: str
    axis: str
    before: Any
    after: Any


def ablation_pairs(result: RunResult) -> list[AblationPair]:
    """Pairs of variants in the run that differ in exactly one builder argument.

    The reference side is the ablation's declared base where there is one, else
    the variant asked for first.
    """
    info = result.variants
    names = [n for n in variant_order(result) if n in info]
    pairs = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = info[first], info[second]
            if a.get("builder") != b.get("builder"):
                continue
            args_a, args_b = a.get("args", {}), b.get("args", {})
            differing = [k for k in dict.fromkeys([*args_a, *args_b]) if args_a.get(k) != args_b.get(k)]
            if len(differing) != 1:
                continue
            base, changed = (second, first) if a.get("base") == second else (first, second)
            key = differing[0]
            pairs.append(AblationPair(base, changed, key, info[base]["args"].get(key), info[changed]["args"].get(key)))
    return pairs


def ablation_rows(result: RunResult, pair: AblationPair) -> list[dict[str, Any]]:
    """Per resolution: each metric for base and changed, and the change in % (NaN if unmeasured)."""
    rows = []
    for resolution in result.settings.get("resolutions", []):
        base, changed = result.record(pair.base, resolution), result.record(pair.changed, resolution)
        if not base or not changed or base["status"] != "ok" or changed["status"] != "ok":
            continue
        row: dict[str, Any] = {"resolution": resolution}
        for metric in ablation_columns():
            before, after = base.get(metric.name), changed.get(metric.name)
            if before is None or after is None:
                continue
            row[metric.name] = (before, after, (after - before) / before * 100.0 if before else float("nan"))
        rows.append(row)
    return rows


def part_columns(result: RunResult, prefix: str) -> list[str]:
    """``params_backbone``-style columns present for detectors, in first-seen order."""
    detectors = {n for n, v in result.variants.items() if v.get("kind") == "detector"}
    seen: dict[str, None] = {}
    for record in result.records:
        if record["variant"] in detectors:
            for key in record:
                if key.startswith(prefix):
                    seen.setdefault(key)
    return list(seen)


def detector_parts(result: RunResult, resolutions: Sequence[int] | None = None) -> pd.DataFrame:
    """Params and MACs by part (backbone/neck/head) for the detectors in the run."""
    detectors = [n for n in variant_order(result) if result.variants.get(n, {}).get("kind") == "detector"]
    columns = part_columns(result, "params_") + part_columns(result, "macs_")
    frame = ok_frame(result)
    if not detectors or not columns or frame.empty:
        return pd.DataFrame()
    chosen = frame[frame["variant"].isin(detectors)]
    if "form" in chosen:
        chosen = chosen[chosen["form"] == result.forms[0]]
    if resolutions is not None:
        chosen = chosen[chosen["resolution"].isin(resolutions)]
    return chosen[["variant", "resolution", *columns]].reset_index(drop=True)
