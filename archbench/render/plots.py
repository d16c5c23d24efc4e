"""PNG plots of a run (matplotlib, Agg backend): what a reader checks by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archbench.metrics import LATENCY, MACS, PARAMS
from archbench.render.units import column_scale
from archbench.results import RunResult
from archbench.tables import latency_spread, pivot, variant_order

#: Variants named in a plot's legend at most (a sweep's hundreds are drawn unnamed).
MAX_LEGEND = 12


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_resolution(result: RunResult, path: Path) -> bool:
    latency, spread = pivot(result, LATENCY.name), latency_spread(result)
    if latency.empty:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in latency.index:
        row = latency.loc[variant].dropna()
        err = spread.loc[variant, row.index] if variant in spread.index else None
        ax.errorbar(row.index, row.values, yerr=err, marker="o", capsize=3, label=variant)
    ax.set(xlabel="input resolution (px)", ylabel="latency, median (ms)",
           title=f"Latency vs resolution ({result.settings.get('device', 'cpu')}, "
                 f"{result.settings.get('threads', 1)} thread(s))")
    ax.set_xticks(list(latency.columns))
    ax.grid(alpha=0.3)
    if len(latency.index) <= MAX_LEGEND:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_against_latency(result: RunResult, column: str, label: str, path: Path) -> bool:
    """Scatter of ``column`` against latency, one marker per variant x resolution."""
    values, latency = pivot(result, column), pivot(result, LATENCY.name)
    if values.empty or latency.empty:
        return False
    scale, unit = column_scale(values.to_numpy().ravel().tolist(), "count")
    values = values / scale
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, resolution in enumerate(latency.columns):
        for variant in variant_order(result):
            if variant in latency.index and variant in values.index:
                x, y = values.loc[variant, resolution], latency.loc[variant, resolution]
                ax.scatter(x, y, marker=markers[i % len(markers)], color=f"C{list(latency.index).index(variant) % 10}",
                           label=variant if i == 0 else None)
    handles = [plt.Line2D([], [], marker=markers[i % len(markers)], linestyle="", color="gray", label=f"{r} px")
               for i, r in enumerate(latency.columns)]
    if len(latency.index) <= MAX_LEGEND:
        ax.add_artist(ax.legend(fontsize=8, loc="upper left"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set(xlabel=f"{label} ({unit})" if unit else label, ylabel="latency, median (ms)",
           title=f"Do {label} predict latency? ({result.settings.get('device', 'cpu')})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


AGAINST_LATENCY = (MACS, PARAMS)
#: Pareto fronts and predictors of latency (``archbench.render.frontier_plots``).
FRONTIER_PLOT_FILES: tuple[str, ...] = ("pareto_fronts.png", "latency_predictors.png")
#: Roofline plots, one per resolution (``roofline_320.png``; ``archbench.render.where_time_goes``).
ROOFLINE_PLOT = "roofline_{resolution}.png"
ROOFLINE_PATTERN = "roofline_*.png"
#: Every file ``write_plots`` may write (``fnmatch`` patterns for the per-resolution ones).
PLOT_FILES: tuple[str, ...] = ("latency_vs_resolution.png", *(f"{m.name}_vs_latency.png" for m in AGAINST_LATENCY),
                               *FRONTIER_PLOT_FILES, ROOFLINE_PATTERN)


def write_plots(result: RunResult, folder: Path) -> list[str]:
    """All plots the run's data allows; returns the file names written."""
    written = []
    if plot_latency_vs_resolution(result, folder / PLOT_FILES[0]):
        written.append(PLOT_FILES[0])
    for metric, name in zip(AGAINST_LATENCY, PLOT_FILES[1:3], strict=True):
        if plot_against_latency(result, metric.name, metric.label_text, folder / name):
            written.append(name)
    from archbench.render.frontier_plots import write_frontier_plots
    from archbench.render.where_time_goes import write_roofline_plots

    return written + write_frontier_plots(result, folder) + write_roofline_plots(result, folder)
