"""``archbench predictor validate``: a latency table judged on variants it has never seen.

**Hold-out set.** ``holdout`` points of the table's space drawn with another ``seed``
(default: the build seed + 1), leaving out every variant of the build set, at resolutions of
which at least one is not among the build's (refused otherwise: a table is only honest about
sizes it has not measured if some are held out).

**Measurement.** Each hold-out cell is measured as ``archbench run`` measures latency, with
``repeats=2``: two fresh processes, the cell's latency the median (mean) of their medians,
in the table's threads, device, input and form, into a run folder (``results.json``). A
folder that already holds this hold-out set's measurements is finished (``--resume``'s
rules) and reported again, e.g. with a re-tabulated table, without measuring again.

**Figures**, over the cells (and per resolution), for the table's prediction and beside it:

* ``MACs-linear`` and ``params-linear``: least-squares lines (with intercept) of measured
  latency on MACs, on parameters, fitted on the build set's cells (all its resolutions);
* ``noise floor``: process 1's median taken as a "prediction" of process 2's: what no
  predictor can beat on this machine.

On a shared machine whole processes run slow with no load to show for it, and a table
cannot know how slow a neighbour will make the machine; the table's times are brought to its
build's reference speed (``table_from_result``, ``build["probe_reference_ms"]``). So the
same figures are given twice more, from the speed probe (``archbench.profilers.speed``)
each process read around its timing, its slowdown being that reading over the table's
reference (over the validation run's fastest reading for a table without one):

* **at speed**: only the processes that ran within ``SLOW_FACTOR`` of the reference,
  their latencies as measured (the noise floor from cells where both did);
* **at the table's speed**: every process, its latency divided by its slowdown (the
  noise floor then says how well the probe accounts for the machine's changes of speed).

With ``p`` predicted and ``m`` measured: ``MAPE = mean |p - m| / m``, ``RMSPE = sqrt(mean
((p - m) / m)^2)``, ``within ±x%`` the share of cells with ``|p - m| / m <= x / 100``,
Spearman's rho and Kendall's tau-b (``archbench.render.frontier``'s exact implementations,
ties averaged) of ``p`` against ``m``. Pooled over resolutions, rank correlations mostly say
that bigger inputs are slower: the per-resolution rows are the ones that rank variants.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archbench.errors import ArchbenchError
from archbench.predict.table import LatencyTable, fit_line, predict_many
from archbench.profilers.speed import SLOW_FACTOR, is_slow, reading, slowdowns

PREDICTOR, MACS_LINEAR, PARAMS_LINEAR, NOISE_FLOOR = "latency table", "MACs-linear", "params-linear", "noise floor"
METHODS = (PREDICTOR, MACS_LINEAR, PARAMS_LINEAR, NOISE_FLOOR)
VALIDATION_REPEATS = 2


@dataclass(frozen=True)
class Accuracy:
    """How well ``predicted`` matches ``measured`` over ``n`` cells (percentages in %)."""

    n: int
    mape: float
    rmspe: float
    within_5: float
    within_10: float
    spearman: float
    kendall: float


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> Accuracy:
    """The module docstring's figures; ``ArchbenchError`` on no cells or a measured value <= 0."""
    from archbench.render.frontier import kendall_tau_b, spearman

    if len(predicted) != len(measured) or not measured:
        raise ArchbenchError(f"need as many predictions as measurements (and some): {len(predicted)} vs {len(measured)}")
    if any(not m > 0 for m in measured):
        raise ArchbenchError("measured latencies must be positive")
    errors = [(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    n = len(errors)
    return Accuracy(
        n=n,
        mape=100.0 * sum(abs(e) for e in errors) / n,
        rmspe=100.0 * math.sqrt(sum(e * e for e in errors) / n),
        within_5=100.0 * sum(abs(e) <= 0.05 + 1e-12 for e in errors) / n,
        within_10=100.0 * sum(abs(e) <= 0.10 + 1e-12 for e in errors) / n,
        spearman=spearman(list(predicted), list(measured)) if n > 1 else math.nan,
        kendall=kendall_tau_b(list(predicted), list(measured)) if n > 1 else math.nan,
    )


def baselines(table: LatencyTable, form: str) -> dict[str, tuple[float, float]]:
    """``(slope, intercept)`` of the MACs-linear and params-linear baselines on the build cells."""
    cells = [c for c in table.cells if c.get("form") == form and c.get("latency_ms")]
    out = {}
    for name, column in ((MACS_LINEAR, "macs"), (PARAMS_LINEAR, "params")):
        points = [(float(c[column]), float(c["latency_ms"])) for c in cells if c.get(column) is not None]
        if not points:
            raise ArchbenchError(f"the table's build cells have no {column}: cannot fit the {name} baseline")
        out[name] = fit_line([x for x, _ in points], [y for _, y in points])
    return out


def holdout_names(space: Any, build: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` points of ``space`` drawn with ``seed``, none of them in ``build``."""
    from archbench.spaces import sample_names, space_size

    if count < 1:
        raise ArchbenchError(f"--holdout must be at least 1, got {count}")
    excluded = set(build)
    available = space_size(space) - len(excluded)
    if count > available:
        raise ArchbenchError(f"space {space.name} has only {available:,} points outside the build set")
    names: list[str] = []
    drawn = count
    while len(names) < count:
        drawn = min(drawn + len(excluded), space_size(space))
        names = [n for n in sample_names(space, drawn, seed) if n not in excluded][:count]
        drawn *= 2
    return names


def check_resolutions(table: LatencyTable, resolutions: Sequence[int]) -> None:
    """At least one hold-out resolution must be new to the table."""
    built = set(int(r) for r in table.settings.get("resolutions", []))
    if not resolutions:
        raise ArchbenchError("no hold-out resolution given")
    if set(resolutions) <= built:
        raise ArchbenchError(f"hold-out resolutions {','.join(map(str, resolutions))} were all in the build set "
                             f"({','.join(map(str, sorted(built)))}); add at least one it did not measure")


def summarise(cells: Sequence[dict[str, Any]], table: LatencyTable, form: str) -> dict[str, dict[str, Accuracy]]:
    """Per group (``all`` and each resolution), per method, the accuracy over ``cells`` (each
    with ``resolution``, ``measured_ms``, ``process_ms`` [two], ``predicted_ms``, ``macs``, ``params``)."""
    fits = baselines(table, form)
    groups: dict[str, list[dict[str, Any]]] = {"all": list(cells)}
    for cell in cells:
        groups.setdefault(str(cell["resolution"]), []).append(cell)
    out: dict[str, dict[str, Accuracy]] = {}
    for group, members in groups.items():
        measured = [float(c["measured_ms"]) for c in members]
        methods = {
            PREDICTOR: [float(c["predicted_ms"]) for c in members],
            MACS_LINEAR: [fits[MACS_LINEAR][0] * float(c["macs"]) + fits[MACS_LINEAR][1] for c in members],
            PARAMS_LINEAR: [fits[PARAMS_LINEAR][0] * float(c["params"]) + fits[PARAMS_LINEAR][1] for c in members],
        }
        out[group] = {name: accuracy(values, measured) for name, values in methods.items()}
        paired = [c for c in members if len(c.get("process_ms") or []) >= 2]
        if paired:
            out[group][NOISE_FLOOR] = accuracy([float(c["process_ms"][0]) for c in paired],
                                               [float(c["process_ms"][1]) for c in paired])
    return out


def process_slowdowns(rows: Sequence[dict[str, Any]], table: LatencyTable) -> list[float]:
    """Each process row's speed-probe reading over the table's reference speed, or over the
    fastest among ``rows`` for a table without one; NaN for a row without a reading."""
    reference = table.build.get("probe_reference_ms")
    if not (isinstance(reference, int | float) and math.isfinite(reference) and reference > 0):
        return slowdowns(rows, "latency_probe_ms")
    return [value / reference if (value := reading(row, "latency_probe_ms")) is not None else math.nan
            for row in rows]


def at_reference_speed(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells with each process's latency divided by its slowdown (as measured where it has
    none), ``measured_ms`` their median."""
    out = []
    for cell in cells:
        factors = cell.get("process_slowdown") or [math.nan] * len(cell["process_ms"])
        scaled = [ms / f if math.isfinite(f) else ms for ms, f in zip(cell["process_ms"], factors, strict=True)]
        out.append({**cell, "process_ms": scaled, "measured_ms": statistics.median(scaled)})
    return out


def at_speed(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells that at least one process measured at speed (its slowdown within
    ``SLOW_FACTOR``), each with only those processes: ``process_ms`` theirs, ``measured_ms``
    their median. A process without a probe reading (NaN) counts as at speed, so results
    measured before the probe existed give the same cells as all of them."""
    out = []
    for cell in cells:
        kept = [ms for ms, factor in zip(cell["process_ms"], cell.get("process_slowdown") or
                                         [math.nan] * len(cell["process_ms"]), strict=True) if not is_slow(factor)]
        if kept:
            out.append({**cell, "process_ms": kept, "measured_ms": statistics.median(kept)})
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The validation as a markdown section: the figures per group and method, then the setting."""
    lines = [f"## Latency table validation: {report['table']}", "",
             f"{report['holdout']['count']} held-out variants of `{report['holdout']['space']}` (seed "
             f"{report['holdout']['seed']}, none in the build set) at {', '.join(map(str, report['holdout']['resolutions']))}"
             f" px (build: {', '.join(map(str, report['build_resolutions']))} px), form {report['form']}, "
             f"{report['threads']} thread(s); measured latency = median of {VALIDATION_REPEATS} fresh processes.", "",
             *SUMMARY_HEAD]
    lines += _summary_rows(report["summary"])
    total, reference = len(report.get("cells") or []), report.get("reference_probe_ms")
    against = (f"the table's reference speed (probe {reference:.3f} ms)" if isinstance(reference, int | float)
               and math.isfinite(reference) else "the fastest probe of this validation run")
    speed = report.get("at_speed") or {}
    if speed.get("summary"):
        lines += ["", f"**At speed** ({speed['cells']} of {total} cells): only the processes whose speed probe "
                  f"(`archbench.profilers.speed`) ran within {speed['slow_factor']:.2f}x of {against}, latencies as "
                  "measured; the noise floor from cells where both did.", "", *SUMMARY_HEAD,
                  *_summary_rows(speed["summary"])]
    rescaled = report.get("at_reference_speed") or {}
    if rescaled.get("summary"):
        lines += ["", f"**At the table's speed** ({rescaled['cells']} cells): every process's latency divided by its "
                  f"slowdown against {against}; the noise floor says how well the probe accounts for the machine's "
                  "changes of speed.", "", *SUMMARY_HEAD, *_summary_rows(rescaled["summary"])]
    counts = report.get("row_counts", {})
    if counts:
        lines += ["", "Rows of the held-out predictions: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."]
    lines += ["", f"Plot: `{Path(report['plot']).name}`." if report.get("plot") else ""]
    return "\n".join(lines).rstrip() + "\n"


SUMMARY_HEAD = ("| cells | method | n | MAPE % | RMSPE % | within ±5 % | within ±10 % | Spearman | Kendall |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|")


def _as_dicts(summary: dict[str, dict[str, Accuracy]]) -> dict[str, dict[str, Any]]:
    return {group: {method: asdict(a) for method, a in methods.items()} for group, methods in summary.items()}


def _summary_rows(summary: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for group, methods in summary.items():
        label = "all" if group == "all" else f"{group} px"
        for method, acc in methods.items():
            a = acc if isinstance(acc, dict) else asdict(acc)
            rows.append(f"| {label} | {method} | {a['n']} | {_number(a['mape'])} | {_number(a['rmspe'])} | "
                        f"{_number(a['within_5'], 0)} | {_number(a['within_10'], 0)} | {_number(a['spearman'], 3)} | "
                        f"{_number(a['kendall'], 3)} |")
    return rows


def plot(report: dict[str, Any], path: Path) -> Path:
    """Predicted vs measured latency, one colour per resolution, the ±10 % band, and the
    MACs-linear baseline's predictions as hollow markers: as measured, and beside it (where
    the cells have it) with every process brought to the table's speed."""
    from archbench.render.plots import _pyplot

    cells = report["cells"]
    panels = [("measured_ms", "as measured")]
    if all(c.get("measured_at_reference_ms") is not None for c in cells):
        panels.append(("measured_at_reference_ms", "brought to the table's speed (speed probe)"))
    plt = _pyplot()
    fig, axs = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.6), squeeze=False)
    for ax, (measured, title) in zip(axs[0], panels, strict=True):
        values = [c[measured] for c in cells] + [c["predicted_ms"] for c in cells]
        lo, hi = min(values) * 0.9, max(values) * 1.1
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15,
                        label="±10 %")
        for i, resolution in enumerate(sorted({c["resolution"] for c in cells})):
            mine = [c for c in cells if c["resolution"] == resolution]
            colour = f"C{i}"
            ax.errorbar([c[measured] for c in mine], [c["predicted_ms"] for c in mine],
                        yerr=[c["uncertainty_ms"] for c in mine], fmt="o", color=colour, markersize=4,
                        elinewidth=0.6, label=f"table, {resolution} px")
            ax.scatter([c[measured] for c in mine], [c["macs_linear_ms"] for c in mine], facecolors="none",
                       edgecolors=colour, marker="s", s=18, linewidths=0.7, label=f"MACs-linear, {resolution} px")
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms)")
        ax.set_title(f"held-out variants, {title}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def validate_table(table: LatencyTable, table_path: str, registry: Any, *, holdout: int, seed: int | None,
                   resolutions: Sequence[int], folder: Path, form: str | None = None, force: bool = False,
                   space: str | None = None, progress: Any = None, command: str = "") -> dict[str, Any]:
    """Measure the hold-out cells into ``folder`` and write ``validation.json``, ``validation.md``
    and ``predicted_vs_measured.png`` there; returns the report (see the module docstring)."""
    from archbench.predict.table import check_table
    from archbench.results import write_atomic
    from archbench.runner import NoProgress, Runner
    from archbench.settings import RunSettings

    form = form or table.forms[0]
    check_resolutions(table, resolutions)
    space_name = space or table.build.get("space")
    if not space_name:
        raise ArchbenchError("the table was not built from a space: name the space to hold out from with --space")
    warnings = check_table(table, form, table.threads, table.device, force=force)
    found = registry.space(space_name)
    seed = int(table.build.get("seed") or 0) + 1 if seed is None else seed
    names = holdout_names(found, table.build.get("variants", []), holdout, seed)
    settings = RunSettings(variants=tuple(names), resolutions=tuple(resolutions), metrics=("params", "macs", "latency"),
                           forms=(form,), threads=table.threads, device=table.device, repeats=VALIDATION_REPEATS,
                           input=table.settings.get("input") or "image",
                           batch_size=int(table.settings.get("batch_size", 1)))
    previous = None
    if (folder / "results.json").exists():  # measured before: finish it, and report again with this table
        from archbench.results import load

        previous = load(folder / "results.json")
        if RunSettings.from_json(previous.settings) != settings:
            raise ArchbenchError(f"{folder} holds the measurements of another hold-out set or settings; "
                                 "choose another --folder")
    result = Runner(settings, folder, command=command if previous is None else previous.command,
                    progress=progress or NoProgress(), registry=registry).run(previous)
    predictions = {(p.variant, p.resolution): p
                   for p in predict_many(names, resolutions, table, form=form, force=force, registry=registry)}
    fits = baselines(table, form)
    cells = []
    row_counts: dict[str, int] = {}
    process_rows = [p for p in result.latency_processes if p.get("form") == form and p.get("latency_ms_median")]
    slowdown = {(p["variant"], int(p["resolution"]), int(p["process"])): f
                for p, f in zip(process_rows, process_slowdowns(process_rows, table), strict=True)}
    for record in result.records:
        if record.get("status") != "ok" or not record.get("latency_ms_median"):
            continue
        key = (record["variant"], int(record["resolution"]))
        processes = sorted((p for p in result.latency_processes if (p["variant"], p["resolution"], p["form"])
                            == (key[0], key[1], form) and p.get("latency_ms_median")), key=lambda p: int(p["process"]))
        prediction = predictions[key]
        for status, count in prediction.counts.items():
            row_counts[status] = row_counts.get(status, 0) + count
        cells.append({"variant": key[0], "resolution": key[1], "measured_ms": float(record["latency_ms_median"]),
                      "process_ms": [float(p["latency_ms_median"]) for p in processes],
                      "process_slowdown": [slowdown[(key[0], key[1], int(p["process"]))] for p in processes],
                      "spread_ms": record.get("latency_ms_spread"), "predicted_ms": prediction.latency_ms,
                      "uncertainty_ms": prediction.uncertainty_ms, "macs": record["macs"], "params": record["params"],
                      "macs_linear_ms": fits[MACS_LINEAR][0] * float(record["macs"]) + fits[MACS_LINEAR][1],
                      "params_linear_ms": fits[PARAMS_LINEAR][0] * float(record["params"]) + fits[PARAMS_LINEAR][1],
                      **{f"rows_{k}": v for k, v in prediction.counts.items()}})
    if not cells:
        raise ArchbenchError(f"no hold-out cell was measured; see {folder / 'results.json'}")
    summary = summarise(cells, table, form)
    steady, rescaled = at_speed(cells), at_reference_speed(cells)
    for cell, brought in zip(cells, rescaled, strict=True):
        cell["measured_at_reference_ms"] = brought["measured_ms"]
    report = {"table": table_path, "form": form, "threads": table.threads, "warnings": warnings,
              "build_resolutions": table.settings.get("resolutions", []),
              "holdout": {"space": space_name, "seed": seed, "count": len(names), "resolutions": list(resolutions)},
              "baselines": {k: {"slope": v[0], "intercept": v[1]} for k, v in fits.items()},
              "row_counts": row_counts, "cells": cells,
              "summary": _as_dicts(summary),
              "reference_probe_ms": table.build.get("probe_reference_ms"),
              "at_speed": {"cells": len(steady), "slow_factor": SLOW_FACTOR,
                           "summary": _as_dicts(summarise(steady, table, form) if steady else {})},
              "at_reference_speed": {"cells": len(rescaled),
                                     "summary": _as_dicts(summarise(rescaled, table, form) if rescaled else {})},
              "results": str(folder / "results.json"), "plot": str(folder / "predicted_vs_measured.png")}
    plot(report, folder / "predicted_vs_measured.png")
    write_atomic(folder / "validation.json", json.dumps(_finite(report), indent=1) + "\n")
    write_atomic(folder / "validation.md", render_markdown(report))
    return report


__all__ = ["METHODS", "Accuracy", "accuracy", "at_reference_speed", "at_speed", "baselines", "check_resolutions",
           "holdout_names", "plot", "process_slowdowns", "render_markdown", "summarise", "validate_table"]
