"""PNG plots of the frontier view (matplotlib, Agg backend, as ``render.plots``):
the Pareto fronts and the predictors of latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archbench.render.frontier import (
    FRONT_AXES,
    PREDICT_MIN_N,
    Front,
    cells,
    correlations,
    families,
    front,
    front_goal,
    frontier_applies,
    is_sweep,
    latency_counts,
    predictors_present,
    resolutions,
)
from archbench.render.plots import FRONTIER_PLOT_FILES, _pyplot
from archbench.render.units import column_scale
from archbench.results import RunResult

#: Every file ``write_frontier_plots`` may write.
_MAX_ROWS = 6  # resolution x form rows drawn in one figure



def _rows(result: RunResult) -> list[tuple[int, str]]:
    return [(r, f) for r in resolutions(result) for f in result.forms][:_MAX_ROWS]


def _unit_label(label: str, scale_kind: str, values: list[float]) -> tuple[float, str]:
    scale, unit = column_scale(values, scale_kind)
    return scale, f"{label} ({unit})" if unit else label


def plot_pareto_fronts(result: RunResult, path: Path) -> bool:
    """Latency against MACs, params and activation peak (one row per resolution and form),
    every cell a marker coloured by family, each front a step line in its direction (most
    MACs / params, lowest activation peak at a given latency: ``FRONT_DIRECTIONS``),
    registered variants of a sweep ringed. False (nothing written) when no front has two
    cells."""
    if not frontier_applies(result):
        return False
    kin = families(result)
    axes = FRONT_AXES  # all three costs; per family when the run holds several
    groups: list[str | None] = [*kin] if len(kin) > 1 else [None]
    grid = [[[front(result, r, a.name, f, g) for g in groups] for a in axes] for r, f in _rows(result)]
    if not any(len(fr.cells) >= 2 for row in grid for col in row for fr in col):
        return False
    sweep = is_sweep(result)
    plt = _pyplot()
    fig, axs = plt.subplots(len(grid), len(axes), figsize=(4.2 * len(axes), 3.6 * len(grid)), squeeze=False)
    colors = {name: f"C{i % 10}" for i, name in enumerate(kin)}
    for i, (row, (resolution, form)) in enumerate(zip(grid, _rows(result), strict=True)):
        for j, (column, found) in enumerate(zip(axes, row, strict=True)):
            ax = axs[i][j]
            values = [c.values[column.name] for fr in found for c in fr.cells]
            scale, xlabel = _unit_label(column.label_text, column.scale, values)
            for fr in found:
                _draw_front(ax, fr, column.name, scale, colors, sweep, many=len(values) > 40)
            ax.set(xlabel=xlabel, ylabel="latency, median (ms)",
                   title=f"{resolution} px" + (f", {form}" if len(result.forms) > 1 else "")
                   + f": {front_goal(column.name)}")
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0 and ax.get_legend_handles_labels()[1]:  # none when no cell was timed
                ax.legend(fontsize=7)
    kind = "each family's" if len(kin) > 1 else "the run's"
    fig.suptitle(f"Pareto fronts of {kind} variants ({result.settings.get('device', 'cpu')}, "
                 f"{result.settings.get('threads', 1)} thread(s)); step line = front"
                 + ("; ringed = registered" if sweep else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _draw_front(ax: Any, fr: Front, axis: str, scale: float, colors: dict[str, str], sweep: bool,
                many: bool) -> None:
    if not fr.cells:
        return
    for family in dict.fromkeys(c.family for c in fr.cells):
        own = [c for c in fr.cells if c.family == family]
        ax.scatter([c.values[axis] / scale for c in own], [c.latency_ms for c in own], s=12 if many else 28,
                   alpha=0.5 if many else 0.9, color=colors.get(family, "gray"), label=family)
    members = sorted(fr.members, key=lambda c: (c.values[axis], c.latency_ms))
    if members:
        color = colors.get(members[0].family, "black") if fr.family else "black"
        # the least latency that buys at least x (max: the step holds to the left of each member)
        # or that needs at most x (min: it holds to the right)
        ax.step([c.values[axis] / scale for c in members], [c.latency_ms for c in members],
                where="pre" if fr.sense == "max" else "post", color=color, linewidth=1.2)
    if sweep:
        marked = [c for c in fr.cells if c.registered]
        ax.scatter([c.values[axis] / scale for c in marked], [c.latency_ms for c in marked], s=90,
                   facecolors="none", edgecolors="black", linewidths=1.2)
        for c in marked:
            ax.annotate(c.variant, (c.values[axis] / scale, c.latency_ms), fontsize=6, xytext=(4, 4),
                        textcoords="offset points")
    elif not many:
        for c in fr.members:
            ax.annotate(c.variant, (c.values[axis] / scale, c.latency_ms), fontsize=6, xytext=(4, 4),
                        textcoords="offset points")


def plot_latency_predictors(result: RunResult, path: Path) -> bool:
    """Each predictor (MACs, params, activation peak, bytes moved when recorded) against
    latency, one row per resolution and form, with Spearman and Kendall tau-b in each
    title. False when no resolution has ``PREDICT_MIN_N`` variants with a latency."""
    if max(latency_counts(result), default=0) < PREDICT_MIN_N:
        return False
    predictors = predictors_present(result)
    if not predictors:
        return False
    rows = _rows(result)
    plt = _pyplot()
    fig, axs = plt.subplots(len(rows), len(predictors), figsize=(4.0 * len(predictors), 3.4 * len(rows)),
                            squeeze=False)
    kin = families(result)
    colors = {name: f"C{i % 10}" for i, name in enumerate(kin)}
    sweep = is_sweep(result)
    for i, (resolution, form) in enumerate(rows):
        found = {c.predictor: c for c in correlations(result, resolution, form, predictors)}
        for j, column in enumerate(predictors):
            ax = axs[i][j]
            usable, _ = cells(result, resolution, form, [column.name])
            scale, xlabel = _unit_label(column.label_text, column.scale, [c.values[column.name] for c in usable])
            for family in dict.fromkeys(c.family for c in usable):
                own = [c for c in usable if c.family == family]
                ax.scatter([c.values[column.name] / scale for c in own], [c.latency_ms for c in own], s=14,
                           alpha=0.7, color=colors.get(family, "gray"), label=family if len(kin) > 1 else None)
            if sweep:
                marked = [c for c in usable if c.registered]
                ax.scatter([c.values[column.name] / scale for c in marked], [c.latency_ms for c in marked], s=80,
                           facecolors="none", edgecolors="black", linewidths=1.2)
            corr = found[column.name]
            stats = (f"ρ {corr.spearman:+.2f}, τ-b {corr.kendall:+.2f}, n {corr.n}" if not corr.reason  # noqa: RUF001
                     else f"undefined (n {corr.n})")
            ax.set(xlabel=xlabel, ylabel="latency, median (ms)",
                   title=f"{resolution} px" + (f", {form}" if len(result.forms) > 1 else "") + f": {stats}")
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0 and len(kin) > 1:
                ax.legend(fontsize=7)
    fig.suptitle(f"Does compute predict latency? ({result.settings.get('device', 'cpu')}, "
                 f"{result.settings.get('threads', 1)} thread(s))" + ("; ringed = registered" if sweep else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_frontier_plots(result: RunResult, folder: Path) -> list[str]:
    """The frontier plots the run's data allows; returns the file names written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in zip(FRONTIER_PLOT_FILES, (plot_pareto_fronts, plot_latency_predictors), strict=True):
        if plot(result, folder / name):
            written.append(name)
    return written

