"""report.md from a RunResult: tables a person wants to read, units stated once per table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from archbench.metrics import LATENCY, LATENCY_IQR, Column, headline_columns
from archbench.profilers.speed import is_slow, slowdowns
from archbench.render.units import binary_bytes, column_scale, percent, significant, with_spread
from archbench.results import RunResult
from archbench.tables import (
    ablation_columns,
    ablation_pairs,
    ablation_rows,
    deltas_percent,
    detector_parts,
    latency_spread,
    pivot,
    ranking_changes,
    speedups,
)

NOISE_MARK = "†"
INPUT_WORDS = {
    "image": "image: a photograph (matplotlib's grace_hopper.jpg), cropped, resized, ImageNet-normalised",
    "random": "random: seeded normal noise",
    "zeros": "zeros",
}


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` is one of l/r per column."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _noisy_cells(result: RunResult, form: str) -> set[tuple[str, int]]:
    return {(r["variant"], r["resolution"]) for r in result.records
            if r["status"] == "ok" and r.get("form", "eager") == form
            and r.get("latency_noise", "ok") not in ("ok", None)}


def _cell(record: dict[str, Any], forms: Sequence[str]) -> str:
    form = f", {record.get('form', 'eager')}" if len(forms) > 1 else ""
    return f"`{record['variant']}` @ {record['resolution']} px{form}"


def metric_section(result: RunResult, metric: Column, form: str | None = None) -> str | None:
    form = form or result.forms[0]
    table = pivot(result, metric.name, form)
    if table.empty:
        return None
    values = [v for v in table.to_numpy().ravel().tolist() if _finite(v)]
    scale, unit = column_scale(values, metric.scale)
    words = {"k": "thousands", "M": "millions", "G": "billions", "": "count"}
    unit_label = words[unit] if metric.scale == "count" else unit
    noisy = _noisy_cells(result, form)
    spread = latency_spread(result, form) if metric.scale == "ms" else pd.DataFrame()
    rows = []
    for variant in table.index:
        cells = [f"`{variant}`"]
        for resolution in table.columns:
            value = table.loc[variant, resolution]
            if not _finite(value):
                cells.append("-")
            elif metric.scale == "ms":
                s = spread.loc[variant, resolution] if variant in spread.index else None
                mark = NOISE_MARK if (variant, resolution) in noisy else ""
                cells.append(with_spread(float(value), None if s is None or not _finite(s) else float(s)) + mark)
            else:
                cells.append(significant(float(value) / scale, 3))
        rows.append(cells)
    header = ["variant", *(f"{r} px" for r in table.columns)]
    note = ""
    if metric.scale == "ms":
        spread_kind = ("spread (max - min) of per-process medians"
                       if int(result.settings.get("repeats", 1)) > 1 else "IQR of per-call samples")
        note = f"\n\nmedian ± {spread_kind}; {NOISE_MARK} = flagged by the noise check (see Notes)."
    title = f"{metric.title}, {form}" if metric.scale == "ms" and len(result.forms) > 1 else metric.title
    return f"### {title} ({unit_label})\n\n{md_table(header, rows)}{note}"


def delta_section(result: RunResult, baseline: str) -> str | None:
    parts = []
    for metric in ablation_columns():  # not FLOPs: identical to MACs in percent
        deltas = deltas_percent(pivot(result, metric.name), baseline)
        if deltas.empty:
            continue
        rows = [[f"`{v}`", *(percent(deltas.loc[v, r]) for r in deltas.columns)] for v in deltas.index if v != baseline]
        parts.append(f"**{metric.title}**\n\n" + md_table(["variant", *(f"{r} px" for r in deltas.columns)], rows))
    if not parts:
        return None
    return f"## Change against the baseline `{baseline}`\n\n" + "\n\n".join(parts)


def _fmt_metric(metric: Column, value: float) -> str:
    if metric.scale == "bytes":
        return binary_bytes(value)
    if metric.scale == "ms":
        return f"{significant(value, 3)} ms"
    return f"{value:,.0f}"


def ablation_section(result: RunResult) -> str | None:
    pairs = ablation_pairs(result)
    blocks = []
    for pair in pairs:
        rows = []
        for row in ablation_rows(result, pair):
            cells = [f"{row['resolution']} px"]
            for metric in ablation_columns():
                if metric.name in row:
                    before, after, change = row[metric.name]
                    cells.append(f"{_fmt_metric(metric, after - before)} ({percent(change)})")
                else:
                    cells.append("-")
            rows.append(cells)
        if rows:
            before = "builder default" if pair.before is None else pair.before
            title = f"`{pair.base}` -> `{pair.changed}`: {pair.axis} = {before} -> {pair.after}"
            header = ["resolution", *(f"Δ {metric.label_text}" for metric in ablation_columns())]
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


def _form_check_text(checked: Sequence[dict[str, Any]]) -> str:
    """What the form's checks found, over the cells that were checked."""
    if not checked:
        return ""
    worst = max(r["form_max_rel_err"] for r in checked)
    prep = [r["form_prepare_s"] for r in checked]
    made = f"time to make the form {min(prep):.2g}-{max(prep):.2g} s.\n\n"
    grounded = [r for r in checked if _finite(r.get("form_ref_rel_err"))]
    if not grounded:  # results written before checks had a float64 reference
        return (f"Checked against eager before timing: max relative error {worst:.1e} "
                f"(tolerance {checked[0]['form_tolerance']:.0e}); " + made)
    ref = max(r["form_ref_rel_err"] for r in grounded)
    own = max(r["eager_ref_rel_err"] for r in grounded)
    vacuous = sum(str(r.get("form_check", "")).startswith("vacuous") for r in checked)
    return (f"Checked before timing against a float64 reference: max relative error {ref:.1e} "
            f"(eager float32's own: up to {own:.1e}; accepted: up to {min(r['form_tolerance'] for r in grounded):.1e}"
            f"-{max(r['form_tolerance'] for r in grounded):.1e}); against eager float32 {worst:.1e}"
            + (f"; **{vacuous} check(s) vacuous** (see Notes)" if vacuous else "") + "; " + made)


def forms_section(result: RunResult) -> str | None:
    """Speed-up of every deployment form over eager, and whether the ranking of variants changes."""
    others = [f for f in result.forms if f != "eager"]
    if "eager" not in result.forms or not others:
        return None
    blocks = []
    for form in others:
        table = speedups(result, form)
        if table.empty:
            blocks.append(f"**{form}**: no cell measured (see Notes).")
            continue
        rows = [[f"`{v}`", *("-" if not _finite(table.loc[v, r]) else f"{table.loc[v, r]:.2f}x"
                             for r in table.columns)] for v in table.index]
        checked = [r for r in result.records if r.get("form") == form and r.get("form_max_rel_err") is not None]
        check = _form_check_text(checked)
        changes = ranking_changes(result, form)
        ranking = ("Ranking of variants by latency: same as eager at every resolution." if not changes else
                   "Ranking of variants by latency **changes**: " + "; ".join(
                       f"at {r} px eager {' < '.join(a)}, {form} {' < '.join(b)}" for r, (a, b) in changes.items()))
        blocks.append(f"**{form}** (eager latency / {form} latency; above 1 = faster)\n\n{check}"
                      + md_table(["variant", *(f"{r} px" for r in table.columns)], rows) + f"\n\n{ranking}")
    return ("## Deployment forms: speed-up over eager\n\n"
            "Every form was checked before timing (errors and tolerance in results.json: "
            "`form_max_rel_err`, `form_tolerance`); `form_prepare_s` is the time to make the form "
            "(for `compile`: the compile time at that resolution).\n\n" + "\n\n".join(blocks))


def notes_section(result: RunResult) -> str:
    lines = []
    if not result.complete:
        lines.append("- **This run is incomplete** (interrupted); `archbench run --resume` measures the missing cells.")
    slowed = slowdowns(result.records, "latency_probe_ms")
    for r, slowdown in zip(result.records, slowed, strict=True):
        if r["status"] == "ok" and is_slow(slowdown):
            lines.append(f"- {_cell(r, result.forms)}: latency measured while the machine ran slow: its speed probe "
                         f"took {slowdown:.2f}x the run's fastest (no load needs to show for it; the latency is "
                         "kept as measured)")
        if r["status"] != "ok":
            lines.append(f"- {_cell(r, result.forms)}: **{r['status']}**: {r.get('reason', '')}")
        elif r.get("latency_noise", "ok") not in ("ok", None):
            load = r.get("latency_other_load")
            load_text = f", other processes' load {load:.2f} cores" if _finite(load) else ""
            lines.append(f"- {_cell(r, result.forms)}: latency {r['latency_noise']} "
                         f"(IQR {significant(r[LATENCY_IQR.name], 2)} ms on {significant(r[LATENCY.name], 3)} ms"
                         f"{load_text}, {r.get('latency_attempts', 1)} attempt(s))")
        if r["status"] == "ok" and str(r.get("form_check", "")).startswith("vacuous"):
            lines.append(f"- {_cell(r, result.forms)}: the form check proves little: {r['form_check']}")
    lines += _uncounted_notes(result)
    return "## Notes\n\n" + ("\n".join(lines) if lines else "No failed, skipped or noisy cells.")


def _uncounted_notes(result: RunResult) -> list[str]:
    """Ops the MAC counter could not count, once per variant x resolution (not per form)."""
    seen: set[tuple[str, int]] = set()
    lines = []
    for r in result.records:
        text = r.get("unclassified_calls")
        if r["status"] != "ok" or not isinstance(text, str) or (r["variant"], r["resolution"]) in seen:
            continue
        seen.add((r["variant"], r["resolution"]))
        for op in json.loads(text):  # the JSON list of compute.unclassified_to_text
            where = ", ".join(f"`{name or '(model)'}`" for name in op["modules"])
            hides = " (**may hide MACs**)" if op["may_hide_macs"] else ""
            lines.append(f"- `{r['variant']}` @ {r['resolution']} px: `{op['op']}` has no counting rule "
                         f"(counted as 0): {op['calls']} call(s) in {where}{hides}")
    return lines


def header_section(result: RunResult) -> str:
    env, s = result.environment, result.settings
    rows = [
        ("command", f"`{result.command}`" if result.command else "-"),
        ("created", result.created),
        ("complete", "yes" if result.complete else "no (interrupted)"),
        ("machine", f"{env.get('cpu_model', '?')}, {env.get('cpu_cores', '?')} usable cores"
                    + (f", {env['gpu_model']}" if env.get("gpu_model") else "")),
        ("device / threads", f"{s.get('device', 'cpu')} / {s.get('threads', 1)} intra-op thread(s)"
                             + (f"; TF32 {'on' if s.get('tf32') else 'off'}" if str(s.get("device")).startswith("cuda")
                                else "")),
        ("batch size", str(s.get("batch_size", 1))),
        ("latency repeats", f"{s.get('repeats', 1)} process(es)"),
        ("deployment forms", ", ".join(result.forms)),
        ("input", INPUT_WORDS.get(s.get("input", ""), "random: seeded normal noise (recorded before inputs were a "
                                                       "setting)")),
        ("software", f"archbench {result.archbench_version}, torch {env.get('torch', '?')}, "
                     f"oneDNN {env.get('onednn', '?')}, Python {env.get('python', '?')}"),
    ]
    conventions = "\n".join(f"- `{k}`: {v}" for k, v in result.conventions.items())
    return (f"# archbench report `{result.run_id}`\n\n" + md_table(["", ""], [list(r) for r in rows], "ll")
            + ("\n\nConventions:\n\n" + conventions if conventions else ""))


def render_markdown(result: RunResult, plots: Sequence[str] = ()) -> str:
    """The whole report; deterministic for a given results file and plot list."""
    sections: list[str | None] = [header_section(result), "## Results"]
    for metric in headline_columns():
        forms = result.forms if metric.scale == "ms" else result.forms[:1]
        sections += [metric_section(result, metric, form) for form in forms]
    baseline = result.settings.get("baseline")
    if baseline:
        sections.append(delta_section(result, baseline))
    # these sections' modules import md_table from here
    from archbench.render.frontier import frontier_sections
    from archbench.render.rankings import ranking_sections
    from archbench.render.where_time_goes import time_sections

    sections += [forms_section(result), *ranking_sections(result), ablation_section(result), parts_section(result),
                 *frontier_sections(result), *time_sections(result, plots)]
    if plots:
        sections.append("## Plots\n\n" + "\n\n".join(f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots))
    sections.append(notes_section(result))
    return "\n\n".join(s for s in sections if s) + "\n"
