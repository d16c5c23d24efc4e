"""``archbench space list|show`` and ``archbench sweep``: search spaces on the command line.

Attached to the main ``archbench`` group in ``archbench/cli.py``; errors, exit codes,
interruption and the run folder (checks, lock, ``--resume``) behave as in ``archbench run``.
``archbench space`` does not import torch.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from archbench.errors import ArchbenchError
from archbench.registry import Registry
from archbench.settings import DEFAULT_FORMS, DEFAULT_INPUT, DEFAULT_RUN_METRICS

#: What a sweep measures unless told: the static metrics and the latency.
DEFAULT_SWEEP_METRICS = ",".join(m for m in DEFAULT_RUN_METRICS if m != "layers")
#: Options that only say where or how fast a sweep runs: allowed with --resume.
RESUME_OPTIONS = ("resume", "backend", "address", "workers")


def _registry() -> Registry:
    registry: Registry = click.get_current_context().find_root().obj
    return registry


def _spec_paths() -> tuple[Path, ...]:
    paths: tuple[Path, ...] = click.get_current_context().find_root().params.get("spec_files", ())
    return paths


@click.group("space")
def space_group() -> None:
    """Search spaces: a base variant and, per argument, the choices (variants/spaces.toml)."""


@space_group.command("list")
def space_list() -> None:
    """The search spaces, their base variants and sizes."""
    from rich.console import Console
    from rich.table import Table

    from archbench.spaces import members, space_size

    registry = _registry()
    table = Table(title=f"archbench spaces ({len(registry.spaces)})", title_justify="left")
    for column in ("space", "base", "points", "registered variants in it", "description"):
        table.add_column(column, overflow="fold")
    for space in registry.spaces.values():
        found = ", ".join(m.variant for m in members(space, registry))
        table.add_row(space.name, space.base, f"{space_size(space):,}", found, space.description)
    Console(width=max(Console().width, 120)).print(table)


@space_group.command("show")
@click.argument("space")
def space_show(space: str) -> None:
    """SPACE's arguments and choices, its size, and the registered variants that lie in it."""
    from rich.console import Console
    from rich.table import Table

    from archbench.spaces import describe_args, members, sample_names, space_size

    registry = _registry()
    found = registry.space(space)
    console = Console(width=max(Console().width, 120))
    console.print(f"[bold]{found.name}[/bold]: {found.description}\nbase {found.base} ({found.source}); "
                  f"{space_size(found):,} points; a point is named {sample_names(found, 1)[0]} "
                  "(rebuild it with `archbench show NAME` or archbench.create_model(NAME))")
    table = Table(title="arguments", title_justify="left")
    for column in ("argument", "choices", "values"):
        table.add_column(column, overflow="fold")
    for name, choices, count in describe_args(found):
        table.add_row(name, choices, f"{count:,}")
    console.print(table)
    listed = members(found, registry)
    table = Table(title=f"registered variants in {found.name} ({len(listed)})", title_justify="left")
    for column in ("variant", "point"):
        table.add_column(column)
    for member in listed:
        table.add_row(member.variant, member.name)
    console.print(table)


@click.command("sweep")
@click.argument("space", required=False)
@click.option("--samples", "-n", default=None, type=click.IntRange(min=0), help="Points to sample.  [default: 20]")
@click.option("--seed", "-s", default=0, show_default=True, type=int, help="Same seed, same points, on any machine.")
@click.option("--registered/--no-registered", default=True, show_default=True,
              help="Also measure the registered variants that lie in the space.")
@click.option("--resolutions", "-r", default="320", show_default=True)
@click.option("--metrics", "-m", default=DEFAULT_SWEEP_METRICS, show_default=True)
@click.option("--forms", "-f", default=",".join(DEFAULT_FORMS), show_default=True)
@click.option("--threads", "-t", default="1", show_default=True, help="CPU threads of each latency cell.")
@click.option("--input", "input_kind", default=DEFAULT_INPUT, show_default=True)
@click.option("--backend", default="local", show_default=True, help="local (worker processes) or ray.")
@click.option("--address", default=None, help="Ray: join the cluster at HOST:PORT instead of starting one here.")
@click.option("--workers", "-w", default=2, show_default=True, type=click.IntRange(min=1),
              help="Worker processes for the static cells (local; a private Ray instance's CPUs).")
@click.option("--on", "on", default=None, help="Ray: time only on nodes that declare this custom resource.")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder [default: reports/sweep-<space>-<time>].")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Finish the interrupted sweep in this folder (--backend, --address, --workers may change).")
@click.option("--predict-with", "predict_with", default=None, type=click.Path(path_type=Path),
              help="Rank the points by this latency table's prediction (first resolution and form) ...")
@click.option("--measure-top", "measure_top", default=None, type=click.IntRange(min=1),
              help="... and measure only the K predicted fastest.  [default: 20]")
@click.pass_context
def sweep_command(ctx: click.Context, space: str | None, samples: int | None, seed: int, registered: bool,
                  resolutions: str, metrics: str, forms: str, threads: str, input_kind: str, backend: str,
                  address: str | None, workers: int, on: str | None, out: Path | None, resume: Path | None,
                  predict_with: Path | None = None, measure_top: int | None = None) -> None:
    """Measure SAMPLES points of SPACE (and its registered variants) as `archbench run` would,
    static cells over WORKERS processes, latency one cell at a time per machine."""
    from archbench.cli import CellsFailed, _sigterm_as_interrupt, default_out_dir
    from archbench.results import load
    from archbench.run_folder import check_out_folder, refuse_earlier_run, run_lock

    registry = _registry()
    previous, settings, info = None, None, dict[str, Any]()
    if resume is not None:
        given = [name for name in ctx.params if name not in RESUME_OPTIONS
                 and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ArchbenchError(f"--resume uses the sweep recorded in {resume}; drop --{given[0].replace('_', '-')}")
        folder = resume if resume.is_dir() else resume.parent
        load(resume)  # names a missing or malformed file before anything starts
    else:
        if space is None:
            raise ArchbenchError("name the space to sweep (see `archbench space list`)")
        settings, info = _sweep_settings(registry, space, 20 if samples is None else samples, seed, registered,
                                         resolutions, metrics, forms, threads, input_kind)
        if predict_with is not None or measure_top is not None:  # archbench.cli_predict: rank, keep the top K
            from archbench.cli_predict import ranked_settings

            settings, info = ranked_settings(registry, settings, info, predict_with, measure_top)
        folder = out or default_out_dir(Path("reports") / f"sweep-{space}")
        check_out_folder(folder)
    with _sigterm_as_interrupt(), run_lock(folder, create=resume is None):
        if resume is not None:
            previous = load(resume)
            settings, info = _recorded(previous)
            if previous.complete:
                click.echo(f"archbench: {folder} is already complete; nothing to measure", err=True)
                _finish(previous, folder)
                return
        else:
            refuse_earlier_run(folder, False)
        result = _sweep(registry, settings, info, folder, previous, backend, address, workers, on)
    if result.failed:
        raise CellsFailed(len(result.failed))


def _sweep_settings(registry: Registry, space: str, samples: int, seed: int, registered: bool, resolutions: str,
                    metrics: str, forms: str, threads: str, input_kind: str) -> tuple[Any, dict[str, Any]]:
    from archbench.cli import _one, parse_ints
    from archbench.registry import parse_list
    from archbench.settings import RunSettings
    from archbench.spaces import check_space
    from archbench.sweep import sweep_variants

    found = registry.space(space)
    check_space(found, registry)
    names = sweep_variants(registry, space, samples, seed, registered=registered)
    if not names:
        raise ArchbenchError(f"nothing to measure: --samples 0 and no registered variant lies in {space}")
    settings = RunSettings(
        variants=tuple(names), resolutions=parse_ints(resolutions, "resolution"), metrics=tuple(parse_list(metrics)),
        forms=tuple(parse_list(forms)), threads=_one(parse_ints(threads, "thread count"), "threads"), input=input_kind,
    )
    return settings, {"space": space, "samples": samples, "seed": seed, "registered": registered}


def _recorded(previous: Any) -> tuple[Any, dict[str, Any]]:
    from archbench.settings import RunSettings

    info = previous.environment.get("sweep")
    if not isinstance(info, dict) or not isinstance(info.get("space"), str):
        raise ArchbenchError("not a sweep's results (no environment.sweep); finish it with `archbench run --resume`")
    return RunSettings.from_json(previous.settings), info


def _sweep(registry: Registry, settings: Any, info: dict[str, Any], folder: Path, previous: Any, backend: str,
           address: str | None, workers: int, on: str | None) -> Any:
    """The sweep into ``folder`` (whose lock this process holds); writes the report."""
    from archbench.cli import _ARGV, measure_and_finish
    from archbench.render.console import RichProgress
    from archbench.sweep import SweepRunner, make_backend, spec_texts

    if previous is not None and on != previous.environment["sweep"].get("on"):
        on = previous.environment["sweep"].get("on")  # where latency is measured is part of the results
    engine = make_backend(backend, workers, address, on, settings.threads)
    command = previous.command if previous else "archbench " + " ".join(shlex.quote(a) for a in _ARGV)
    runner = SweepRunner(settings, folder, command=command, progress=RichProgress(), registry=registry,
                         backend=engine, specs=spec_texts(_spec_paths()), space=info["space"],
                         sweep_info={**info, "backend": backend, "workers": workers, "on": on})
    try:
        return measure_and_finish(runner, folder, previous, _finish, "sweep")
    finally:
        engine.close()


def _finish(result: Any, folder: Path) -> None:
    """Write the report; print one line of counts (a sweep's table would be hundreds of rows)."""
    from archbench.render.report import write_report

    report = write_report(result, folder)
    done, total = result.progress()
    click.echo(f"sweep: {done} of {total} cells measured, {len(result.failed)} failed or skipped\n"
               f"results: {folder / 'results.json'}\nreport:  {report}", err=True)
