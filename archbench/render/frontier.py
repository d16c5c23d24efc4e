"""Frontiers of a run: Pareto fronts, best variants under a budget, how well compute
predicts latency, and what one family buys over another at equal latency.

Pure functions of a ``RunResult`` (nothing is measured), then ``frontier_sections``,
which renders them as report sections (markdown strings that start with ``## ``, as
``render.markdown`` joins them).

Conventions, as in the rest of the report: MACs are multiply-accumulates (never called
FLOPs), a unit is stated once per column, latency is the median per cell and cells the
noise check flagged carry ``†``. Only cells with status ok and a finite value in every
column used take part; the others are listed as excluded, with the reason.

A Pareto front always minimises latency; which way it goes along its other axis is a
property of the axis (``FRONT_DIRECTIONS``). Accuracy is not measured, so MACs and params
stand in for capacity, what a designer trades latency for: their front is the most MACs
(params) at a given latency, maximising them. The activation peak is a cost: its front is
the lowest peak at a given latency, minimising it. A cell is on a front when no other
cell is at most as slow *and* at least as good on the axis, and strictly better in one
of the two. Cells equal in both are all kept. "Best under budget" reads the same fronts:
the most MACs under a latency budget, the fastest that has at least so many MACs.

Rank correlations (Spearman, Kendall tau-b) are computed here exactly, ties included
(average ranks for Spearman, the tau-b tie correction for Kendall); they are undefined
(NaN, with a reason) below three pairs or when one side is constant.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from archbench.metrics import ACT_PEAK, LATENCY, MACS, PARAMS, Column
from archbench.metrics import column as declared_column
from archbench.render.markdown import NOISE_MARK, md_table
from archbench.render.units import column_scale, significant
from archbench.results import DEFAULT_FORM, RunResult

#: The columns a front is drawn against (latency on the other axis), in report order.
FRONT_AXES: tuple[Column, ...] = (MACS, PARAMS, ACT_PEAK)
#: The axes of a per-family front (a run of several families).
FAMILY_AXES: tuple[Column, ...] = (MACS, PARAMS)

Sense = Literal["max", "min"]
#: Which way a front goes along each axis (latency is always minimised), and why.
#: A column not listed is a cost ("min").
FRONT_DIRECTIONS: dict[str, tuple[Sense, str]] = {
    MACS.name: ("max", "a capacity proxy (accuracy is not measured): the most compute a latency buys"),
    PARAMS.name: ("max", "a capacity proxy (accuracy is not measured): the most parameters a latency buys"),
    ACT_PEAK.name: ("min", "a cost: the memory a forward must hold at once"),
}
#: Bytes moved by the whole forward: present only where per-layer measurement ran.
BYTES_MOVED = declared_column("bytes_moved") or Column("bytes_moved", "bytes", "Bytes moved", scale="bytes",
                                              label="bytes moved")
#: What may predict latency, in report order (``bytes_moved`` only when recorded).
PREDICTORS: tuple[Column, ...] = (MACS, PARAMS, ACT_PEAK, BYTES_MOVED)
#: Fewest pairs a rank correlation is defined for.
MIN_PAIRS = 3
#: Fewest variants with a latency (at one resolution) for the "Does compute predict latency?" section.
PREDICT_MIN_N = 5
#: Fewest variants with a latency (at one resolution) for the "Best under budget" section.
MANY_VARIANTS = 8
#: A matched pair closer than this in latency (percent) counts as "at equal latency" in the summary.
EQUAL_LATENCY_PERCENT = 10.0

REGISTERED_MARK = "◆"
_SAMPLE_NAME = re.compile(r"-[0-9A-Za-z]")
_UNIT_WORDS = {"k": "thousands", "M": "millions", "G": "billions", "": "count"}


# -- cells ----------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, inf, text and bools are not numbers)."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def is_sample(name: str, info: dict[str, Any] | None = None) -> bool:
    """Whether a variant was sampled from a search space rather than registered.

    A variant is a sample when its info names a space (``info["space"]``) or, failing
    that, when its name holds ``-`` followed by a code (``esnet_ratio-3fa2c1``);
    registered names (``esnet_s``, ``esnet_s.nose``) hold no ``-``.
    """
    if info and info.get("space"):
        return True
    return bool(_SAMPLE_NAME.search(name))


def is_sweep(result: RunResult) -> bool:
    """Whether the run holds samples of a search space."""
    return any(is_sample(name, result.variants.get(name)) for name in _variant_order(result))


def family_of(result: RunResult, variant: str) -> str:
    """The family a variant belongs to (``variants[name]["family"]``), or ``"?"`` when unrecorded."""
    return str((result.variants.get(variant) or {}).get("family") or "?")


def families(result: RunResult) -> list[str]:
    """Families of the run's variants that have at least one ok record, in run order."""
    ok = {r["variant"] for r in result.records if r.get("status") == "ok"}
    return list(dict.fromkeys(family_of(result, v) for v in _variant_order(result) if v in ok))


def _variant_order(result: RunResult) -> list[str]:
    asked = list(result.settings.get("variants", []))
    return list(dict.fromkeys([*asked, *(r["variant"] for r in result.records)]))


def resolutions(result: RunResult) -> list[int]:
    """Resolutions of the run: as asked, then any others found in records."""
    asked = list(result.settings.get("resolutions", []))
    return list(dict.fromkeys([*asked, *(r["resolution"] for r in result.records)]))


def _noisy(record: dict[str, Any]) -> bool:
    return record.get("latency_noise", "ok") not in ("ok", None)


@dataclass(frozen=True)
class Cell:
    """One variant at one resolution and form, with the columns a view needs."""

    variant: str
    family: str
    latency_ms: float
    values: dict[str, float]
    noisy: bool
    registered: bool


def cells(result: RunResult, resolution: int, form: str | None = None,
          columns: Iterable[str] = ()) -> tuple[list[Cell], list[tuple[str, str]]]:
    """The usable cells at ``resolution`` (and ``form``, default the run's first) in run
    order, and the excluded ones as ``(variant, why)``: not measured, failed or skipped,
    no latency, or no value in one of ``columns``."""
    form = form or result.forms[0]
    columns = list(columns)
    found = {r["variant"]: r for r in result.records
             if r["resolution"] == resolution and r.get("form", DEFAULT_FORM) == form}
    usable: list[Cell] = []
    excluded: list[tuple[str, str]] = []
    for variant in _variant_order(result):
        record = found.get(variant)
        if record is None:
            if variant in result.settings.get("variants", []):
                excluded.append((variant, "not measured"))
            continue
        if record.get("status") != "ok":
            excluded.append((variant, str(record.get("status"))))
            continue
        latency = number(record.get(LATENCY.name))
        if latency is None:
            excluded.append((variant, "no latency"))
            continue
        values = {c: number(record.get(c)) for c in columns}
        missing = [c for c, v in values.items() if v is None]
        if missing:
            excluded.append((variant, "no " + ", ".join(_label(c) for c in missing)))
            continue
        info = result.variants.get(variant)
        usable.append(Cell(variant, family_of(result, variant), latency,
                           {c: v for c, v in values.items() if v is not None}, _noisy(record),
                           not is_sample(variant, info)))
    return usable, excluded


def _label(name: str) -> str:
    return next((c.label_text for c in PREDICTORS if c.name == name), name)


# -- (a) Pareto fronts -----------------------------------------------------------------


def direction(axis: str) -> Sense:
    """Which way the front against ``axis`` goes: ``"max"`` (MACs, params) or ``"min"``
    (activation peak, and any column not in ``FRONT_DIRECTIONS``)."""
    return FRONT_DIRECTIONS.get(axis, ("min", ""))[0]


def front_goal(axis: str) -> str:
    """The front against ``axis`` in words: "most MACs at a given latency"."""
    label = _label(axis)
    return f"{'most' if direction(axis) == 'max' else 'lowest'} {label} at a given latency"


def pareto_front(points: Sequence[tuple[Any, float, float]], sense: Sense = "min") -> list[Any]:
    """Keys of the points ``(key, x, y)`` that no other point dominates, minimising y
    and, by ``sense``, minimising or maximising x. ``q`` dominates ``p`` when ``q`` is at
    most ``p`` in y, at least as good in x (at most, or at least for ``"max"``) and
    strictly better in one; points equal in both are all kept. Keys come back by y
    ascending (fastest first), points equal in both in input order."""
    if sense not in ("min", "max"):
        raise ValueError(f"sense must be 'min' or 'max', not {sense!r}")
    sign = -1.0 if sense == "max" else 1.0  # minimise sign * x
    order = sorted(range(len(points)), key=lambda i: (points[i][2], sign * points[i][1], i))
    front: list[Any] = []
    best = math.inf  # the best (lowest) sign * x among points of strictly smaller y
    i = 0
    while i < len(order):
        j = i
        y = points[order[i]][2]
        while j < len(order) and points[order[j]][2] == y:
            j += 1
        group = order[i:j]
        top = min(sign * points[k][1] for k in group)
        if top < best:
            front += [points[k][0] for k in group if sign * points[k][1] == top]
        best = min(best, top)
        i = j
    return front


@dataclass(frozen=True)
class Front:
    """The front of latency against one cost, at one resolution and form (and family)."""

    resolution: int
    form: str
    axis: str
    family: str | None
    cells: tuple[Cell, ...]
    members: tuple[Cell, ...]  # on the front, fastest first
    excluded: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [c.variant for c in self.members]

    @property
    def sense(self) -> Sense:
        """Which way the front goes along its axis (``direction``)."""
        return direction(self.axis)


def front(result: RunResult, resolution: int, axis: str = MACS.name, form: str | None = None,
          family: str | None = None) -> Front:
    """The Pareto front (minimising latency; maximising or minimising ``axis`` by
    ``direction``) of the run's cells at ``resolution`` and ``form``; with ``family``, of
    that family's cells only."""
    form = form or result.forms[0]
    usable, excluded = cells(result, resolution, form, [axis])
    if family is not None:
        excluded = [(v, why) for v, why in excluded if family_of(result, v) == family]
        usable = [c for c in usable if c.family == family]
    sense = direction(axis)
    on = set(pareto_front([(c.variant, c.values[axis], c.latency_ms) for c in usable], sense))
    sign = -1.0 if sense == "max" else 1.0
    members = sorted((c for c in usable if c.variant in on), key=lambda c: (c.latency_ms, sign * c.values[axis]))
    return Front(resolution, form, axis, family, tuple(usable), tuple(members), tuple(excluded))


def front_members(result: RunResult, resolution: int, axis: str = MACS.name, form: str | None = None,
                  family: str | None = None) -> list[str]:
    """Names of the variants on the front, fastest first (see ``front``)."""
    return front(result, resolution, axis, form, family).names


def fronts(result: RunResult, axes: Sequence[Column] | None = None, per_family: bool | None = None) -> list[Front]:
    """Every front of the run: per resolution, form, family (when ``per_family``; default:
    when the run holds more than one family) and axis. Fronts of fewer than two cells are
    left out. Default axes: ``FAMILY_AXES`` per family, else ``FRONT_AXES``."""
    kin = families(result)
    per_family = len(kin) > 1 if per_family is None else per_family
    axes = axes or (FAMILY_AXES if per_family else FRONT_AXES)
    out = []
    for resolution in resolutions(result):
        for form in result.forms:
            for family in (kin if per_family else [None]):
                for axis in axes:
                    found = front(result, resolution, axis.name, form, family)
                    if len(found.cells) >= 2:
                        out.append(found)
    return out


# -- (b) budgets -----------------------------------------------------------------------


def _value(cell: Cell, name: str) -> float:
    return cell.latency_ms if name == LATENCY.name else cell.values[name]


def _toward_front(name: str) -> float:
    """-1 for a column a front maximises, 1 for one it minimises (latency included)."""
    return -1.0 if name != LATENCY.name and direction(name) == "max" else 1.0


def best_under_budget(result: RunResult, resolution: int, budget_column: str, budget: float, *,
                      rank_by: str | None = None, descending: bool | None = None, form: str | None = None,
                      top: int | None = None) -> list[Cell]:
    """The cells whose ``budget_column`` is at most ``budget``, best first.

    What "best" means must be said, since accuracy is not measured: under a latency
    budget the default ranks by MACs, most first (the most compute that fits in the
    time: the MACs front's direction, so the first is on that front); under any other
    budget by latency, fastest first. Ties go the way the budget column's front goes
    (under a latency budget, to the faster), then to run order.
    """
    if rank_by is None:
        rank_by = MACS.name if budget_column == LATENCY.name else LATENCY.name
    if descending is None:
        descending = rank_by != LATENCY.name and direction(rank_by) == "max"
    needed = [c for c in (budget_column, rank_by) if c != LATENCY.name]
    usable, _ = cells(result, resolution, form, needed)
    fits = [c for c in usable if _value(c, budget_column) <= budget]
    sign, tie = -1.0 if descending else 1.0, _toward_front(budget_column)
    fits.sort(key=lambda c: (sign * _value(c, rank_by), tie * _value(c, budget_column)))
    return fits[:top] if top is not None else fits


def fastest_with_at_least(result: RunResult, resolution: int, column: str, minimum: float, *,
                          form: str | None = None, top: int | None = None) -> list[Cell]:
    """The cells whose ``column`` (MACs, params: what a front maximises) is at least
    ``minimum``, fastest first: the least latency that buys so much compute. Ties go to
    more of ``column``, then to run order, so the first is on the front of ``column``."""
    usable, _ = cells(result, resolution, form, [column])
    fits = [c for c in usable if c.values[column] >= minimum]
    fits.sort(key=lambda c: (c.latency_ms, _toward_front(column) * c.values[column]))
    return fits[:top] if top is not None else fits


def default_budgets(values: Sequence[float]) -> list[float]:
    """Three budgets from a column: its quartiles, to two significant figures (fewer when equal)."""
    finite = sorted(v for v in values if number(v) is not None)
    if len(finite) < 2:
        return []
    quartiles = statistics.quantiles(finite, n=4, method="inclusive")
    return list(dict.fromkeys(float(f"{q:.2g}") for q in quartiles))


# -- (c) rank correlations -------------------------------------------------------------


def _pairs(x: Sequence[Any], y: Sequence[Any]) -> tuple[list[float], list[float]]:
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} != {len(y)})")
    kept = [(a, b) for a, b in ((number(a), number(b)) for a, b in zip(x, y, strict=True))
            if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def undefined_reason(x: Sequence[Any], y: Sequence[Any]) -> str | None:
    """Why a rank correlation of ``x`` and ``y`` is undefined, or None. Pairs with a
    missing value (None, NaN) are dropped first."""
    xs, ys = _pairs(x, y)
    if len(xs) < MIN_PAIRS:
        return f"fewer than {MIN_PAIRS} pairs (n = {len(xs)})"
    if len(set(xs)) == 1:
        return "x is the same for every pair"
    if len(set(ys)) == 1:
        return "y is the same for every pair"
    return None


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (exact with ties);
    NaN when ``undefined_reason`` gives a reason."""
    if undefined_reason(x, y):
        return math.nan
    xs, ys = _pairs(x, y)
    rx, ry = average_ranks(xs), average_ranks(ys)
    mean = (len(rx) + 1) / 2
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mean) ** 2 for a in rx)
    vy = sum((b - mean) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy)


@dataclass(frozen=True)
class PairCounts:
    """Pairs of cells by how x and y order them."""

    concordant: int
    discordant: int
    tied_x: int  # tied in x only
    tied_y: int  # tied in y only
    tied_both: int

    @property
    def agreement(self) -> float:
        """Of the pairs both x and y order, the share ordered the same way (NaN if none)."""
        ordered = self.concordant + self.discordant
        return self.concordant / ordered if ordered else math.nan


def pair_counts(x: Sequence[Any], y: Sequence[Any]) -> PairCounts:
    """Count the pairs exactly (n² comparisons, one row at a time); missing values dropped first."""
    import numpy as np

    xs, ys = (np.asarray(v, dtype=float) for v in _pairs(x, y))
    c = d = tx = ty = tb = 0
    for i in range(len(xs) - 1):
        sx, sy = np.sign(xs[i + 1:] - xs[i]), np.sign(ys[i + 1:] - ys[i])
        product = sx * sy
        c += int((product > 0).sum())
        d += int((product < 0).sum())
        zx, zy = sx == 0, sy == 0
        tb += int((zx & zy).sum())
        tx += int((zx & ~zy).sum())
        ty += int((zy & ~zx).sum())
    return PairCounts(c, d, tx, ty, tb)


def _tau_b(p: PairCounts) -> float:
    untied_x = p.concordant + p.discordant + p.tied_y
    untied_y = p.concordant + p.discordant + p.tied_x
    return (p.concordant - p.discordant) / math.sqrt(untied_x * untied_y)


def kendall_tau_b(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Kendall's tau-b: (C - D) / sqrt((pairs not tied in x) (pairs not tied in y));
    NaN when ``undefined_reason`` gives a reason."""
    if undefined_reason(x, y):
        return math.nan
    return _tau_b(pair_counts(x, y))


@dataclass(frozen=True)
class Correlation:
    """How well one column ranks latency at one resolution and form."""

    predictor: str
    resolution: int
    form: str
    n: int
    spearman: float
    kendall: float
    agreement: float  # share of pairs the predictor and latency order the same way
    reason: str  # why undefined, "" when defined
    noisy: int  # cells among the n that the noise check flagged


def predictors_present(result: RunResult) -> list[Column]:
    """The predictors some ok record holds (``bytes_moved`` only where per-layer measurement ran)."""
    ok = [r for r in result.records if r.get("status") == "ok"]
    return [c for c in PREDICTORS if any(number(r.get(c.name)) is not None for r in ok)]


def correlations(result: RunResult, resolution: int, form: str | None = None,
                 predictors: Sequence[Column] | None = None) -> list[Correlation]:
    """Spearman and Kendall tau-b of each predictor against latency, over the cells that
    have both (each predictor on its own cells)."""
    form = form or result.forms[0]
    out = []
    for predictor in predictors if predictors is not None else predictors_present(result):
        usable, _ = cells(result, resolution, form, [predictor.name])
        x = [c.values[predictor.name] for c in usable]
        y = [c.latency_ms for c in usable]
        reason = undefined_reason(x, y) or ""
        counts = None if reason else pair_counts(x, y)
        out.append(Correlation(predictor.name, resolution, form, len(usable), spearman(x, y),
                               _tau_b(counts) if counts else math.nan, counts.agreement if counts else math.nan,
                               reason, sum(c.noisy for c in usable)))
    return out


def proxy_grade(tau: float) -> str:
    """Words for a Kendall tau-b of a proxy against latency."""
    if not math.isfinite(tau):
        return "undefined"
    return ("good" if tau >= 0.8 else "fair" if tau >= 0.6 else "weak" if tau >= 0.4
            else "poor" if tau >= 0 else "misleading (inverted)")


# -- (d) matched latency ---------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A variant beside the other family's variant nearest to it in latency.
    Deltas are variant - match (None where either lacks the column)."""

    resolution: int
    form: str
    variant: str
    family: str
    match: str
    match_family: str
    latency_ms: float
    match_latency_ms: float
    d_params: float | None
    d_macs: float | None
    d_act_peak: float | None
    params: float | None
    macs: float | None
    act_peak: float | None
    noisy: bool  # either cell flagged by the noise check

    @property
    def gap_percent(self) -> float:
        """(latency - match's latency) / match's latency, in percent."""
        return (self.latency_ms - self.match_latency_ms) / self.match_latency_ms * 100.0

    def percent(self, delta: str) -> float | None:
        """A delta (``d_params``, ``d_macs``, ``d_act_peak``) in percent of the match's value."""
        d = getattr(self, delta)
        own = getattr(self, delta[2:])
        if d is None or own is None or own - d == 0:
            return None
        return d / (own - d) * 100.0


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


_DELTA_COLUMNS = ((PARAMS.name, "params"), (MACS.name, "macs"), (ACT_PEAK.name, "act_peak"))


def matched_latency(result: RunResult, resolution: int, form: str | None = None) -> list[Match]:
    """Each variant with a latency beside each other family's variant nearest to it in
    latency (ties: the faster, then the earlier in run order). Empty for one family."""
    form = form or result.forms[0]
    usable, _ = cells(result, resolution, form)
    found = {r["variant"]: r for r in result.records
             if r["resolution"] == resolution and r.get("form", DEFAULT_FORM) == form}
    kin = list(dict.fromkeys(c.family for c in usable))
    out = []
    for cell in usable:
        for other in kin:
            if other == cell.family:
                continue
            rivals = [c for c in usable if c.family == other]
            match = min(rivals, key=lambda c: (abs(c.latency_ms - cell.latency_ms), c.latency_ms))
            own = {key: number(found[cell.variant].get(col)) for col, key in _DELTA_COLUMNS}
            theirs = {key: number(found[match.variant].get(col)) for col, key in _DELTA_COLUMNS}
            deltas = {key: _minus(own[key], theirs[key]) for key in own}
            out.append(Match(resolution, form, cell.variant, cell.family, match.variant, match.family,
                             cell.latency_ms, match.latency_ms, deltas["params"], deltas["macs"],
                             deltas["act_peak"], own["params"], own["macs"], own["act_peak"],
                             cell.noisy or match.noisy))
    return out


# -- markdown --------------------------------------------------------------------------


def _where(result: RunResult, resolution: int, form: str) -> str:
    return f"{resolution} px" + (f", {form}" if len(result.forms) > 1 else "")


def _scale(column: Column, values: Iterable[float | None]) -> tuple[float, str]:
    """Divisor and header unit for a column of values (units stated once)."""
    scale, unit = column_scale([v for v in values if v is not None], column.scale)
    return scale, (_UNIT_WORDS[unit] if column.scale == "count" else unit)


def _num(value: float | None, scale: float, digits: int = 3) -> str:
    return "-" if value is None else significant(value / scale, digits)


def _latency(cell_latency: float, noisy: bool) -> str:
    return significant(cell_latency, 3) + (NOISE_MARK if noisy else "")


def _name(cell: Cell, mark_registered: bool) -> str:
    return f"`{cell.variant}`" + (f" {REGISTERED_MARK}" if mark_registered and cell.registered else "")


def _excluded_text(excluded: Iterable[tuple[str, str]]) -> str:
    items = list(dict.fromkeys(excluded))
    if not items:
        return ""
    return "Left out: " + ", ".join(f"`{v}` ({why})" for v, why in items) + "."


def latency_counts(result: RunResult) -> list[int]:
    """How many variants have a usable latency, per resolution and form."""
    return [len(cells(result, r, f)[0]) for r in resolutions(result) for f in result.forms]


def frontier_applies(result: RunResult) -> bool:
    """A frontier view belongs in the report of a sweep and of a run of several families."""
    return (is_sweep(result) or len(families(result)) > 1) and max(latency_counts(result), default=0) >= 2


def _directions_text(axes: Sequence[Column]) -> str:
    """Which way each front goes, in words, with the reason (``FRONT_DIRECTIONS``)."""
    wants = " / ".join(f"the {'most' if direction(a.name) == 'max' else 'lowest'} {a.label_text}" for a in axes)
    gained = [a.label_text for a in axes if direction(a.name) == "max"]
    costs = [a.label_text for a in axes if direction(a.name) == "min"]
    why = []
    if gained:
        why.append(" and ".join(gained) + (" stand" if len(gained) > 1 else " stands")
                   + " in for capacity, what latency buys, as accuracy is not measured")
    if costs:
        why.append(" and ".join(costs) + (" are costs" if len(costs) > 1 else " is a cost"))
    return f"each front holds, at a given latency, {wants} (" + "; ".join(why) + ")"


def frontier_section(result: RunResult) -> str | None:
    """"Frontier": per resolution (and form), the variants on a front and which fronts."""
    if not frontier_applies(result):
        return None
    per_family = len(families(result)) > 1
    axes = FAMILY_AXES if per_family else FRONT_AXES
    sweep = is_sweep(result)
    blocks = []
    for resolution in resolutions(result):
        for form in result.forms:
            groups: list[str | None] = [*families(result)] if per_family else [None]
            found = [front(result, resolution, a.name, form, g) for g in groups for a in axes]
            found = [f for f in found if len(f.cells) >= 2]
            if not found:
                continue
            usable, excluded = cells(result, resolution, form, [a.name for a in axes])
            on: dict[str, list[str]] = {}
            for f in found:
                for m in f.members:
                    on.setdefault(m.variant, []).append(next(a.label_text for a in axes if a.name == f.axis))
            shown = [c for c in usable if c.variant in on or (sweep and c.registered)]
            rows_cells = sorted(shown,
                                key=lambda c: (groups.index(c.family) if per_family else 0, c.latency_ms))
            scales = {a.name: _scale(a, [c.values[a.name] for c in rows_cells]) for a in axes}
            header = ["variant", *(["family"] if per_family else []), "latency (ms)",
                      *(f"{a.label_text} ({scales[a.name][1]})" for a in axes), "on the front of"]
            rows = [[_name(c, sweep), *([c.family] if per_family else []), _latency(c.latency_ms, c.noisy),
                     *(_num(c.values[a.name], scales[a.name][0]) for a in axes), ", ".join(on.get(c.variant, ["-"]))]
                    for c in rows_cells]
            counted = f"{len(on)} of {len(usable)} variants on a front"
            left = _excluded_text(excluded)
            align = "l" + ("l" if per_family else "") + "r" * (len(axes) + 1) + "l"
            blocks.append(f"### {_where(result, resolution, form)}\n\n{counted}.\n\n{md_table(header, rows, align)}"
                          + (f"\n\n{left}" if left else ""))
    if not blocks:
        return None
    scope = "each family's variants" if per_family else "the run's variants"
    marks = [f"{NOISE_MARK} = latency flagged by the noise check (see Notes)"]
    if sweep:
        marks.insert(0, f"{REGISTERED_MARK} = a registered variant (the others are samples of the space)")
    return ("## Frontier\n\n"
            f"Pareto fronts of {scope}: latency (median) against "
            + ", ".join(a.label_text for a in axes) + "; " + _directions_text(axes)
            + ": a variant is on a front when no other is at most as slow and at least as good on its axis "
              "(and strictly better in one). Listed: the variants on some front"
            + (" and every registered variant" if sweep else "") + ", fastest first; "
            + "; ".join(marks) + ".\n\n" + "\n\n".join(blocks))


def budget_section(result: RunResult, latency_budgets: Sequence[float] | None = None,
                   macs_budgets: Sequence[float] | None = None, top: int = 3) -> str | None:
    """"Best under budget": for runs of many variants (``MANY_VARIANTS``), the most MACs
    under a few latency budgets and the fastest with at least a few MACs counts (default:
    each column's quartiles). The first of each row is on the MACs front."""
    if max(latency_counts(result), default=0) < MANY_VARIANTS:
        return None
    sweep = is_sweep(result)
    blocks = []
    for resolution in resolutions(result):
        for form in result.forms:
            usable, _ = cells(result, resolution, form, [MACS.name])
            if len(usable) < 2:
                continue
            mscale, munit = _scale(MACS, [c.values[MACS.name] for c in usable])
            rows = []
            lat = list(latency_budgets) if latency_budgets is not None else default_budgets(
                [c.latency_ms for c in usable])
            macs = list(macs_budgets) if macs_budgets is not None else default_budgets(
                [c.values[MACS.name] for c in usable])
            for column, budgets in ((LATENCY.name, lat), (MACS.name, macs)):
                for budget in budgets:
                    if column == LATENCY.name:
                        fits = best_under_budget(result, resolution, column, budget, form=form)
                        limit = f"latency ≤ {significant(budget, 3)}"
                    else:
                        fits = fastest_with_at_least(result, resolution, column, budget, form=form)
                        limit = f"MACs ≥ {significant(budget / mscale, 3)}"
                    best = "; ".join(f"{_name(c, sweep)} ({_latency(c.latency_ms, c.noisy)}, "
                                     f"{significant(c.values[MACS.name] / mscale, 3)})"
                                     for c in fits[:top]) or "none"
                    rows.append([limit, f"{len(fits)} of {len(usable)}", best])
            unit = "" if munit == "count" else f" in {munit}"
            header = [f"limit (latency in ms, MACs{unit})", "fit", f"best, top {top} (latency, MACs)"]
            blocks.append(f"### {_where(result, resolution, form)}\n\n" + md_table(header, rows, "lrl"))
    if not blocks:
        return None
    return ("## Best under budget\n\n"
            "Accuracy is not measured, so \"best\" follows the MACs front (most MACs at a given latency): "
            "under a latency budget, the most MACs that fit in the time (ties: the faster); for at least "
            "so many MACs, the fastest that has them (ties: more MACs). Either way the first of a row is "
            "on the front of all the variants. Limits are the quartiles of "
            f"the measured values; latency is the median ({NOISE_MARK} = flagged by the noise check)."
            "\n\n" + "\n\n".join(blocks))


def _rho(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.2f}"


def proxy_answer(result: RunResult, found: Sequence[Correlation]) -> str:
    """One line: how good a proxy MACs are for latency across the run, from the numbers."""
    macs = [c for c in found if c.predictor == MACS.name]
    defined = [c for c in macs if not c.reason]
    within = "within the space" if is_sweep(result) else "across this run's variants"
    machine = f"{result.environment.get('cpu_model') or 'this machine'}"
    device = str(result.settings.get("device", "cpu"))
    threads = result.settings.get("threads", 1)
    where = f"{machine} ({device}, {threads} thread(s))"
    if not defined:
        why = macs[0].reason if macs else "no cell has MACs and a latency"
        return f"**How good a proxy are MACs for latency {within} on {where}?** Undefined: {why}."
    taus = [c.kendall for c in defined]
    worst, best = min(taus), max(taus)
    grade = proxy_grade(worst) if proxy_grade(worst) == proxy_grade(best) else \
        f"{proxy_grade(worst)} to {proxy_grade(best)}"
    agreement = [c.agreement * 100 for c in defined]
    share = (f"{min(agreement):.0f}%" if round(min(agreement)) == round(max(agreement))
             else f"{min(agreement):.0f}-{max(agreement):.0f}%")
    n = sorted({c.n for c in defined})
    n_text = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}-{n[-1]}"
    line = (f"**How good a proxy are MACs for latency {within} on {where}?** {grade.capitalize()}: "
            f"Kendall τ-b {_rho(worst)}" + (f" to {_rho(best)}" if _rho(worst) != _rho(best) else "")
            + f" ({n_text}); of two variants, the one with fewer MACs was the faster in {share} of pairs")
    rivals = [c for c in found if c.predictor != MACS.name and not c.reason]
    better = [p for p in dict.fromkeys(c.predictor for c in rivals)
              if all(c.kendall > m.kendall for c in rivals if c.predictor == p for m in defined
                     if (m.resolution, m.form) == (c.resolution, c.form))]
    if better:
        line += "; " + ", ".join(_label(p) for p in better) + " ranked latency better at every resolution"
    if min(n) < 10:
        line += " (few variants: read it as a hint)"
    noisiest = max(defined, key=lambda c: c.noisy / c.n)
    if noisiest.noisy:
        line += f"; {noisiest.noisy} of {noisiest.n} latencies flagged as noisy ({NOISE_MARK})"
    return line + "."


def correlation_section(result: RunResult) -> str | None:
    """"Does compute predict latency?": per resolution, Spearman and Kendall tau-b of each
    predictor against latency, with n, and the one-line answer about MACs."""
    if max(latency_counts(result), default=0) < PREDICT_MIN_N:
        return None
    found = [c for r in resolutions(result) for f in result.forms for c in correlations(result, r, f)]
    found = [c for c in found if c.n > 0]
    if not found:
        return None
    rows = []
    for c in found:
        rows.append([_where(result, c.resolution, c.form), _label(c.predictor), str(c.n), _rho(c.spearman),
                     _rho(c.kendall), "-" if c.reason else f"{c.agreement * 100:.0f}%", c.reason or ""])
    header = ["resolution", "predictor", "n", "Spearman ρ", "Kendall τ-b", "pairs ordered alike",  # noqa: RUF001
              "undefined because"]
    if not any(c.reason for c in found):
        header, rows = header[:-1], [r[:-1] for r in rows]
    absent = "" if any(c.predictor == BYTES_MOVED.name for c in found) else (
        " Bytes moved are not in this run (they come from per-layer measurement).")
    return ("## Does compute predict latency?\n\n"
            "Rank correlations of each column with the median latency across the variants "
            "(1 = the same order; ties handled: average ranks, tau-b); \"pairs ordered alike\" is the share "
            "of pairs of variants that the column and latency both order and order the same way."
            + absent + "\n\n" + md_table(header, rows, "llrrrr" + ("l" if len(header) > 6 else ""))
            + "\n\n" + proxy_answer(result, found))


def _delta(match: Match, key: str, scale: float) -> str:
    d, pct = getattr(match, key), match.percent(key)
    if d is None:
        return "-"
    text = ("+" if d > 0 else "") + significant(d / scale, 3)
    return text + (f" ({pct:+.0f}%)" if pct is not None else "")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matched_summary(matches: Sequence[Match]) -> list[str]:
    """Per ordered family pair: median Δ (in %) over pairs within ``EQUAL_LATENCY_PERCENT``."""
    lines = []
    for pair in dict.fromkeys((m.family, m.match_family) for m in matches):
        close = [m for m in matches if (m.family, m.match_family) == pair
                 and abs(m.gap_percent) <= EQUAL_LATENCY_PERCENT]
        if not close:
            lines.append(f"- `{pair[0]}` against `{pair[1]}`: no pair within ±{EQUAL_LATENCY_PERCENT:.0f}% "
                         "latency; the table's gaps are too wide to compare at equal latency.")
            continue
        parts = []
        for key, label in (("d_macs", "MACs"), ("d_params", "params"), ("d_act_peak", "activation peak")):
            values = [p for p in (m.percent(key) for m in close) if p is not None]
            if values:
                parts.append(f"{label} {_median(values):+.0f}%")
        lines.append(f"- `{pair[0]}` against `{pair[1]}` ({len(close)} pair(s) within "
                     f"±{EQUAL_LATENCY_PERCENT:.0f}% latency): median " + ", ".join(parts) + ".")
    return lines


def matched_section(result: RunResult) -> str | None:
    """"At equal latency": each variant beside the other family's nearest by latency."""
    if len(families(result)) < 2:
        return None
    blocks = []
    for resolution in resolutions(result):
        for form in result.forms:
            matches = matched_latency(result, resolution, form)
            if not matches:
                continue
            scales = {key: _scale(col, [abs(getattr(m, key)) for m in matches if getattr(m, key) is not None])
                      for col, key in ((PARAMS, "d_params"), (MACS, "d_macs"), (ACT_PEAK, "d_act_peak"))}
            header = ["variant", "nearest in latency", "latency (ms)", "its latency (ms)", "latency gap",
                      *(f"Δ {label} ({scales[key][1]})" for key, label in
                        (("d_params", "params"), ("d_macs", "MACs"), ("d_act_peak", "activation peak")))]
            rows = [[f"`{m.variant}` ({m.family})", f"`{m.match}` ({m.match_family})",
                     significant(m.latency_ms, 3), significant(m.match_latency_ms, 3),
                     f"{m.gap_percent:+.0f}%" + (NOISE_MARK if m.noisy else ""),
                     *(_delta(m, key, scales[key][0]) for key in ("d_params", "d_macs", "d_act_peak"))]
                    for m in matches]
            _, excluded = cells(result, resolution, form)
            left = _excluded_text(excluded)
            blocks.append(f"### {_where(result, resolution, form)}\n\n" + md_table(header, rows, "llrrrrrr")
                          + "\n\n" + "\n".join(matched_summary(matches)) + (f"\n\n{left}" if left else ""))
    if not blocks:
        return None
    return ("## At equal latency\n\n"
            "Each variant beside the other family's variant nearest to it in latency (median); "
            "Δ = variant - nearest (in % of the nearest's value); latency gap = (variant - nearest) / nearest; "
            f"{NOISE_MARK} = one of the two latencies flagged by the noise check. The summary takes the pairs "
            f"within ±{EQUAL_LATENCY_PERCENT:.0f}% latency.\n\n" + "\n\n".join(blocks))


def frontier_sections(result: RunResult) -> list[str]:
    """The frontier view's report sections that apply to ``result``, in report order:
    "Frontier", "Best under budget", "Does compute predict latency?", "At equal latency"."""
    found = [frontier_section(result), budget_section(result), correlation_section(result), matched_section(result)]
    return [s for s in found if s]
