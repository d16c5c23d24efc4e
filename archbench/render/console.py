"""Rich tables on the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from archbench.metrics import (
    LATENCY,
    LATENCY_IQR,
    LATENCY_NOISE,
    LATENCY_SPREAD,
    Column,
    headline_columns,
)
from archbench.profilers.breakdown import ModuleRow
from archbench.profilers.compute import unclassified_from_text
from archbench.render.units import binary_bytes, grouped, percent, si, significant, with_spread
from archbench.results import RunResult


def breakdown_tables(
    variant: str, resolution: int, batch_size: int, row: dict[str, Any], modules: Sequence[ModuleRow],
    conventions: dict[str, str], counters: Sequence[str] = (),
) -> list[Table]:
    """``archbench show``: totals with their conventions, then the per-module table, then
    (when there are any) the ops the MAC counter could not count, with their calls and modules."""
    summary = Table(title=f"{variant} @ {resolution}x{resolution}, batch {batch_size}", title_justify="left")
    for column in ("quantity", "value", "convention"):
        summary.add_column(column)
    summary.add_row("params", grouped(int(row["params"])), conventions["params"])
    summary.add_row("MACs", grouped(int(row["macs"])), conventions["macs"])
    summary.add_row("FLOPs", si(int(row["flops"])), conventions["flops"])
    summary.add_row("activation peak", binary_bytes(int(row["act_peak_bytes"])), conventions["act_peak_bytes"])
    for counter in counters:
        summary.add_row(f"{counter} total", grouped(int(row[f"{counter}_total"])),
                        f"{conventions[f'{counter}_total']}; seen here as unsupported (counted 0): "
                        f"{row[f'{counter}_unsupported'] or 'none'}")
        agrees = row.get(f"{counter}_conv_linear_agrees")
        verdict = ("agrees with MACs, module by module" if agrees == 1 else
                   "differs from MACs (where: see the line above)" if agrees == 0 else "")
        summary.add_row(f"{counter} conv/linear", grouped(int(row[f"{counter}_conv_linear_macs"])), verdict)

    table = Table(title="by part, stage and module", title_justify="left")
    for column, justify in (("module", "left"), ("type", "left"), ("params", "right"), ("MACs", "right"),
                            ("MACs %", "right"), ("output shape", "left"), ("output", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    total_macs = modules[0].macs or 1
    for m in modules:
        label = "  " * m.depth + (m.module.rsplit(".", 1)[-1] if m.module else variant)
        table.add_row(label, m.type, grouped(m.params), si(m.macs), f"{100 * m.macs / total_macs:.1f}",
                      m.output_shape, binary_bytes(m.output_bytes))
    return [summary, table, *unclassified_table(row)]


def unclassified_table(row: dict[str, Any]) -> list[Table]:
    """The ops without a counting rule of one record (none: no table)."""
    ops = unclassified_from_text(row.get("unclassified_calls"))
    if not ops:
        return []
    table = Table(title="ops without a counting rule (counted as 0)", title_justify="left")
    for column, justify in (("op", "left"), ("calls", "right"), ("modules", "left"), ("may hide MACs", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for op in ops:
        table.add_row(op.op, str(op.calls), ", ".join(name or "(model)" for name in op.modules),
                      "yes" if op.may_hide_macs else "no")
    return [table]


class RichProgress:
    """A progress bar on stderr that redraws only between cells, never during a measurement."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console or Console(stderr=True), auto_refresh=False, transient=False,
        )
        self._task: Any = None

    def start(self, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("starting", total=total)
        self._progress.refresh()

    def step(self, description: str) -> None:
        self._progress.update(self._task, description=description)
        self._progress.refresh()

    def advance(self) -> None:
        self._progress.advance(self._task)
        self._progress.refresh()

    def stop(self) -> None:
        self._progress.update(self._task, description="done")
        self._progress.refresh()
        self._progress.stop()


def comparison_table(result: RunResult) -> Table:
    """One row per variant x resolution: the headline numbers, with units in the header."""
    baseline = result.settings.get("baseline")
    base_latency = {(r["resolution"], r.get("form", "eager")): r.get(LATENCY.name) for r in result.records
                    if r["variant"] == baseline and r["status"] == "ok"}
    several_forms = len(result.forms) > 1
    repeated = int(result.settings.get("repeats", 1)) > 1
    noise = LATENCY_SPREAD if repeated else LATENCY_IQR
    scaled = [c for c in headline_columns() if c.console is not None]
    table = Table(title=f"archbench {result.run_id}: {result.environment.get('cpu_model', '')}, "
                        f"{result.settings.get('device')}, {result.settings.get('threads')} thread(s)",
                  title_justify="left")
    columns = ["variant", "px", *(["form"] if several_forms else []), *(c.console[0] for c in scaled if c.console),
               f"latency ms (median ± {'spread' if repeated else 'IQR'})"]
    if baseline:
        columns.append(f"Δ latency vs {baseline}")
    columns.append("status")
    for c in columns:
        table.add_column(c, justify="left" if c in ("variant", "status") else "right")
    for r in result.records:
        ok = r["status"] == "ok"

        def number(column: Column, r: dict[str, Any] = r) -> str:
            value = r.get(column.name)
            return "-" if value is None or column.console is None else significant(value / column.console[1], 3)

        latency = r.get(LATENCY.name)
        row = [r["variant"], str(r["resolution"]), *([r.get("form", "eager")] if several_forms else []),
               *(number(c) for c in scaled), with_spread(latency, r.get(noise.name)) if latency is not None else "-"]
        if baseline:
            base = base_latency.get((r["resolution"], r.get("form", "eager")))
            row.append(percent((latency - base) / base * 100) if latency is not None and base else "-")
        verdict = r.get(LATENCY_NOISE.name, "ok")
        status = r["status"] if not ok else ("ok" if verdict in ("ok", None) else f"[yellow]{verdict}[/]")
        if not ok:
            status = f"[red]{r['status']}[/]: {r.get('reason', '')}"
        row.append(status)
        table.add_row(*row)
    return table
