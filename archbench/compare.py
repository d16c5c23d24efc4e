"""``archbench compare BASE.json NEW.json``: what changed between two runs.

(About 410 lines, a quarter of them this docstring: the judging rules, stated once.)

Reads two results files and never measures. Every cell (variant x resolution x
batch_size x device) present in either run becomes one row; each row holds, for
every metric column present in either record, the base value, the new value, the
absolute and the percent change.

Three kinds of change are judged differently:

**Exact metrics** (the columns ``archbench.metrics`` declares ``exact``): the
integer-valued static counts -- params, MACs, FLOPs, element counts, byte sizes,
per-part params/MACs. They are deterministic, so any difference is a change.
Third-party cross-check totals (``fvcore_*``, ``thop_*``) are left out on purpose:
they are not archbench's counts and move with those tools' versions; so are the CUDA
allocator peaks (``cuda_max_*_bytes``), which depend on the allocator and kernels.

**Latency** (``latency_ms_median``, the catalog's ``noisy`` column, with the noise
columns it declares): a cell *regressed* when::

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
where both runs record it), ``torch`` version, device (``settings.device``; also
``gpu_model`` where either run records it) and input kind (``settings.input``; runs
recorded before it was a setting timed ``random`` input). Deployment forms (fp16, onnxruntime, ...)
are part of each cell's key, so cells only ever meet their own form. Otherwise the
comparison *refuses* latency (``Comparison.refusal`` says which fields differ), shows
latency as "not compared", and still compares the exact metrics. ``force=True``
compares anyway and records a warning. When both runs read the speed probe
(``archbench.profilers.speed``) and one run's median reading is more than 1.10x the
other's, a warning says the machine itself ran slower or faster: the same CPU model can
still be a machine shared with a busy neighbour.

**Everything else** (``info`` in the catalog: p90, cold latency, noise verdicts, ...)
is carried in the rows for completeness and never changes the exit code.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from archbench.errors import ArchbenchError
from archbench.metrics import LATENCY, LATENCY_NOISE, Column, judged
from archbench.profilers.speed import machine_speed_note
from archbench.results import KEY_COLUMNS, RunResult, load
from archbench.settings import INPUT_BEFORE_SETTING

EXIT_SAME = 0
EXIT_CHANGED = 1

FORMATS = ("text", "markdown")

# Latency verdicts of one cell.
REGRESSION = "regression"
IMPROVEMENT = "improvement"
WITHIN_NOISE = "within noise"
NOT_COMPARED = "not compared"
UNMEASURED = "unmeasured"


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
    kind: str  # how the catalog judges the column: "exact", "noisy" or "info"
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


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two runs; pure data, rendered by ``archbench.render.compare``."""

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
    return MetricDelta(column, judged(column), b, n, abs_change, pct_change)


def _columns(*records: Mapping[str, Any] | None) -> list[str]:
    skip = {*KEY_COLUMNS, "status", "reason"}
    seen: dict[str, None] = {}
    for record in records:
        for column in record or ():
            if column not in skip:
                seen.setdefault(column)
    return list(seen)


def record_noise(record: Mapping[str, Any], measured: Column = LATENCY) -> float | None:
    """A record's noise on a noisy column: the first of the catalog's noise columns it has
    (for latency: ``latency_ms_spread`` when present, else ``latency_ms_iqr``)."""
    for column in measured.noise:
        value = _number(record.get(column))
        if value is not None:
            return float(value)
    return None


def _noise_flags(base: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    flags = []
    for side, record in (("base", base), ("new", new)):
        verdict = record.get(LATENCY_NOISE.name)
        if verdict not in (None, "ok"):
            flags.append(f"{side}: {verdict}")
    return tuple(flags)


def _latency_delta(base: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                   threshold_pct: float, compare: bool) -> LatencyDelta | None:
    if base is None or new is None:
        return None
    b, n = _number(base.get(LATENCY.name)), _number(new.get(LATENCY.name))
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
        ("input", bs.get("input", INPUT_BEFORE_SETTING), ns.get("input", INPUT_BEFORE_SETTING)),
    ]
    if be.get("gpu_model") is not None or ne.get("gpu_model") is not None:
        checks.append(("gpu_model", be.get("gpu_model"), ne.get("gpu_model")))
    return [f"{name} differ{'' if name.endswith('threads') else 's'} ({_show(b)} vs {_show(n)})"
            for name, b, n in checks if b != n]


def _has_latency(result: RunResult) -> bool:
    return any(_number(r.get(LATENCY.name)) is not None for r in result.records)


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
    speed_note = machine_speed_note(base.records, new.records) if compare_latency else None
    if speed_note:
        warnings.append(speed_note)

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


def compare_files(base_path: Path | str, new_path: Path | str, *, fmt: str = "text",
                  latency_threshold_pct: float = 10.0, force: bool = False,
                  verbose: bool = False) -> tuple[str, int]:
    """Load two results files, compare them and render; returns (text, exit code)."""
    from archbench.render.compare import render_markdown, render_text  # it imports this module

    if fmt not in FORMATS:
        raise ArchbenchError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    threshold = check_threshold(latency_threshold_pct)
    comparison = compare_runs(load(base_path), load(new_path), latency_threshold_pct=threshold, force=force)
    text = render_markdown(comparison) if fmt == "markdown" else render_text(comparison, verbose=verbose)
    return text, comparison.exit_code
