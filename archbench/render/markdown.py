"""report.md from a RunResult: tables a person wants to read, units stated once per table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from archbench.render.units import binary_bytes, column_scale, percent, significant, with_spread
from archbench.results import RunResult
from archbench.tables import (
    ABLATION_METRICS,
    METRIC_TABLES,
    MetricTable,
    ablation_pairs,
    ablation_rows,
    deltas_percent,
    detector_parts,
    latency_spread,
    pivot,
)

NOISE_MARK = "†"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` is one of l/r per column."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _noisy_cells(result: RunResult) -> set[tuple[str, int]]:
    return {(r["variant"], r["resolution"]) for r in result.records
            if r["status"] == "ok" and r.get("latency_noise", "ok") not in ("ok", None)}


def metric_section(result: RunResult, metric: MetricTable) -> str | None:
    table = pivot(result, metric.column)
    if table.empty:
        return None
    values = [v for v in table.to_numpy().ravel().tolist() if _finite(v)]
    scale, unit = column_scale(values, metric.kind)
    words = {"k": "thousands", "M": "millions", "G": "billions", "": "count"}
    unit_label = words[unit] if metric.kind == "count" else unit
    noisy = _noisy_cells(result)
    spread = latency_spread(result) if metric.kind == "ms" else pd.DataFrame()
    rows = []
    for variant in table.index:
        cells = [f"`{variant}`"]
        for resolution in table.columns:
            value = table.loc[variant, resolution]
            if not _finite(value):
                cells.append("-")
            elif metric.kind == "ms":
                s = spread.loc[variant, resolution] if variant in spread.index else None
                mark = NOISE_MARK if (variant, resolution) in noisy else ""
                cells.append(with_spread(float(value), None if s is None or not _finite(s) else float(s)) + mark)
            else:
                cells.append(significant(float(value) / scale, 3))
        rows.append(cells)
    header = ["variant", *(f"{r} px" for r in table.columns)]
    note = ""
    if metric.kind == "ms":
        spread_kind = ("spread (max - min) of per-process medians"
                       if int(result.settings.get("repeats", 1)) > 1 else "IQR of per-call samples")
        note = f"\n\nmedian ± {spread_kind}; {NOISE_MARK} = flagged by the noise check (see Notes)."
    return f"### {metric.title} ({unit_label})\n\n{md_table(header, rows)}{note}"


def delta_section(result: RunResult, baseline: str) -> str | None:
    parts = []
    for metric in METRIC_TABLES:
        if metric.column == "flops":
            continue  # identical to MACs in percent
        deltas = deltas_percent(pivot(result, metric.column), baseline)
        if deltas.empty:
            continue
        rows = [[f"`{v}`", *(percent(deltas.loc[v, r]) for r in deltas.columns)] for v in deltas.index if v != baseline]
        parts.append(f"**{metric.title}**\n\n" + md_table(["variant", *(f"{r} px" for r in deltas.columns)], rows))
    if not parts:
        return None
    return f"## Change against the baseline `{baseline}`\n\n" + "\n\n".join(parts)


def _fmt_metric(metric: str, value: float) -> str:
    if metric == "act_peak_bytes":
        return binary_bytes(value)
    if metric == "latency_ms_median":
        return f"{significant(value, 3)} ms"
    return f"{value:,.0f}"


def ablation_section(result: RunResult) -> str | None:
    pairs = ablation_pairs(result)
    blocks = []
    for pair in pairs:
        rows = []
        for row in ablation_rows(result, pair):
            cells = [f"{row['resolution']} px"]
            for metric in ABLATION_METRICS:
                if metric in row:
                    before, after, change = row[metric]
                    cells.append(f"{_fmt_metric(metric, after - before)} ({percent(change)})")
                else:
                    cells.append("-")
            rows.append(cells)
        if rows:
            before = "builder default" if pair.before is None else pair.before
            title = f"`{pair.base}` -> `{pair.changed}`: {pair.axis} = {before} -> {pair.after}"
            header = ["resolution", "Δ params", "Δ MACs", "Δ activation peak", "Δ latency"]
            blocks.append(f"**{title}**\n\n{md_table(header, rows)}")
    if not blocks:
        return None
    return ("## Ablations: what one change costs or saves\n\n"
            "Pairs of variants in this run that differ in exactly one argument; "
            "Δ = changed - base (change in %).\n\n" + "\n\n".join(blocks))


def parts_section(result: RunResult) -> str | None:
    frame = detector_parts(result)
    if frame.empty:
        return None
    columns = [c for c in frame.columns if c.startswith(("params_", "macs_"))]
    header = ["variant", "resolution", *(c.replace("params_", "params: ").replace("macs_", "MACs: ") for c in columns)]
    rows = []
    for record in frame.itertuples(index=False):
        data = record._asdict()
        cells = [f"`{data['variant']}`", f"{data['resolution']} px"]
        for c in columns:
            value = data[c]
            cells.append("-" if not _finite(value) else f"{value / 1e6:.3f}M")
        rows.append(cells)
    return "## Detectors by part\n\n" + md_table(header, rows)


def notes_section(result: RunResult) -> str:
    lines = []
    if not result.complete:
        lines.append("- **This run is incomplete** (interrupted); `archbench run --resume` measures the missing cells.")
    for r in result.records:
        if r["status"] != "ok":
            lines.append(f"- `{r['variant']}` @ {r['resolution']} px: **{r['status']}**: {r.get('reason', '')}")
        elif r.get("latency_noise", "ok") not in ("ok", None):
            load = r.get("latency_other_load")
            load_text = f", other processes' load {load:.2f} cores" if _finite(load) else ""
            lines.append(f"- `{r['variant']}` @ {r['resolution']} px: latency {r['latency_noise']} "
                         f"(IQR {significant(r['latency_ms_iqr'], 2)} ms on {significant(r['latency_ms_median'], 3)} ms"
                         f"{load_text}, {r.get('latency_attempts', 1)} attempt(s))")
    return "## Notes\n\n" + ("\n".join(lines) if lines else "No failed, skipped or noisy cells.")


def header_section(result: RunResult) -> str:
    env, s = result.environment, result.settings
    rows = [
        ("command", f"`{result.command}`" if result.command else "-"),
        ("created", result.created),
        ("complete", "yes" if result.complete else "no (interrupted)"),
        ("machine", f"{env.get('cpu_model', '?')}, {env.get('cpu_cores', '?')} usable cores"
                    + (f", {env['gpu_model']}" if env.get("gpu_model") else "")),
        ("device / threads", f"{s.get('device', 'cpu')} / {s.get('threads', 1)} intra-op thread(s)"),
        ("batch size", str(s.get("batch_size", 1))),
        ("latency repeats", f"{s.get('repeats', 1)} process(es)"),
        ("software", f"archbench {result.archbench_version}, torch {env.get('torch', '?')}, "
                     f"oneDNN {env.get('onednn', '?')}, Python {env.get('python', '?')}"),
    ]
    conventions = "\n".join(f"- `{k}`: {v}" for k, v in result.conventions.items())
    return (f"# archbench report `{result.run_id}`\n\n" + md_table(["", ""], [list(r) for r in rows], "ll")
            + ("\n\nConventions:\n\n" + conventions if conventions else ""))


def render_markdown(result: RunResult, plots: Sequence[str] = ()) -> str:
    """The whole report; deterministic for a given results file and plot list."""
    sections: list[str | None] = [header_section(result), "## Results"]
    sections += [metric_section(result, m) for m in METRIC_TABLES]
    baseline = result.settings.get("baseline")
    if baseline:
        sections.append(delta_section(result, baseline))
    sections += [ablation_section(result), parts_section(result)]
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots))
    sections.append(notes_section(result))
    return "\n\n".join(s for s in sections if s) + "\n"
