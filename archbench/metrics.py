"""The metric catalog: every column archbench writes, declared once.

A *metric* is what a user asks for (``--metrics params,macs,memory,latency``); it
is measured in one phase (``static``: once per variant x resolution and copied into
each form's record; ``latency``: once per form; ``layers``: once per form that keeps the
modules, after the latency phase) and produces *columns*. Each column
declares its unit, its title, how it is judged when two runs are compared, how
repeats in several processes aggregate it and how renderers scale it.

Judgement (read by ``archbench compare`` and ``archbench expect``):

* ``exact``: deterministic integer counts; any difference is a change.
* ``noisy``: a measured statistic, compared against the noise columns it names
  (the first one present in a record is used).
* ``info``: carried for completeness, never changes an exit code (third-party
  cross-checks and allocator peaks move with tool versions).

Code outside this module reads records through the catalog (``column``,
``LATENCY``, ``headline_columns``...) instead of spelling column names. Adding a
metric is one ``Metric`` in ``METRIC_CATALOG`` plus the function that measures it.
Importing this module imports neither torch nor pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from archbench.errors import ArchbenchError
from archbench.profilers.latency import quantile

Judged = Literal["exact", "noisy", "info"]
Phase = Literal["static", "latency", "layers"]
Aggregate = Literal["median", "min", "max", "sum", "first", "flags"]
Scale = Literal["count", "bytes", "ms", "seconds", "ratio", "text"]


@dataclass(frozen=True)
class Column:
    """One result column (or a family of them, when ``name`` is an ``fnmatch`` pattern).

    Attributes:
        name: The column name, or a pattern such as ``params_*`` (per-part counts).
        unit: What one unit of the value is, in words ("MACs", "bytes", "ms", ...).
        title: Heading in tables and reports.
        judged: ``exact``, ``noisy`` or ``info`` (see the module docstring).
        scale: How renderers choose a unit for a column of values.
        aggregate: How per-process values of one cell combine when latency is repeated
            in several processes (``flags`` joins noise verdicts).
        noise: For ``noisy`` columns: the columns holding its noise, in order of preference.
        headline: Shown as its own table in reports and on the console.
        derived_from: The column this one is a fixed multiple of (``flops`` = 2 x ``macs``);
            left out where a percent change would repeat its source's.
        console: Console header and divisor, e.g. ``("params (M)", 1e6)``.
        label: How prose names it ("activation peak"); defaults to the name.
    """

    name: str
    unit: str
    title: str
    judged: Judged = "info"
    scale: Scale = "count"
    aggregate: Aggregate = "median"
    noise: tuple[str, ...] = ()
    headline: bool = False
    derived_from: str | None = None
    console: tuple[str, float] | None = None
    label: str = ""

    @property
    def label_text(self) -> str:
        return self.label or self.name

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.name for ch in "*?[")

    def matches(self, column: str) -> bool:
        return fnmatchcase(column, self.name) if self.is_pattern else column == self.name


@dataclass(frozen=True)
class Metric:
    """A metric a user can ask for: its phase, its columns and what each counts."""

    name: str
    phase: Phase
    columns: tuple[Column, ...]
    conventions: Mapping[str, str] = field(default_factory=dict)
    #: A record holding this column has the metric measured (``cell_done``).
    done_column: str = ""


# -- the catalog ------------------------------------------------------------------------

PARAMS = Column("params", "parameters", "Params", "exact", headline=True, console=("params (M)", 1e6))
MACS = Column("macs", "MACs", "MACs", "exact", headline=True, console=("MACs (G)", 1e9), label="MACs")
FLOPS = Column("flops", "FLOPs", "FLOPs = 2 x MACs", "exact", headline=True, derived_from="macs",
               console=("FLOPs (G)", 1e9), label="FLOPs")
ACT_PEAK = Column("act_peak_bytes", "bytes", "Activation peak", "exact", "bytes", headline=True,
                  console=("act peak (MiB)", 2.0**20), label="activation peak")
LATENCY = Column("latency_ms_median", "ms", "Latency", "noisy", "ms",
                 noise=("latency_ms_spread", "latency_ms_iqr"), headline=True, label="latency")
LATENCY_IQR = Column("latency_ms_iqr", "ms", "latency IQR of per-call samples", scale="ms")
LATENCY_SPREAD = Column("latency_ms_spread", "ms", "latency spread (max - min) of per-process medians",
                        scale="ms", aggregate="first")
LATENCY_NOISE = Column("latency_noise", "verdict", "latency noise verdict", scale="text", aggregate="flags")

_BYTES = "bytes"

METRIC_CATALOG: tuple[Metric, ...] = (
    Metric("params", "static", (
        PARAMS,
        Column("trainable_params", "parameters", "Trainable params", "exact"),
        Column("params_*", "parameters", "Params by part", "exact"),
        # ``param_bytes`` comes with params too, declared once under memory
    ), {"params": "weights + biases + norm affine; BatchNorm running stats are buffers; shared tensors once"},
        done_column="params"),
    Metric("macs", "static", (
        MACS,
        FLOPS,
        Column("*_elems", "elements", "Elements by category", "exact"),
        Column("macs_*", "MACs", "MACs by part", "exact"),
        Column("unclassified_ops", "ATen ops", "Ops without a counting rule", scale="text", aggregate="first"),
        Column("unclassified_calls", "JSON: op, calls, modules, may_hide_macs",
               "Ops without a counting rule: calls and modules", scale="text", aggregate="first"),
    ), {"macs": "multiply-accumulates of conv and linear/matmul (bias excluded), counted at ATen dispatch",
        "flops": "exactly 2 x macs; other ops are in the *_elems columns, not in flops"},
        done_column="macs"),
    Metric("memory", "static", (
        Column("param_bytes", _BYTES, "Parameter bytes", "exact", "bytes"),
        Column("buffer_bytes", _BYTES, "Buffer bytes", "exact", "bytes"),
        Column("input_bytes", _BYTES, "Input bytes", "exact", "bytes"),
        ACT_PEAK,
        Column("cuda_max_allocated_bytes", _BYTES, "CUDA peak allocated", scale="bytes"),
        Column("cuda_max_reserved_bytes", _BYTES, "CUDA peak reserved", scale="bytes"),
    ), {"act_peak_bytes": "peak bytes of live activation storages in one no-grad forward "
                          "(params, buffers, input excluded)"},
        done_column="act_peak_bytes"),
    Metric("latency", "latency", (
        LATENCY,
        LATENCY_SPREAD,
        LATENCY_IQR,
        Column("latency_ms_p90", "ms", "latency p90", scale="ms"),
        Column("latency_ms_min", "ms", "latency min", scale="ms", aggregate="min"),
        Column("latency_n", "calls", "timed calls", aggregate="sum"),
        Column("latency_ms_cold", "ms", "cold (first) call", scale="ms"),
        Column("latency_rel_ci", "ratio", "relative half-width of the median's 95% CI", scale="ratio",
               aggregate="max"),
        Column("latency_wall_ms_median", "ms", "host wall-clock median", scale="ms"),
        Column("latency_other_load", "cores", "other processes' CPU load", scale="ratio", aggregate="max"),
        Column("latency_probe_ms", "ms", "speed probe around the timing (relative to the run's fastest: "
               "the slowdown)", scale="ms", aggregate="max"),
        Column("latency_attempts", "measurements", "measurement attempts", aggregate="sum"),
        LATENCY_NOISE,
        Column("latency_repeats", "processes", "latency repeats (processes)", aggregate="first"),
        Column("threads", "threads", "intra-op threads", aggregate="first"),
        Column("form_prepare_s", "s", "time to make the form", scale="seconds"),
        Column("form_max_rel_err", "ratio", "max relative error vs eager", scale="ratio", aggregate="max"),
        Column("form_ref_rel_err", "ratio", "max relative error vs the float64 reference", scale="ratio",
               aggregate="max"),
        Column("eager_ref_rel_err", "ratio", "eager float32's max relative error vs float64", scale="ratio",
               aggregate="max"),
        Column("form_tolerance", "ratio", "accepted error vs the float64 reference", scale="ratio",
               aggregate="first"),
        Column("form_check", "text", "whether the check could fail", scale="text", aggregate="first"),
        Column("form_note", "text", "how the form was made", scale="text", aggregate="first"),
        Column("form_runtime", "text", "runtime that ran the form, with its version", scale="text",
               aggregate="first"),
        Column("form_precision", "text", "arithmetic precision the form ran at (fp32, bf16, fp16)",
               scale="text", aggregate="first"),
    ), {"latency_ms": "model-forward latency per call; median of per-call samples after warm-up"},
        done_column=LATENCY.name),
    Metric("layers", "layers", (
        Column("layers_forward_ms", "ms", "whole forward, median, in the per-layer measurement", scale="ms"),
        Column("layers_sum_ms", "ms", "sum of per-layer medians", scale="ms"),
        Column("layers_reconciliation", "ratio", "sum of layer medians / whole forward", scale="ratio"),
        Column("layers_samples", "forwards", "hooked forwards per layer median", aggregate="first"),
        Column("layers_other_load", "cores", "other processes' CPU load while timing layers", scale="ratio",
               aggregate="max"),
        Column("layers_probe_ms", "ms", "speed probe around the per-layer timing", scale="ms", aggregate="max"),
        Column("bytes_moved", _BYTES, "Bytes moved (compulsory)", "exact", "bytes", label="bytes moved"),
        Column("layers_note", "text", "why a form has no per-layer rows", scale="text", aggregate="first"),
    ), {"layers": "per-layer own time (in-situ perf_counter around each module's forward; a module's "
                  "children excluded), median over hooked forwards; rows in results.json 'layers'",
        "bytes_moved": "compulsory traffic summed over layers: each layer's inputs + outputs + its "
                       "floating-point parameters and buffers, once, at the run's dtype; caches not modelled"},
        done_column="layers_sum_ms"),
)

#: What every record says about how it was measured, beside its key.
RECORD_COLUMNS: tuple[Column, ...] = (
    Column("input", "kind", "input the model saw (image, random, zeros)", scale="text", aggregate="first"),
    Column("model_state", "text", "weights: seed and BatchNorm calibration", scale="text", aggregate="first"),
    Column("host", "text", "the machine that measured the record", scale="text", aggregate="first"),
    Column("node_label", "text", "the node label (sweep --on) its cells were timed under", scale="text",
           aggregate="first"),
)

COUNTER_COLUMNS: tuple[Column, ...] = (
    Column("fvcore_unsupported", "ops x calls", "what fvcore counted as 0", scale="text", aggregate="first"),
    Column("thop_unsupported", "module types x count", "what thop counted as 0", scale="text", aggregate="first"),
    Column("fvcore_*", "fvcore units", "fvcore cross-check", scale="count", aggregate="first"),
    Column("thop_*", "thop units", "thop cross-check", scale="count", aggregate="first"),
)

METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_CATALOG)
COUNTERS: tuple[str, ...] = ("fvcore", "thop")


def metric(name: str) -> Metric:
    """The catalog entry of a metric name (``ArchbenchError`` for an unknown one)."""
    for entry in METRIC_CATALOG:
        if entry.name == name:
            return entry
    raise ArchbenchError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def _all_columns() -> Iterable[tuple[Metric | None, Column]]:
    for col in RECORD_COLUMNS:
        yield None, col
    for entry in METRIC_CATALOG:
        for col in entry.columns:
            yield entry, col
    for col in COUNTER_COLUMNS:
        yield None, col


def column(name: str) -> Column | None:
    """The declaration of a result column, exact names before patterns; None if undeclared."""
    found = [c for _, c in _all_columns() if c.matches(name)]
    return next((c for c in found if not c.is_pattern), found[0] if found else None)


def metric_of(name: str) -> str | None:
    """The metric a column belongs to (``counters`` for cross-checks, ``record`` for what
    every record says of its measurement), or None."""
    declared = column(name)
    if declared is None:
        return None
    if declared in RECORD_COLUMNS:
        return "record"
    return next((entry.name for entry, col in _all_columns() if col is declared and entry), "counters")


def judged(name: str) -> str:
    """How ``archbench compare`` treats a column: ``exact``, ``noisy`` or ``info``."""
    declared = column(name)
    return declared.judged if declared else "info"


def headline_columns() -> tuple[Column, ...]:
    """The columns reports and the console show as their own tables, in catalog order."""
    return tuple(c for _, c in _all_columns() if c.headline)


def column_order(names: Iterable[str]) -> list[str]:
    """``names`` sorted by catalog position (first-seen order among equals), undeclared last."""
    declared = [c for _, c in _all_columns()]
    names = list(dict.fromkeys(names))

    def position(name: str) -> int:
        exact = next((i for i, c in enumerate(declared) if c.name == name), None)
        if exact is not None:
            return exact
        return next((i for i, c in enumerate(declared) if c.matches(name)), len(declared))

    return sorted(names, key=lambda n: (position(n), names.index(n)))


def conventions_for(metrics: Sequence[str], counters: Sequence[str] = ()) -> dict[str, str]:
    """What each reported column counts, for the metrics and counters asked for."""
    chosen: dict[str, str] = {}
    for name in metrics:
        chosen.update(metric(name).conventions)
    if counters:
        from archbench.profilers.crosscheck import FVCORE_CONVENTION, THOP_CONVENTION

        known = {"fvcore": FVCORE_CONVENTION, "thop": THOP_CONVENTION}
        chosen.update({f"{c}_total": known[c] for c in counters})
    return chosen


def phase_metrics(metrics: Sequence[str], phase: Phase) -> tuple[str, ...]:
    return tuple(m for m in metrics if metric(m).phase == phase)


def is_done(record: Mapping[str, Any], metrics: Sequence[str], phase: Phase | None = None) -> bool:
    """Whether a record needs no more measuring: failed or skipped, or every metric asked for
    that is measured after the static phase (only ``phase``'s, if given) has its column
    (static metrics are written with the record)."""
    if record.get("status") != "ok":
        return True
    phases: tuple[Phase, ...] = (phase,) if phase else ("latency", "layers")
    return all(metric(m).done_column in record for p in phases for m in phase_metrics(metrics, p))


# -- repeats ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return quantile(sorted(values), 0.5)


def _flags(values: Sequence[str]) -> str:
    found = sorted({f for v in values for f in str(v).split("+") if f and f != "ok"})
    return "+".join(found) or "ok"


_AGGREGATORS: dict[str, Callable[[Sequence[Any]], Any]] = {
    "median": _median, "min": min, "max": max, "sum": sum, "first": lambda v: v[0], "flags": _flags,
}


def aggregate_repeats(per_process: Sequence[Mapping[str, Any]], phase: Phase = "latency") -> dict[str, Any]:
    """One cell's headline from its per-process measurements, column by column as the
    catalog says.

    The latency is the median of the per-process medians, with their spread (max - min)
    beside it (``latency_ms_spread``): variance between processes is what a reader of the
    number will meet, and it is larger than the variance within one.
    """
    medians = [r[LATENCY.name] for r in per_process]
    computed = {LATENCY_SPREAD.name: max(medians) - min(medians), "latency_repeats": len(per_process)}
    out: dict[str, Any] = {}
    for entry in METRIC_CATALOG:
        if entry.phase != phase:
            continue
        for col in entry.columns:
            values = [r[col.name] for r in per_process if r.get(col.name) is not None]
            if col.name in computed:
                out[col.name] = computed[col.name]
            elif values and not col.is_pattern:
                out[col.name] = _AGGREGATORS[col.aggregate](values)
    return out
