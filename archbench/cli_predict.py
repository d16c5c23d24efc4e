"""``archbench predictor build|validate`` and ``archbench predict``: latency tables on the command line.

Attached to the main ``archbench`` group in ``archbench/cli.py``; errors are one line with
exit code 2 (``ArchbenchError``), as elsewhere. See ``archbench.predict`` for the method.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from archbench.errors import ArchbenchError
from archbench.registry import Registry

if TYPE_CHECKING:
    from archbench.predict.build import BuildPlan
    from archbench.results import RunResult
    from archbench.runner import Runner


def _registry() -> Registry:
    registry: Registry = click.get_current_context().find_root().obj
    return registry


def _command() -> str:
    from archbench.cli import _ARGV

    return "archbench " + " ".join(shlex.quote(a) for a in _ARGV)


def _names(registry: Registry, source: str, samples: int | None, seed: int) -> tuple[list[str], str | None]:
    """The variants SOURCE names: ``samples`` points of a space, or registered variants
    (comma-separated names, families or wildcards); and the space, if it is one."""
    from archbench.spaces import check_space, sample_names

    if source in registry.spaces:
        found = registry.space(source)
        check_space(found, registry)
        return sample_names(found, 40 if samples is None else samples, seed), source
    if samples is not None:
        raise ArchbenchError(f"--samples needs a space; {source!r} is not one (see `archbench space list`)")
    return [spec.name for spec in registry.select(source)], None


@click.group("predictor")
def predictor_group() -> None:
    """Latency tables: build one from measured blocks, validate it on held-out variants."""


#: Options that only say where the table goes or where and how fast cells run: allowed with --resume.
RESUME_OPTIONS = ("resume", "out", "backend", "address", "workers")


@predictor_group.command("build")
@click.argument("source", required=False)
@click.option("--samples", "-n", default=None, type=click.IntRange(min=1), help="Points of a space.  [default: 40]")
@click.option("--seed", "-s", default=0, show_default=True, type=int)
@click.option("--resolutions", "-r", default="320", show_default=True)
@click.option("--forms", "-f", default="eager", show_default=True, help="Forms that keep the modules: eager, fused, channels_last.")
@click.option("--threads", "-t", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="The table file to write (required; with --resume [default: the one the build named]).")
@click.option("--folder", default=None, type=click.Path(path_type=Path),
              help="Run folder of the build measurements [default: reports/predictor-<source>-<time>].")
@click.option("--backend", default="local", show_default=True, help="A space's build: local (worker processes) or ray.")
@click.option("--workers", "-w", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--address", default=None, help="Ray: join the cluster at HOST:PORT.")
@click.option("--on", "on", default=None, help="Ray: time only on nodes that declare this custom resource.")
@click.option("--from-results", "from_results", default=None, type=click.Path(path_type=Path),
              help="Tabulate this results.json (latency and layers measured) instead of measuring.")
@click.option("--resume", default=None, type=click.Path(path_type=Path),
              help="Finish the interrupted build in this run folder (only its missing cells, with its recorded "
                   "settings; --out, --backend, --address, --workers may be given), then write the table.")
@click.pass_context
def build_command(ctx: click.Context, source: str | None, samples: int | None, seed: int, resolutions: str, forms: str,
                  threads: int, out: Path | None, folder: Path | None, backend: str, workers: int, address: str | None,
                  on: str | None, from_results: Path | None, resume: Path | None) -> None:
    """Measure per-layer profiles of SOURCE (a space's samples, or variants) and write a latency table."""
    from archbench.cli import default_out_dir, parse_ints
    from archbench.predict.build import BuildPlan
    from archbench.profilers.layers import LAYER_FORMS
    from archbench.registry import parse_list
    from archbench.run_folder import check_out_folder
    from archbench.settings import check_choices

    if out is not None and out.is_dir():
        raise ArchbenchError(f"--out {out} is a folder; name the table file")
    if on is not None and "," in on:
        raise ArchbenchError("a latency table is built on one kind of node: --on takes one label "
                             "(build one table per label)")
    if resume is not None:
        _refuse_given_options(ctx, resume)
        _resume_build(_registry(), resume, out, backend, workers, address)
        return
    if out is None:
        raise ArchbenchError("name the table file to write with --out")
    if from_results is not None:
        if source is not None:
            raise ArchbenchError("give SOURCE to measure, or --from-results to tabulate a run, not both")
        from archbench.predict.table import table_from_results_file

        _report(table_from_results_file(from_results, _command()).save(out), from_results, 0)
        return
    if source is None:
        raise ArchbenchError("name what to measure (a space or variants), or tabulate a run with --from-results")
    registry = _registry()
    names, space = _names(registry, source, samples, seed)
    form_list = check_choices(parse_list(forms), LAYER_FORMS, "form for a latency table")
    plan = BuildPlan(tuple(names), parse_ints(resolutions, "resolution"), tuple(form_list), threads, space,
                     seed if space else None, len(names) if space else None, out)
    folder = folder or default_out_dir(Path("reports") / f"predictor-{space or 'variants'}")
    check_out_folder(folder)
    _new_build(registry, plan, out, folder, backend, workers, address, on)


def _refuse_given_options(ctx: click.Context, resume: Path) -> None:
    """``--resume`` measures what the build recorded: any other measuring option is bad input."""
    for param in ctx.command.params:
        if (param.name not in RESUME_OPTIONS
                and ctx.get_parameter_source(str(param.name)) is click.core.ParameterSource.COMMANDLINE):
            shown = param.opts[0] if isinstance(param, click.Option) else str(param.name).upper()
            raise ArchbenchError(f"--resume uses the build recorded in {resume}; drop {shown}")


def _new_build(registry: Registry, plan: BuildPlan, out: Path, folder: Path, backend: str, workers: int,
               address: str | None, on: str | None) -> None:
    """Measure ``plan`` into ``folder`` under its lock, then write its table to ``out``."""
    from archbench.cli import _sigterm_as_interrupt
    from archbench.predict.build import build_runner
    from archbench.render.console import RichProgress
    from archbench.run_folder import RESULTS_NAME, run_lock

    with _sigterm_as_interrupt(), run_lock(folder):
        if (folder / RESULTS_NAME).exists():
            raise ArchbenchError(f"{folder} already holds a run ({folder / RESULTS_NAME}); finish an interrupted "
                                 f"build with `archbench predictor build --resume {folder}`, or choose another --folder")
        with build_runner(registry, plan, folder, backend=backend, workers=workers, address=address, on=on,
                          specs=_specs(), progress=RichProgress(), command=_command()) as runner:
            result = _measure(runner, folder, None)
    _write_table(result, folder, out)


def _resume_build(registry: Registry, resume: Path, out: Path | None, backend: str, workers: int,
                  address: str | None) -> None:
    """``--resume FOLDER`` (or its results.json): the build's missing cells measured under the
    folder's lock with the recorded settings, then its table written (to ``out`` or the recorded file)."""
    from archbench.cli import _sigterm_as_interrupt
    from archbench.predict.build import recorded_build, resume_runner
    from archbench.render.console import RichProgress
    from archbench.results import load
    from archbench.run_folder import RESULTS_NAME, run_lock

    folder = resume.parent if resume.name == RESULTS_NAME else resume
    if not (folder / RESULTS_NAME).is_file():
        raise ArchbenchError(f"--resume {resume}: no build to resume there (no {folder / RESULTS_NAME})")
    with _sigterm_as_interrupt(), run_lock(folder, create=False):
        previous = load(folder)  # read under the lock: nobody is writing it now
        table_path = out or _recorded_table_path(recorded_build(previous, folder))
        if previous.complete:
            click.echo(f"archbench: {folder} is already complete; nothing to measure", err=True)
            result = previous
        else:
            with resume_runner(registry, previous, folder, backend=backend, workers=workers, address=address,
                               specs=_specs(), progress=RichProgress()) as runner:
                result = _measure(runner, folder, previous)
    _write_table(result, folder, table_path)


def _recorded_table_path(mark: dict[str, Any]) -> Path:
    recorded = mark.get("out")
    if not isinstance(recorded, str) or not recorded:
        raise ArchbenchError("the build recorded no table file; name one with --out")
    return Path(recorded)


def _specs() -> tuple[tuple[str, str], ...]:
    """The user's extra spec files (``archbench --specs``), for a space's workers."""
    from archbench.cli_sweep import _spec_paths
    from archbench.sweep import spec_texts

    return spec_texts(_spec_paths())


def _measure(runner: Runner, folder: Path, previous: RunResult | None) -> RunResult:
    """``runner.run(previous)``; interrupted, what was measured is saved and the message names
    ``archbench predictor build --resume FOLDER``."""
    from archbench.cli import measure_and_finish

    return measure_and_finish(runner, folder, previous, _saved, "predictor build")


def _saved(result: RunResult, folder: Path) -> None:
    """After measuring a build, nothing to render: the runner saved results.json, and the
    table written next is the build's summary."""


def _write_table(result: RunResult, folder: Path, out: Path) -> None:
    from archbench.predict.table import build_info, table_from_result
    from archbench.run_folder import RESULTS_NAME

    table = table_from_result(result, build_info(result, folder / RESULTS_NAME), _command())
    _report(table.save(out), folder / RESULTS_NAME, len(result.failed))


def _report(path: Path, results: Path, failed: int) -> None:
    from archbench.predict.table import load_table

    table = load_table(path)
    cal = ", ".join(f"{f}: latency = {c['slope']:.3f} x sum {c['intercept']:+.3f} ms (rms {c['rms_ms']:.3f} ms)"
                    for f, c in table.calibration.items())
    left_out = len(table.build.get("left_out", []))
    click.echo(f"table: {path}: {len(table.entries)} entries from {len(table.cells)} cells ({failed} failed, "
               f"{left_out} left out as contended); calibration {cal}\nresults: {results}", err=True)


@predictor_group.command("validate")
@click.argument("table_path", metavar="TABLE", type=click.Path(path_type=Path))
@click.option("--holdout", default=25, show_default=True, type=click.IntRange(min=1), help="Held-out variants.")
@click.option("--seed", "-s", default=None, type=int, help="Seed of the hold-out draw [default: the build's + 1].")
@click.option("--resolutions", "-r", default="320,416", show_default=True,
              help="At least one must be new to the table.")
@click.option("--space", default=None, help="Space to hold out from (default: the table's).")
@click.option("--form", default=None, help="Form to validate (default: the table's first).")
@click.option("--folder", default=None, type=click.Path(path_type=Path),
              help="Where measurements and the report go [default: reports/predictor-validate-<time>].")
@click.option("--force", is_flag=True, help="Use the table across different CPUs, threads or torch versions.")
def validate_command(table_path: Path, holdout: int, seed: int | None, resolutions: str, space: str | None,
                     form: str | None, folder: Path | None, force: bool) -> None:
    """Measure held-out variants and report the table's accuracy beside baselines and the noise floor."""
    from archbench.cli import default_out_dir, parse_ints
    from archbench.predict.table import load_table
    from archbench.predict.validate import render_markdown, validate_table
    from archbench.render.console import RichProgress
    from archbench.run_folder import check_out_folder

    table = load_table(table_path)
    folder = folder or default_out_dir(Path("reports") / "predictor-validate")
    check_out_folder(folder)
    report = validate_table(table, str(table_path), _registry(), holdout=holdout, seed=seed,
                            resolutions=parse_ints(resolutions, "resolution"), folder=folder, form=form,
                            force=force, space=space, progress=RichProgress(), command=_command())
    for warning in report["warnings"]:
        click.echo(f"archbench: warning: {warning}", err=True)
    click.echo(render_markdown(report))
    click.echo(f"report: {folder / 'validation.md'}", err=True)


@click.command("predict")
@click.argument("source")
@click.option("--table", "table_path", required=True, type=click.Path(path_type=Path))
@click.option("--samples", "-n", default=None, type=click.IntRange(min=1), help="Points of a space.  [default: 20]")
@click.option("--seed", "-s", default=0, show_default=True, type=int)
@click.option("--resolutions", "-r", default="320", show_default=True)
@click.option("--form", default=None, help="Form to predict (default: the table's first).")
@click.option("--force", is_flag=True, help="Use the table across different CPUs, threads or torch versions.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per prediction instead of a table.")
def predict_command(source: str, table_path: Path, samples: int | None, seed: int, resolutions: str,
                    form: str | None, force: bool, as_json: bool) -> None:
    """Predicted latency of SOURCE (variants, or a space's samples) from a latency table."""
    import json

    from archbench.cli import parse_ints
    from archbench.predict.table import load_table, predict_many

    registry = _registry()
    table = load_table(table_path)
    names, _ = _names(registry, source, samples if samples is not None or source not in registry.spaces else 20,
                          seed)
    predictions = predict_many(names, parse_ints(resolutions, "resolution"), table, form=form, force=force,
                               registry=registry)
    for warning in (predictions[0].warnings if predictions else []):
        click.echo(f"archbench: warning: {warning}", err=True)
    if as_json:
        for p in predictions:
            click.echo(json.dumps(p.to_json()))
        return
    _print_predictions(predictions)


def _print_predictions(predictions: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"predicted latency ({len(predictions)})", title_justify="left")
    for column in ("variant", "res", "form", "latency ms", "± ms", "rows", "exact", "interp.", "fitted", "uncovered"):
        table.add_column(column, justify="left" if column in ("variant", "form") else "right")
    for p in predictions:
        table.add_row(p.variant, str(p.resolution), p.form, f"{p.latency_ms:.3f}", f"{p.uncertainty_ms:.3f}",
                      str(p.rows), *(str(p.counts[k]) for k in ("exact", "interpolated", "fitted", "uncovered")))
    console = Console(width=max(Console().width, 120))
    console.print(table)
    uncovered = sorted({s for p in predictions for s in p.uncovered})
    if uncovered:
        console.print(f"uncovered blocks (counted as 0 ms): {len(uncovered)}", *uncovered[:10], sep="\n  ")


def ranked_settings(registry: Registry, settings: Any, info: dict[str, Any], predict_with: Path | None,
                    measure_top: int | None, force: bool = False) -> tuple[Any, dict[str, Any]]:
    """``archbench sweep --predict-with TABLE --measure-top K``: the sweep's points ranked by the
    table's predicted latency at the sweep's first resolution and form, the K fastest kept
    (ties by name); the ranking goes into ``environment["sweep"]``. A table measured under
    other conditions (CPU, threads, torch, form) is refused unless ``force`` (``--force``),
    which warns and records the differences."""
    from dataclasses import replace

    from archbench.predict.table import check_table, load_table, rank_by_prediction

    if predict_with is None:
        raise ArchbenchError("--measure-top needs --predict-with TABLE.json")
    top = 20 if measure_top is None else measure_top
    table = load_table(predict_with)
    resolution, form = settings.resolutions[0], settings.forms[0]
    warnings = check_table(table, form, settings.threads, settings.device, force=force)
    keep, predictions = rank_by_prediction(list(settings.variants), resolution, table, top, form=form,
                                           force=force, registry=registry)
    for warning in warnings:
        click.echo(f"archbench: warning: {warning}", err=True)
    predicted = {p.variant: round(p.latency_ms, 4) for p in predictions}
    click.echo(f"sweep: {len(predictions)} points ranked by {predict_with} at {resolution} px ({form}); "
               f"measuring the {len(keep)} predicted fastest", err=True)
    info = {**info, "predict_with": str(predict_with), "measure_top": top, "ranked_at": resolution,
            "ranked_points": len(predictions), "predicted_ms": {name: predicted[name] for name in keep},
            **({"predict_forced": warnings} if warnings else {})}
    return replace(settings, variants=tuple(keep)), info
