"""``archbench compare`` as text for a terminal and as markdown for a pull-request comment.

Renders a ``archbench.compare.Comparison``; the judging (what changed, what regressed)
is done there, and nothing here changes a verdict or the exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from archbench.compare import (
    EXIT_SAME,
    IMPROVEMENT,
    REGRESSION,
    CellComparison,
    CellKey,
    Comparison,
    LatencyDelta,
    MetricDelta,
)
from archbench.render.markdown import md_table
from archbench.render.text import indent, text_table
from archbench.render.units import grouped, percent, significant, with_spread

LATENCY_HEADER = ("cell", "base ms", "new ms", "change", "limit ms", "verdict")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def summary_line(comparison: Comparison) -> str:
    """E.g. ``3 exact changes in 1 cell, 1 latency regression (> max(10%, noise)), 0 improvements, 0 missing``."""
    c = comparison
    parts = [_plural(c.n_exact_changes, "exact change")
             + (f" in {_plural(len(c.exact_changes), 'cell')}" if c.exact_changes else "")]
    if c.latency_compared:
        parts.append(f"{_plural(len(c.latency_regressions), 'latency regression')} "
                     f"(> max({c.threshold_pct:g}%, noise))")
        parts.append(_plural(len(c.latency_improvements), "improvement"))
    else:
        parts.append("latency not compared")
    parts.append(f"{len(c.missing)} missing")
    return ", ".join(parts)


def _why(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _status_text(status: str | None, reason: str) -> str:
    if status is None:
        return "absent"
    return f"{status} ({reason})" if reason and status != "ok" else status


def presence(row: CellComparison) -> str:
    """What happened to the cell, in words ("" when it is ok, or not ok, in both runs alike)."""
    if row.base_status is None:
        return f"only in the new run ({_status_text(row.new_status, row.new_reason)})"
    if row.new_status is None:
        return f"only in the base run ({_status_text(row.base_status, row.base_reason)}), absent from the new run"
    if row.base_status == "ok" and row.new_status != "ok":
        return f"ok in the base run; {row.new_status} in the new run" + _why(row.new_reason)
    if row.base_status != "ok" and row.new_status == "ok":
        return f"{row.base_status} in the base run" + _why(row.base_reason) + "; ok in the new run"
    return ""


def _label_parts(comparison: Comparison) -> tuple[bool, bool]:
    """Whether labels need the batch size and the device (only when they vary)."""
    keys = [row.key for row in comparison.rows]
    return len({k.batch_size for k in keys}) > 1, len({k.device for k in keys}) > 1


def _label(key: CellKey, parts: tuple[bool, bool], code: bool = False) -> str:
    name = f"`{key.variant}`" if code else key.variant
    text = f"{name} @ {key.resolution} px"
    extra = [f"batch {key.batch_size}"] * parts[0] + [key.device] * parts[1] + [key.form] * (key.form != "eager")
    return f"{text} ({', '.join(extra)})" if extra else text


def _value(value: Any) -> str:
    """A metric value: counts (and integral floats) grouped, other floats to 4 significant figures."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return grouped(value)
    if isinstance(value, float):
        return grouped(int(value)) if value.is_integer() else significant(value, 4)
    return str(value)


def _change(metric: MetricDelta) -> str:
    if metric.abs_change is None:
        return "-"
    sign = "+" if metric.abs_change >= 0 else "-"
    magnitude = _value(abs(metric.abs_change))
    return f"{sign}{magnitude} ({percent(metric.pct_change)})"


def _limit(latency: LatencyDelta, threshold_pct: float) -> str:
    if latency.limit_ms is None:
        return "-"
    why = "noise" if latency.limit_from == "noise" else f"{threshold_pct:g}%"
    return f"{significant(latency.limit_ms, 2)} ({why})"


def _verdict(latency: LatencyDelta) -> str:
    return latency.verdict + (f" [{'; '.join(latency.flags)}]" if latency.flags else "")


def _latency_rows(rows: Sequence[CellComparison], comparison: Comparison, parts: tuple[bool, bool],
                  code: bool = False) -> list[list[str]]:
    out = []
    for row in rows:
        lat = row.latency
        if lat is None:
            continue
        out.append([_label(row.key, parts, code), with_spread(lat.base_ms, lat.base_noise_ms),
                    with_spread(lat.new_ms, lat.new_noise_ms), percent(lat.change_pct),
                    _limit(lat, comparison.threshold_pct), _verdict(lat)])
    return out


def render_text(comparison: Comparison, *, verbose: bool = False) -> str:
    """Plain text for a terminal: what changed, cell by cell, and a summary line last.

    By default only changed exact metrics, latency regressions and improvements and
    missing cells are listed; ``verbose`` adds every changed column and every cell's
    latency verdict.
    """
    c = comparison
    parts = _label_parts(c)
    lines = [f"archbench compare: base {c.base_run_id} -> new {c.new_run_id}"]
    if c.refusal:
        lines.append(c.refusal)
    lines += [f"warning: {w}" for w in c.warnings]

    cells = c.rows if verbose else c.exact_changes
    blocks = []
    for row in cells:
        shown = [m for m in row.metrics if m.changed and (verbose or m.kind == "exact")]
        if not shown:
            continue
        table = [[m.column, _value(m.base), "->", _value(m.new), _change(m)] for m in shown]
        blocks += [f"  {_label(row.key, parts)}", *indent(text_table(
            ("metric", "base", "", "new", "change"), table, "lrlrr")[2:], "    ")]
    if blocks:
        lines += ["", "Changed metrics" if verbose else "Exact metric changes", *blocks]

    if c.latency_compared or verbose:
        chosen = (c.rows if verbose
                  else [*c.latency_regressions, *c.latency_improvements])
        table = _latency_rows(chosen, c, parts)
        if table:
            lines += ["", f"Latency (median ± noise; limit = max({c.threshold_pct:g}% of base, "
                          "base noise + new noise))",
                      *indent(text_table(LATENCY_HEADER, table, "lrrrrl"))]

    if c.missing:
        lines += ["", "Missing or failed cells"]
        lines += [f"  {_label(row.key, parts)}: {presence(row)}" for row in c.missing]

    lines += ["", summary_line(c)]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """Text safe inside a markdown table cell (one line, pipes escaped)."""
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(comparison: Comparison) -> str:
    """A pull-request comment: summary, exact changes (old -> new), latency table, missing cells."""
    c = comparison
    parts = _label_parts(c)
    verdict = ("exit 0: no exact change, no latency regression, no lost cell" if c.exit_code == EXIT_SAME
               else f"**exit {c.exit_code}: changes found**")
    sections = [f"### archbench compare: `{c.base_run_id}` -> `{c.new_run_id}`",
                f"{verdict}: {summary_line(c)}"]
    notes = ([f"> {c.refusal}"] if c.refusal else []) + [f"> warning: {w}" for w in c.warnings]
    if notes:
        sections.append("\n>\n".join(notes))

    if c.exact_changes:
        rows = [[_label(row.key, parts, code=True), f"`{m.column}`", f"{_value(m.base)} -> {_value(m.new)}",
                 _change(m)]
                for row in c.exact_changes for m in row.exact_changes]
        sections.append("#### Exact metric changes\n\n"
                        + md_table(("cell", "metric", "base -> new", "change"), rows, "llrr"))

    latency_rows = _latency_rows([r for r in c.rows if r.latency is not None], c, parts, code=True)
    if latency_rows:
        for row in latency_rows:
            if row[-1].startswith((REGRESSION, IMPROVEMENT)):
                row[-1] = f"**{row[-1]}**"
        rule = (f"a change counts when it exceeds max({c.threshold_pct:g}% of base, base noise + new noise); "
                "noise = spread of per-process medians when repeated, else IQR of per-call samples")
        if not c.latency_compared:
            rule = "not compared: " + (c.refusal or "").removeprefix("latency not compared: ")
        sections.append("#### Latency (ms, median ± noise)\n\n"
                        + md_table(LATENCY_HEADER, latency_rows, "lrrrrl") + f"\n\n{rule}")

    if c.missing:
        rows = [[_label(row.key, parts, code=True), _md_cell(_status_text(row.base_status, row.base_reason)),
                 _md_cell(_status_text(row.new_status, row.new_reason))] for row in c.missing]
        sections.append("#### Missing or failed cells\n\n" + md_table(("cell", "base", "new"), rows, "lll"))
    return "\n\n".join(sections) + "\n"
