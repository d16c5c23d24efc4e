"""The report's "Where the time goes" section and roofline plots, from a run's per-layer rows.

Read from results.json only (the ``layers`` rows and the ``ceilings`` in the environment;
see ``archbench.results``), never measured again:

* per resolution, each variant's kinds of work: share of layer time beside share of MACs
  and of bytes moved, how much of the time is in memory-bound layers, and how close the
  layers run to their roof (time-weighted);
* per ablation pair (``archbench.tables.ablation_pairs``), where the latency difference
  sits: in the modules only one side has (the SE blocks a ``.nose`` ablation removes), in
  the modules both have, and by kind of work;
* per resolution, a log-log roofline plot: every layer a point at (FLOPs per byte,
  attained GFLOP/s) sized by its time, with the measured ceilings drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archbench.profilers.layer_views import KINDS, group_layers
from archbench.profilers.speed import SLOW_FACTOR, is_slow, slowdowns
from archbench.render.markdown import NOISE_MARK, md_table
from archbench.render.units import significant
from archbench.results import RunResult
from archbench.tables import AblationPair, ablation_pairs, variant_order

if TYPE_CHECKING:
    import pandas as pd

from archbench.render.plots import ROOFLINE_PATTERN, ROOFLINE_PLOT, _pyplot


def _ms(value: float) -> str:
    return f"{significant(value, 3)} ms"


def layer_form(result: RunResult) -> str | None:
    """The form whose per-layer rows the report reads: the run's first form that has them."""
    measured = {row.get("form", "eager") for row in result.layers}
    return next((form for form in result.forms if form in measured), None)


def _cells(result: RunResult, form: str) -> dict[tuple[str, int], pd.DataFrame]:
    """(variant, resolution) -> per-layer frame, in the run's order, for cells that have rows."""
    cells = {}
    for resolution in result.settings.get("resolutions", []):
        for variant in variant_order(result):
            frame = result.layer_frame(variant, resolution, form)
            if not frame.empty:
                cells[(variant, resolution)] = frame
    return cells


def contended(result: RunResult, variant: str, resolution: int, form: str) -> bool:
    """Whether other processes kept the measured CPUs busy while the cell's layers were timed
    (as the latency check judges: more than ``max_other_load`` cores on them)."""
    from archbench.profilers.latency import LatencyConfig, load_on_measurement

    record = result.record(variant, resolution, form) or {}
    other = record.get("layers_other_load")
    if not isinstance(other, int | float) or not str(result.settings.get("device", "cpu")).startswith("cpu"):
        return False
    threads, cpus = int(result.settings.get("threads", 1)), int(result.environment.get("cpu_cores", 1) or 1)
    return load_on_measurement(other, threads, cpus) > LatencyConfig().max_other_load


def slowed_layers(result: RunResult, form: str) -> set[tuple[str, int]]:
    """The cells of ``form`` whose layers were timed while the speed probe read more than
    ``SLOW_FACTOR`` above the run's fastest (``archbench.profilers.speed``)."""
    records = [r for r in result.records if r.get("form") == form and r.get("status") == "ok"]
    return {(r["variant"], int(r["resolution"])) for r, factor in zip(records, slowdowns(records, "layers_probe_ms"),
                                                                       strict=True) if is_slow(factor)}


def _roof_position(frame: pd.DataFrame) -> tuple[float, float]:
    """(share of layer time in memory-bound layers, time-weighted mean % of roof)."""
    time = frame["latency_ms"].astype(float)
    total = float(time.sum())
    if total <= 0:
        return 0.0, 0.0
    memory = float(time[frame["bound"] == "memory"].sum()) / total
    return memory, float((frame["pct_of_roof"].astype(float) * time).sum()) / total


def kinds_table(cells: dict[tuple[str, int], pd.DataFrame], resolution: int,
                flagged: frozenset[str] = frozenset()) -> str | None:
    """Variants x kinds of work at one resolution: time % / MACs % / bytes % (``flagged``
    variants' layers were timed on a contended CPU: marked †)."""
    frames = {variant: frame for (variant, r), frame in cells.items() if r == resolution}
    if not frames:
        return None
    grouped = {variant: group_layers(frame, "kind").set_index("kind") for variant, frame in frames.items()}
    kinds = [k for k in KINDS if any(k in g.index for g in grouped.values())]
    rows = []
    for variant, groups in grouped.items():
        shares = []
        for kind in kinds:
            if kind not in groups.index:
                shares.append("-")
                continue
            g = groups.loc[kind]
            shares.append(f"{100 * g['latency_share']:.0f} / {100 * g['macs_share']:.0f} / {100 * g['bytes_share']:.0f}")
        memory, roof = _roof_position(frames[variant])
        total = float(frames[variant]["latency_ms"].sum())
        mark = NOISE_MARK if variant in flagged else ""
        rows.append([f"`{variant}`{mark}", _ms(total), *shares, f"{100 * memory:.0f}", f"{roof:.0f}"])
    header = ["variant", "layer time", *kinds, "memory-bound time %", "% of roof (time-weighted)"]
    return f"**{resolution} px**\n\n" + md_table(header, rows)


@dataclass(frozen=True)
class Attribution:
    """Where one ablation pair's difference in layer time sits (changed - base, ms)."""

    pair: AblationPair
    resolution: int
    base_ms: float
    changed_ms: float
    only_base_ms: float  # time of modules only the base has (removed by the change)
    only_base_kinds: dict[str, float]
    only_changed_ms: float  # time of modules only the changed variant has
    only_changed_kinds: dict[str, float]
    shared_delta_ms: float  # change in the modules both have
    largest_shared: list[tuple[str, float]]  # the shared modules that changed most
    kind_delta_ms: dict[str, float]  # change by kind of work, all modules

    @property
    def delta_ms(self) -> float:
        return self.changed_ms - self.base_ms


def attribute(pair: AblationPair, resolution: int, base: pd.DataFrame, changed: pd.DataFrame,
              largest: int = 3) -> Attribution:
    """Split ``changed - base`` layer time into modules only one side has and modules both have
    (matched by dotted name), and by kind of work."""
    b = base.set_index("module")["latency_ms"].astype(float)
    c = changed.set_index("module")["latency_ms"].astype(float)
    only_b, only_c = b.index.difference(c.index), c.index.difference(b.index)
    shared = b.index.intersection(c.index)
    shared_delta = (c[shared] - b[shared]).sort_values(key=abs, ascending=False, kind="stable")

    def kinds_of(frame: pd.DataFrame, modules: Any) -> dict[str, float]:
        rows = frame[frame["module"].isin(modules)]
        sums = rows.groupby("kind")["latency_ms"].sum().sort_values(ascending=False)
        return {str(k): float(v) for k, v in sums.items()}

    by_kind_b = base.groupby("kind")["latency_ms"].sum()
    by_kind_c = changed.groupby("kind")["latency_ms"].sum()
    kind_delta = by_kind_c.sub(by_kind_b, fill_value=0.0).sort_values(key=abs, ascending=False, kind="stable")
    return Attribution(
        pair, resolution, float(b.sum()), float(c.sum()),
        float(b[only_b].sum()), kinds_of(base, only_b), float(c[only_c].sum()), kinds_of(changed, only_c),
        float(shared_delta.sum()), [(str(m), float(d)) for m, d in shared_delta.head(largest).items()],
        {str(k): float(v) for k, v in kind_delta.items()},
    )


def _kinds_text(kinds: dict[str, float]) -> str:
    return ", ".join(f"{kind} {_ms(ms)}" for kind, ms in list(kinds.items())[:3] if ms > 0)


def attribution_sentence(a: Attribution, flagged: bool = False) -> str:
    """One line: what the change saves or costs, and where (``flagged``: a side was timed on a
    contended CPU, so the split is not to be trusted)."""
    verb = "saves" if a.delta_ms < 0 else "costs"
    p = a.pair
    before = "builder default" if p.before is None else p.before
    parts = [f"`{p.changed}` ({p.axis} = {before} -> {p.after}) {verb} {_ms(abs(a.delta_ms))} of layer time "
             f"against `{p.base}` at {a.resolution} px ({_ms(a.base_ms)} -> {_ms(a.changed_ms)})"]
    where = []
    if a.only_base_ms:
        where.append(f"{_ms(a.only_base_ms)} in modules only `{p.base}` has ({_kinds_text(a.only_base_kinds)})")
    if a.only_changed_ms:
        where.append(f"{_ms(a.only_changed_ms)} in modules only `{p.changed}` has "
                     f"({_kinds_text(a.only_changed_kinds)})")
    largest = ", ".join(f"`{m}` {'+' if d >= 0 else '-'}{_ms(abs(d))}" for m, d in a.largest_shared)
    where.append(f"{'+' if a.shared_delta_ms >= 0 else '-'}{_ms(abs(a.shared_delta_ms))} in the modules both have"
                 + (f" (largest: {largest})" if largest else ""))
    kinds = ", ".join(f"{k} {'+' if d >= 0 else '-'}{_ms(abs(d))}" for k, d in list(a.kind_delta_ms.items())[:3])
    caveat = f" {NOISE_MARK} timed while other processes kept the CPU busy: read with care." if flagged else ""
    return parts[0] + ": " + "; ".join(where) + f". By kind of work: {kinds}.{caveat}"


def attributions(result: RunResult, cells: dict[tuple[str, int], pd.DataFrame]) -> list[Attribution]:
    found = []
    for pair in ablation_pairs(result):
        for resolution in result.settings.get("resolutions", []):
            base, changed = cells.get((pair.base, resolution)), cells.get((pair.changed, resolution))
            if base is not None and changed is not None:
                found.append(attribute(pair, resolution, base, changed))
    return found


def _ceilings_text(result: RunResult) -> str:
    c = result.environment.get("ceilings") or {}
    if not c:
        return "the machine's ceilings were not recorded"
    return (f"this machine's measured ceilings: {significant(float(c['peak_gflops']), 3)} GFLOP/s fp32 and "
            f"{significant(float(c['bandwidth_gbps']), 3)} GB/s at {c.get('threads', '?')} thread(s) "
            f"(`archbench machine`; {c.get('method', '')})")


def _reconciliation_text(result: RunResult, form: str) -> str:
    ratios = [r["layers_reconciliation"] for r in result.records
              if r.get("form") == form and isinstance(r.get("layers_reconciliation"), int | float)]
    if not ratios:
        return ""
    return (f" The sum of layer medians is {min(ratios):.3f}-{max(ratios):.3f} x the whole forward measured "
            f"in the same call, over {len(ratios)} cells.")


def time_sections(result: RunResult, plots: Sequence[str] = ()) -> list[str]:
    """The "Where the time goes" section (empty when the run measured no layers)."""
    form = layer_form(result)
    if form is None:
        return []
    cells = _cells(result, form)
    blocks = [
        "## Where the time goes\n\n"
        f"Per-layer own time ({form} form; a module's children excluded, so layers add up to the forward), "
        "MACs and compulsory bytes moved, grouped by kind of work. Each cell: share of layer time / of MACs / "
        f"of bytes moved, in %. Roofline against {_ceilings_text(result)}."
        + _reconciliation_text(result, form)
    ]
    flagged = {(v, r) for v, r in cells if contended(result, v, r, form)} | (slowed_layers(result, form) & set(cells))
    for resolution in result.settings.get("resolutions", []):
        table = kinds_table(cells, resolution, frozenset(v for v, r in flagged if r == resolution))
        if table:
            blocks.append(table)
    if flagged:
        blocks.append(f"{NOISE_MARK} = layers timed while other processes kept the measured CPU busy, or while "
                      f"the machine ran more than {SLOW_FACTOR:.2f}x slower than its fastest in this run (speed "
                      "probe): shares within such a cell hold, milliseconds compared across cells less so.")
    found = attributions(result, cells)
    if found:
        lines = [attribution_sentence(a, bool({(a.pair.base, a.resolution), (a.pair.changed, a.resolution)} & flagged))
                 for a in found]
        blocks.append("**Ablations: where the difference sits** (per-layer medians of one process; modules "
                      "matched by name)\n\n" + "\n".join(f"- {line}" for line in lines))
    rooflines = [p for p in plots if fnmatch(p, ROOFLINE_PATTERN)]
    if rooflines:
        blocks.append("Roofline plots (under Plots): " + ", ".join(f"[{p}]({p})" for p in rooflines) + ".")
    return ["\n\n".join(blocks)]


# -- roofline plots ------------------------------------------------------------------


def plot_roofline(result: RunResult, resolution: int, form: str, path: Path) -> bool:
    """One panel per variant at ``resolution``: layers with FLOPs as points (area ~ time),
    the ceilings as the roof; layers without FLOPs are counted in the panel's title."""
    cells = {v: f for (v, r), f in _cells(result, form).items() if r == resolution}
    ceilings = result.environment.get("ceilings") or {}
    if not cells or not ceilings:
        return False
    import numpy as np

    peak, bandwidth = float(ceilings["peak_gflops"]), float(ceilings["bandwidth_gbps"])
    plt = _pyplot()
    columns = min(3, len(cells))
    rows = -(-len(cells) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.9 * rows), squeeze=False, sharey=True)
    for ax in axes.ravel()[len(cells):]:
        ax.set_visible(False)
    for ax, (variant, frame) in zip(axes.ravel(), cells.items(), strict=False):
        drawn = frame[(frame["flops"] > 0) & (frame["attained_gflops"] > 0)]
        total = float(frame["latency_ms"].sum())
        hidden = 100 * (1 - float(drawn["latency_ms"].sum()) / total) if total else 0.0
        intensity = np.logspace(-2, 3, 200)
        ax.loglog(intensity, np.minimum(peak, intensity * bandwidth), color="black", lw=1.2)
        colours = {"compute": "C3", "memory": "C0"}
        for bound, part in drawn.groupby("bound"):
            ax.scatter(part["intensity"], part["attained_gflops"], s=8 + 400 * part["latency_ms"] / total,
                       alpha=0.55, color=colours.get(str(bound), "C2"), label=f"{bound}-bound")
        ax.set_title(f"{variant}: {total:.1f} ms; {hidden:.0f}% of time in layers\nwithout FLOPs (not drawn)",
                     fontsize=8)
        ax.set_xlabel("intensity (FLOPs / byte moved)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[:, 0]:
        ax.set_ylabel("attained GFLOP/s", fontsize=8)
    fig.suptitle(f"Roofline at {resolution} px ({form}): peak {peak:.0f} GFLOP/s, {bandwidth:.1f} GB/s; "
                 "point area ~ layer time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_roofline_plots(result: RunResult, folder: Path) -> list[str]:
    form = layer_form(result)
    if form is None:
        return []
    written = []
    for resolution in result.settings.get("resolutions", []):
        name = ROOFLINE_PLOT.format(resolution=resolution)
        if plot_roofline(result, resolution, form, folder / name):
            written.append(name)
    return written


__all__ = ["Attribution", "attribute", "time_sections", "write_roofline_plots"]
