"""Rich tables of a per-layer profile (``archbench show VARIANT --latency``).

Units are stated once, in the column titles; the caption carries the whole-model median,
the sum of layer medians, their ratio, the ceilings and the method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from archbench.render.units import significant

if TYPE_CHECKING:
    import pandas as pd


def _num(value: Any, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return significant(number, digits)


def _pct(value: Any) -> str:
    return f"{100.0 * float(value):.1f}"


def layers_caption(attrs: dict[str, Any]) -> str:
    """One paragraph: settings, reconciliation, ceilings, method."""
    return (
        f"{attrs.get('variant', '')} @ {attrs.get('resolution', '')} px, batch {attrs.get('batch_size', '')}, "
        f"{attrs.get('device', '')}, {attrs.get('threads', '')} thread(s), {attrs.get('form', '')}, "
        f"{attrs.get('input', '')} input, {attrs.get('dtype', '')}. "
        f"Whole forward median {_num(attrs.get('forward_ms', 0))} ms; sum of layer medians "
        f"{_num(attrs.get('layers_sum_ms', 0))} ms (ratio {_num(attrs.get('reconciliation', 0))}). "
        f"Ceilings: {_num(attrs.get('peak_gflops', 0))} GFLOP/s, {_num(attrs.get('bandwidth_gbps', 0))} GB/s. "
        f"Method: {attrs.get('method', '')}. Bytes: {attrs.get('bytes_convention', '')}."
    )


def layer_rows_table(df: pd.DataFrame, top: int | None = None) -> Table:
    """One row per layer; with ``top``, the ``top`` slowest, slowest first."""
    shown = df.sort_values("latency_ms", ascending=False).head(top) if top else df
    title = f"{df.attrs.get('variant', '')}: per-layer latency" + (f" (top {top} of {len(df)})" if top else "")
    table = Table(title=title, title_justify="left", caption=layers_caption(df.attrs), caption_justify="left")
    for column, justify in (("module", "left"), ("type", "left"), ("kind", "left"), ("calls", "right"),
                            ("latency (ms)", "right"), ("time %", "right"), ("MACs (M)", "right"),
                            ("bytes (MB)", "right"), ("FLOP/B", "right"), ("GFLOP/s", "right"),
                            ("GB/s", "right"), ("roof GFLOP/s", "right"), ("% of roof", "right"),
                            ("bound", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in shown.itertuples(index=False):
        table.add_row(
            str(row.module), str(row.type), str(row.kind), str(row.calls), _num(row.latency_ms),
            _pct(row.latency_share), _num(row.macs / 1e6), _num(row.bytes_moved / 1e6), _num(row.intensity),
            _num(row.attained_gflops), _num(row.attained_gbps), _num(row.roof_gflops), f"{row.pct_of_roof:.0f}",
            str(row.bound),
        )
    return table


def layer_groups_table(grouped: pd.DataFrame, by: str) -> Table:
    """A ``group_layers`` frame: each group's share of time beside its share of MACs and bytes."""
    keys = ["part", "stage"] if by == "stage" else [by]
    table = Table(title=f"{grouped.attrs.get('variant', '')}: latency by {by}", title_justify="left",
                  caption=layers_caption(grouped.attrs), caption_justify="left")
    for key in keys:
        table.add_column(key, overflow="fold")
    for column in ("layers", "latency (ms)", "time %", "MACs %", "bytes %", "MACs (M)", "bytes (MB)", "FLOP/B",
                   "GFLOP/s"):
        table.add_column(column, justify="right")
    for row in grouped.to_dict("records"):
        table.add_row(
            *(str(row[key]) for key in keys), str(row["layers"]), _num(row["latency_ms"]),
            _pct(row["latency_share"]), _pct(row["macs_share"]), _pct(row["bytes_share"]),
            _num(row["macs"] / 1e6), _num(row["bytes_moved"] / 1e6), _num(row["intensity"]),
            _num(row["attained_gflops"]),
        )
    return table


def latency_tables(df: pd.DataFrame, by: str = "module", top: int | None = None) -> list[Table]:
    """The table ``show --latency --by BY --top N`` prints."""
    if by == "module":
        return [layer_rows_table(df, top)]
    from archbench.profilers.layer_views import group_layers

    grouped = group_layers(df, by)
    if top:
        grouped = grouped.sort_values("latency_ms", ascending=False).head(top)
    return [layer_groups_table(grouped, by)]


def ceilings_table(ceilings: Any) -> Table:
    """``archbench machine``: the ceilings and how they were measured."""
    table = Table(title="archbench machine: attainable fp32 ceilings", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("device", f"{ceilings.device} ({ceilings.device_model})")
    table.add_row("threads", str(ceilings.threads))
    table.add_row("torch", ceilings.torch_version)
    table.add_row("compute peak", f"{_num(ceilings.peak_gflops)} GFLOP/s")
    table.add_row("memory bandwidth", f"{_num(ceilings.bandwidth_gbps)} GB/s (read + written)")
    table.add_row("ridge point", f"{_num(ceilings.ridge_intensity)} FLOP/B")
    table.add_row("measured", f"{ceilings.measured_at}" + (" (cached; --refresh re-measures)" if ceilings.cached else ""))
    table.add_row("method", ceilings.method)
    return table


__all__ = ["ceilings_table", "latency_tables", "layer_groups_table", "layer_rows_table", "layers_caption"]
