"""Write a run's report files: report.md, its PNG plots and results.csv."""

from __future__ import annotations

from pathlib import Path

from archbench.render.markdown import render_markdown
from archbench.render.plots import write_plots
from archbench.results import RunResult, write_atomic


def write_report(result: RunResult, folder: Path) -> Path:
    """Render ``result`` into ``folder``; returns the report.md path."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = write_plots(result, folder)
    path = folder / "report.md"
    write_atomic(path, render_markdown(result, plots))
    write_atomic(folder / "results.csv", result.frame().to_csv(index=False))
    return path
