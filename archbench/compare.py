"""``archbench compare BASE.json NEW.json``: what changed between two runs.

Reads two results files and never measures. Every cell (variant x resolution x
batch_size x device) present in either run becomes one row; each row holds, for
every metric column present in either record, the base value, the new value, the
absolute and the percent change.

Three kinds of change are judged differently:

**Exact metrics** (``EXACT_METRICS`` plus the patterns in ``EXACT_PATTERNS``): the
integer-valued static counts -- params, MACs, FLOPs, element counts, byte sizes,
per-part params/MACs. They are deterministic, so any difference is a change.
Third-party cross-check totals (``fvcore_*``, ``thop_*``) are left out on purpose:
they are not archbench's counts and move with those tools' versions; so are the CUDA
allocator peaks (``cuda_max_*_bytes``), which depend on the allocator and kernels.

**Latency** (``latency_ms_median``): a cell *regressed* when::

    new - base > max(threshold_pct / 100 * base, noise)      noise = base_noise + new_noise

and *improved* when ``base - new`` exceeds the same limit. Each run's noise is its
record's ``latency_ms_spread`` (max - min of per-process medians, written when the
run had ``repeats > 1``), else ``latency_ms_iqr`` (IQR of the per-call samples).
Summing the two is a deliberately conservative bound: the change has to be larger
than both runs' spreads laid end to end, i.e. the intervals ``median ± spread`` of
the two runs must not overlap. It assumes nothing about independence (a
root-sum-square would be smaller), because a false "regression" on a pull request
costs more than a missed small one, and the percent threshold is the knob for
sensitivity. A missing spread counts as 0.

Latency is compared only when both runs measured under the same conditions: the same
``cpu_model``, thread count (``settings.threads``, and ``environment.intra_op_threads``
where both runs record it), ``torch`` version and device (``settings.device``; also
``gpu_model`` where either run records it). Deployment forms (fp16, onnxruntime, ...)
are part of each cell's key, so cells only ever meet their own form. Otherwise the
comparison *refuses* latency (``Comparison.refusal`` says which fields differ), shows
latency as "not compared", and still compares the exact metrics. ``force=True``
compares anyway and records a warning.

**Everything else** (p90, cold latency, noise verdicts, ...) is carried in the rows
for completeness and never changes the exit code.

Exit code (``Comparison.exit_code``):

- ``EXIT_SAME`` (0): nothing changed beyond noise. Latency improvements, cells that
  appear only in the new run, cells that failed in the base run and are ok in the new
  one, and a refused latency comparison do not change it (they are all reported).
- ``EXIT_CHANGED`` (1): an exact metric changed, or a latency regressed, or a cell
  that is in the base run is absent from the new run, or a cell that was ok in the
  base run failed or was skipped in the new one.

Unreadable, corrupt or foreign files, an unknown output format and a negative or
non-finite threshold raise ``ArchbenchError`` (the CLI exits with ``EXIT_USAGE``, 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NamedTuple

from archbench.errors import ArchbenchError
from archbench.render.markdown import md_table
from archbench.render.units import grouped, percent, significant, with_spread
from archbench.results import KEY_COLUMNS, RunResult, load

EXIT_SAME = 0
EXIT_CHANGED = 1

#: Integer-valued static metrics compared for exact equality, by name ...
EXACT_METRICS: frozenset[str] = frozenset({
    "params", "trainable_params", "macs", "flops",
    "act_peak_bytes", "param_bytes", "buffer_bytes", "input_bytes",
})
#: ... and by pattern (``fnmatch``, case-sensitive): element counts beside the MACs
#: (``norm_elems``, ``pool_elems``, ...) and detectors' per-part counts
#: (``params_backbone``, ``macs_neck``, ...).
EXACT_PATTERNS: tuple[str, ...] = ("*_elems", "params_*", "macs_*")

LATENCY_COLUMN = "latency_ms_median"
#: Per-record noise columns, in order of preference (see the module docstring).
NOISE_COLUMNS: tuple[str, ...] = ("latency_ms_spread", "latency_ms_iqr")
FORMATS = ("text", "markdown")

# Latency verdicts of one cell.
REGRESSION = "regression"
IMPROVEMENT = "improvement"
WITHIN_NOISE = "within noise"
NOT_COMPARED = "not compared"
UNMEASURED = "unmeasured"


def is_exact(column: str) -> bool:
    """True for the integer-valued static metrics that must match exactly."""
    return column in EXACT_METRICS or any(fnmatchcase(column, p) for p in EXACT_PATTERNS)


def metric_kind(column: str) -> str:
    """``"exact"``, ``"latency"`` (any ``latency_*`` column) or ``"other"``."""
    if is_exact(column):
        return "exact"
    return "latency" if column.startswith("latency_") else "other"


class CellKey(NamedTuple):
    variant: str
    resolution: int
    batch_size: int
    device: str
    form: str = "eager"


@dataclass(frozen=True)
class MetricDelta:
    """One metric column of one cell in both runs; ``None`` where a run lacks it."""

    column: str
    kind: str  # "exact", "latency" or "other"
    base: Any
    new: Any
    abs_change: float | None  # new - base, when both are numbers
    pct_change: float | None  # (new - base) / base * 100, when both are numbers and base != 0

    @property
    def in_both(self) -> bool:
        return self.base is not None and self.new is not None

    @property
    def changed(self) -> bool:
        """Both runs have the column and the values differ."""
        return self.in_both and self.base != self.new


@dataclass(frozen=True)
class LatencyDelta:
    """The latency verdict of one cell (see the module docstring for the rule)."""

    base_ms: float | None
    new_ms: float | None
    base_noise_ms: float | None
    new_noise_ms: float | None
    verdict: str  # REGRESSION, IMPROVEMENT, WITHIN_NOISE, NOT_COMPARED or UNMEASURED
    limit_ms: float | None = None  # max(threshold, noise): what a change must exceed
    limit_from: str = ""  # "noise" or "threshold": which bound set the limit
    flags: tuple[str, ...] = ()  # non-ok noise verdicts of the runs, e.g. ("new: contended",)

    @property
    def change_ms(self) -> float | None:
        if self.base_ms is None or self.new_ms is None:
            return None
        return self.new_ms - self.base_ms

    @property
    def change_pct(self) -> float | None:
        change = self.change_ms
        if change is None or not self.base_ms:
            return None
        return change / self.base_ms * 100.0


@dataclass(frozen=True)
class CellComparison:
    """One variant x resolution x batch_size x device cell in both runs."""

    key: CellKey
    base_status: str | None  # None: the cell is not in the base run
    new_status: str | None  # None: the cell is not in the new run
    base_reason: str = ""
    new_reason: str = ""
    metrics: tuple[MetricDelta, ...] = ()
    latency: LatencyDelta | None = None

    def metric(self, column: str) -> MetricDelta | None:
        return next((m for m in self.metrics if m.column == column), None)

    @property
    def exact_changes(self) -> tuple[MetricDelta, ...]:
        return tuple(m for m in self.metrics if m.kind == "exact" and m.changed)

    @property
    def is_missing(self) -> bool:
        """In one run only, or ok in one run and failed/skipped in the other."""
        return (self.base_status is None or self.new_status is None
                or (self.base_status == "ok") != (self.new_status == "ok"))

    @property
    def is_lost(self) -> bool:
        """Was in the base run and is absent from the new one, or was ok and no longer is."""
        if self.base_status is None:
            return False
        return self.new_status is None or (self.base_status == "ok" and self.new_status != "ok")

    @property
    def presence(self) -> str:
        """What happened to the cell, in words ("" when it is ok, or not ok, in both runs alike)."""
        if self.base_status is None:
            return f"only in the new run ({_status_text(self.new_status, self.new_reason)})"
        if self.new_status is None:
            return f"only in the base run ({_status_text(self.base_status, self.base_reason)}), absent from the new run"
        if self.base_status == "ok" and self.new_status != "ok":
            return f"ok in the base run; {self.new_status} in the new run" + _why(self.new_reason)
        if self.base_status != "ok" and self.new_status == "ok":
            return f"{self.base_status} in the base run" + _why(self.base_reason) + "; ok in the new run"
        return ""


def _why(reason: str) -> str:
    return f" ({reason})" if reason else ""


def _status_text(status: str | None, reason: str) -> str:
    if status is None:
        return "absent"
    return f"{status} ({reason})" if reason and status != "ok" else status


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two runs; pure data, rendered by ``render_text`` / ``render_markdown``."""

    base_run_id: str
    new_run_id: str
    threshold_pct: float
    rows: tuple[CellComparison, ...]
    exact_changes: tuple[CellComparison, ...]
    latency_regressions: tuple[CellComparison, ...]
    latency_improvements: tuple[CellComparison, ...]
    missing: tuple[CellComparison, ...]
    latency_compared: bool
    refusal: str | None
    warnings: tuple[str, ...] = ()
    environment_differences: tuple[str, ...] = field(default=())

    @property
    def n_exact_changes(self) -> int:
        """Changed exact metric values over all cells."""
        return sum(len(row.exact_changes) for row in self.exact_changes)

    @property
    def lost(self) -> tuple[CellComparison, ...]:
        return tuple(row for row in self.missing if row.is_lost)

    @property
    def exit_code(self) -> int:
        changed = self.exact_changes or self.latency_regressions or self.lost
        return EXIT_CHANGED if changed else EXIT_SAME


# -- comparing -----------------------------------------------------------------


def _number(value: Any) -> float | int | None:
    """``value`` as a finite number, else None (strings, bools, None, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _present(value: Any) -> Any:
    """None for absent values, NaN and inf (results files store them as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric_delta(column: str, base: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> MetricDelta:
    b = _present(base.get(column)) if base is not None else None
    n = _present(new.get(column)) if new is not None else None
    bn, nn = _number(b), _number(n)
    abs_change = pct_change = None
    if bn is not None and nn is not None:
        abs_change = nn - bn
        pct_change = abs_change / bn * 100.0 if bn else None
    return MetricDelta(column, metric_kind(column), b, n, abs_change, pct_change)


def _columns(*records: Mapping[str, Any] | None) -> list[str]:
    skip = {*KEY_COLUMNS, "status", "reason"}
    seen: dict[str, None] = {}
    for record in records:
        for column in record or ():
            if column not in skip:
                seen.setdefault(column)
    return list(seen)


def record_noise(record: Mapping[str, Any]) -> float | None:
    """A record's latency noise: ``latency_ms_spread`` when present, else ``latency_ms_iqr``."""
    for column in NOISE_COLUMNS:
        value = _number(record.get(column))
        if value is not None:
            return float(value)
    return None


def _noise_flags(base: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    flags = []
    for side, record in (("base", base), ("new", new)):
        verdict = record.get("latency_noise")
        if verdict not in (None, "ok"):
            flags.append(f"{side}: {verdict}")
    return tuple(flags)


def _latency_delta(base: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                   threshold_pct: float, compare: bool) -> LatencyDelta | None:
    if base is None or new is None:
        return None
    b, n = _number(base.get(LATENCY_COLUMN)), _number(new.get(LATENCY_COLUMN))
    if b is None and n is None:
        return None
    base_ms = None if b is None else float(b)
    new_ms = None if n is None else float(n)
    base_noise, new_noise = record_noise(base), record_noise(new)
    flags = _noise_flags(base, new)
    both_ok = base.get("status") == "ok" and new.get("status") == "ok"
    if base_ms is None or new_ms is None or not both_ok:
        return LatencyDelta(base_ms, new_ms, base_noise, new_noise, UNMEASURED, flags=flags)
    if not compare:
        return LatencyDelta(base_ms, new_ms, base_noise, new_noise, NOT_COMPARED, flags=flags)
    pct_bound = threshold_pct / 100.0 * base_ms
    noise = (base_noise or 0.0) + (new_noise or 0.0)
    limit, limit_from = (noise, "noise") if noise > pct_bound else (pct_bound, "threshold")
    if new_ms - base_ms > limit:
        verdict = REGRESSION
    elif base_ms - new_ms > limit:
        verdict = IMPROVEMENT
    else:
        verdict = WITHIN_NOISE
    return LatencyDelta(base_ms, new_ms, base_noise, new_noise, verdict, limit, limit_from, flags)


def _show(value: Any) -> str:
    return "unknown" if value is None else str(value)


def environment_differences(base: RunResult, new: RunResult) -> list[str]:
    """What differs between the two runs' measuring conditions, one phrase each."""
    be, ne, bs, ns = base.environment, new.environment, base.settings, new.settings
    checks: list[tuple[str, Any, Any]] = [
        ("cpu_model", be.get("cpu_model"), ne.get("cpu_model")),
        ("threads", bs.get("threads"), ns.get("threads")),
    ]
    if "intra_op_threads" in be and "intra_op_threads" in ne:
        checks.append(("intra_op_threads", be.get("intra_op_threads"), ne.get("intra_op_threads")))
    checks += [
        ("torch", be.get("torch"), ne.get("torch")),
        ("device", bs.get("device", "cpu"), ns.get("device", "cpu")),
    ]
    if be.get("gpu_model") is not None or ne.get("gpu_model") is not None:
        checks.append(("gpu_model", be.get("gpu_model"), ne.get("gpu_model")))
    return [f"{name} differ{'' if name.endswith('threads') else 's'} ({_show(b)} vs {_show(n)})"
            for name, b, n in checks if b != n]


def _has_latency(result: RunResult) -> bool:
    return any(_number(r.get(LATENCY_COLUMN)) is not None for r in result.records)


def check_threshold(latency_threshold_pct: float) -> float:
    """The threshold as a float; ``ArchbenchError`` when it is negative or not finite."""
    try:
        value = float(latency_threshold_pct)
    except (TypeError, ValueError):
        raise ArchbenchError(f"latency threshold must be a number of percent, got {latency_threshold_pct!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ArchbenchError(f"latency threshold must be a finite percentage >= 0, got {latency_threshold_pct!r}")
    return value


def _index(result: RunResult) -> dict[CellKey, dict[str, Any]]:
    cells: dict[CellKey, dict[str, Any]] = {}
    for i, record in enumerate(result.records):
        try:
            key = CellKey(str(record["variant"]), int(record["resolution"]),
                          int(record["batch_size"]), str(record["device"]), str(record.get("form", "eager")))
        except (KeyError, TypeError, ValueError):
            raise ArchbenchError(f"run {result.run_id}: record {i} has no valid variant, resolution, "
                                 "batch_size and device") from None
        cells.setdefault(key, record)  # the first record of a cell, as RunResult.record does
    return cells


def compare_runs(base: RunResult, new: RunResult, *, latency_threshold_pct: float = 10.0,
                 force: bool = False) -> Comparison:
    """Compare two runs cell by cell (see the module docstring for the rules)."""
    threshold = check_threshold(latency_threshold_pct)
    differences = environment_differences(base, new)
    warnings: list[str] = []
    for side, result in (("base", base), ("new", new)):
        if not result.complete:
            warnings.append(f"the {side} run `{result.run_id}` is incomplete (interrupted or still running)")

    refusal: str | None = None
    if not _has_latency(base) or not _has_latency(new):
        which = [side for side, r in (("base", base), ("new", new)) if not _has_latency(r)]
        refusal = ("latency not compared: "
                   + ("neither run measured latency" if len(which) == 2 else f"the {which[0]} run did not measure latency"))
    elif differences and not force:
        refusal = f"latency not compared: {', '.join(differences)}; pass --force to compare anyway"
    elif differences:
        warnings.append(f"latency compared across different conditions (--force): {', '.join(differences)}")
    compare_latency = refusal is None

    base_cells, new_cells = _index(base), _index(new)
    keys = list(dict.fromkeys([*base_cells, *new_cells]))
    rows = []
    for key in keys:
        b, n = base_cells.get(key), new_cells.get(key)
        rows.append(CellComparison(
            key=key,
            base_status=None if b is None else str(b["status"]),
            new_status=None if n is None else str(n["status"]),
            base_reason="" if b is None else str(b.get("reason") or ""),
            new_reason="" if n is None else str(n.get("reason") or ""),
            metrics=tuple(_metric_delta(c, b, n) for c in _columns(b, n)),
            latency=_latency_delta(b, n, threshold, compare_latency),
        ))

    def verdict(row: CellComparison) -> str | None:
        return row.latency.verdict if row.latency else None

    return Comparison(
        base_run_id=base.run_id,
        new_run_id=new.run_id,
        threshold_pct=threshold,
        rows=tuple(rows),
        exact_changes=tuple(r for r in rows if r.exact_changes),
        latency_regressions=tuple(r for r in rows if verdict(r) == REGRESSION),
        latency_improvements=tuple(r for r in rows if verdict(r) == IMPROVEMENT),
        missing=tuple(r for r in rows if r.is_missing),
        latency_compared=compare_latency,
        refusal=refusal,
        warnings=tuple(warnings),
        environment_differences=tuple(differences),
    )


# -- rendering -----------------------------------------------------------------


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


def _ms(value: float | None, noise: float | None) -> str:
    return with_spread(value, noise)


def _limit(latency: LatencyDelta, threshold_pct: float) -> str:
    if latency.limit_ms is None:
        return "-"
    why = "noise" if latency.limit_from == "noise" else f"{threshold_pct:g}%"
    return f"{significant(latency.limit_ms, 2)} ({why})"


def _verdict(latency: LatencyDelta) -> str:
    return latency.verdict + (f" [{'; '.join(latency.flags)}]" if latency.flags else "")


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True)]
        return "  ".join(out).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _indent(lines: Sequence[str], by: str = "  ") -> list[str]:
    return [by + line if line else line for line in lines]


def _latency_rows(rows: Sequence[CellComparison], comparison: Comparison, parts: tuple[bool, bool],
                  code: bool = False) -> list[list[str]]:
    out = []
    for row in rows:
        lat = row.latency
        if lat is None:
            continue
        out.append([_label(row.key, parts, code), _ms(lat.base_ms, lat.base_noise_ms),
                    _ms(lat.new_ms, lat.new_noise_ms), percent(lat.change_pct),
                    _limit(lat, comparison.threshold_pct), _verdict(lat)])
    return out


LATENCY_HEADER = ("cell", "base ms", "new ms", "change", "limit ms", "verdict")


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
        blocks += [f"  {_label(row.key, parts)}", *_indent(_text_table(
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
                      *_indent(_text_table(LATENCY_HEADER, table, "lrrrrl"))]

    if c.missing:
        lines += ["", "Missing or failed cells"]
        lines += [f"  {_label(row.key, parts)}: {row.presence}" for row in c.missing]

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


def compare_files(base_path: Path | str, new_path: Path | str, *, fmt: str = "text",
                  latency_threshold_pct: float = 10.0, force: bool = False,
                  verbose: bool = False) -> tuple[str, int]:
    """Load two results files, compare them and render; returns (text, exit code)."""
    if fmt not in FORMATS:
        raise ArchbenchError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    threshold = check_threshold(latency_threshold_pct)
    comparison = compare_runs(load(base_path), load(new_path), latency_threshold_pct=threshold, force=force)
    text = render_markdown(comparison) if fmt == "markdown" else render_text(comparison, verbose=verbose)
    return text, comparison.exit_code
