"""Rich tables on the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from archbench.render.units import binary_bytes, grouped, si


def print_breakdown(
    variant: str, resolution: int, batch_size: int, depth: int, counters: Sequence[str],
    console: Console | None = None,
) -> None:
    """``archbench show``: totals with their conventions, then the per-module table."""
    from archbench.factory import create_model
    from archbench.profilers.breakdown import module_breakdown
    from archbench.profiling import CONVENTIONS, check_resolution, profile, sample_input

    console = console or Console(width=max(Console().width, 110))
    model = create_model(variant)
    check_resolution(model, variant, resolution)
    row = profile(model, (resolution,), batch_size, counters=counters).iloc[0]
    summary = Table(title=f"{variant} @ {resolution}x{resolution}, batch {batch_size}", title_justify="left")
    for column in ("quantity", "value", "convention"):
        summary.add_column(column)
    summary.add_row("params", grouped(int(row["params"])), CONVENTIONS["params"])
    summary.add_row("MACs", grouped(int(row["macs"])), CONVENTIONS["macs"])
    summary.add_row("FLOPs", si(int(row["flops"])), CONVENTIONS["flops"])
    summary.add_row("activation peak", binary_bytes(int(row["act_peak_bytes"])), CONVENTIONS["act_peak_bytes"])
    for counter in counters:
        summary.add_row(f"{counter} total", grouped(int(row[f"{counter}_total"])),
                        f"unsupported (counted 0): {row[f'{counter}_unsupported'] or 'none'}")
    console.print(summary)

    table = Table(title="by part, stage and module", title_justify="left")
    for column, justify in (("module", "left"), ("type", "left"), ("params", "right"), ("MACs", "right"),
                            ("MACs %", "right"), ("output shape", "left"), ("output", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = module_breakdown(model, sample_input(batch_size, resolution), max_depth=depth)
    total_macs = rows[0].macs or 1
    for r in rows:
        label = "  " * r.depth + (r.module.rsplit(".", 1)[-1] if r.module else variant)
        table.add_row(label, r.type, grouped(r.params), si(r.macs), f"{100 * r.macs / total_macs:.1f}",
                      r.output_shape, binary_bytes(r.output_bytes))
    console.print(table)
