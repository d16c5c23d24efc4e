"""``archbench space list|show`` and ``archbench sweep``: search spaces on the command line.

Attached to the main ``archbench`` group in ``archbench/cli.py``; errors, exit codes,
interruption and the run folder (checks, lock, ``--resume``) behave as in ``archbench run``.
``archbench space`` does not import torch.

A sweep timed under several node labels (``--backend ray --on A,B --out DIR``) writes one
complete run folder per label, ``DIR/A`` and ``DIR/B`` (each read by ``archbench report``
and ``archbench compare`` as any run), beside ``DIR/sweep.json`` (which labels, in which
folders: what ``--resume DIR`` reads) and ``DIR/report.md`` (a summary naming the folders
and how to compare them). With one label or none, the run is ``DIR`` itself, as ever.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from archbench.errors import ArchbenchError
from archbench.registry import Registry
from archbench.settings import DEFAULT_FORMS, DEFAULT_INPUT, DEFAULT_RUN_METRICS

if TYPE_CHECKING:
    from archbench.results import RunResult
    from archbench.sweep import SweepGroup

#: What a sweep measures unless told: the static metrics and the latency.
DEFAULT_SWEEP_METRICS = ",".join(m for m in DEFAULT_RUN_METRICS if m != "layers")
#: Options that only say where or how fast a sweep runs: allowed with --resume.
RESUME_OPTIONS = ("resume", "backend", "address", "workers")
#: The index of a sweep timed under several node labels, in its folder.
LABELS_INDEX = "sweep.json"
LABELS_SCHEMA = "archbench.labelled_sweep"
#: The summary of such a sweep, in its folder (each label's folder has its own report.md).
LABELS_SUMMARY = "report.md"
#: Node labels that can name a run folder.
FOLDER_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
@click.option("--on", "on", default=None,
              help="Ray: time only on nodes that declare this custom resource; A,B: time on each kind of node at "
                   "once, one run folder per label (OUT/A, OUT/B).")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder [default: reports/sweep-<space>-<time>].")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Finish the interrupted sweep in this folder (every label's, for --on A,B); --backend "
                   "(default: the recorded one), --address and --workers may change.")
@click.option("--predict-with", "predict_with", default=None, type=click.Path(path_type=Path),
              help="Rank the points by this latency table's prediction (first resolution and form) ...")
@click.option("--measure-top", "measure_top", default=None, type=click.IntRange(min=1),
              help="... and measure only the K predicted fastest.  [default: 20]")
@click.option("--force", is_flag=True, help="--predict-with: use the table across different CPUs, threads or torch.")
@click.pass_context
def sweep_command(ctx: click.Context, space: str | None, samples: int | None, seed: int, registered: bool,
                  resolutions: str, metrics: str, forms: str, threads: str, input_kind: str, backend: str,
                  address: str | None, workers: int, on: str | None, out: Path | None, resume: Path | None,
                  predict_with: Path | None = None, measure_top: int | None = None, force: bool = False) -> None:
    """Measure SAMPLES points of SPACE (and its registered variants) as `archbench run` would,
    static cells over WORKERS processes, latency one cell at a time per machine."""
    from archbench.cli import CellsFailed, _sigterm_as_interrupt, default_out_dir
    from archbench.run_folder import check_out_folder
    from archbench.sweep import node_labels

    registry = _registry()
    settings, info, labels = None, dict[str, Any](), node_labels(on)
    if resume is not None:
        given = [name for name in ctx.params if name not in RESUME_OPTIONS
                 and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ArchbenchError(f"--resume uses the sweep recorded in {resume}; drop --{given[0].replace('_', '-')}")
        folder = resume if resume.is_dir() else resume.parent
        labels = recorded_labels(folder)
        _load_previous(resume, labels)  # names a missing or malformed file before anything starts
    else:
        if space is None:
            raise ArchbenchError("name the space to sweep (see `archbench space list`)")
        if force and predict_with is None:
            raise ArchbenchError("--force needs --predict-with TABLE.json")
        settings, info = _sweep_settings(registry, space, 20 if samples is None else samples, seed, registered,
                                         resolutions, metrics, forms, threads, input_kind)
        if predict_with is not None or measure_top is not None:  # archbench.cli_predict: rank, keep the top K
            from archbench.cli_predict import ranked_settings

            settings, info = ranked_settings(registry, settings, info, predict_with, measure_top, force)
        folder = out or default_out_dir(Path("reports") / f"sweep-{space}")
        check_out_folder(folder)
        run_folders(folder, labels)  # labels that cannot name a folder are bad input
    with _sigterm_as_interrupt(), _locks(folder, labels, create=resume is None):
        previous = None
        if resume is not None:
            previous = _load_previous(resume, labels)
            settings, info = _recorded(previous.first if isinstance(previous, LabelledRuns) else previous)
            labels = labels or node_labels(info.get("on"))  # where latency is measured is part of the results
            if ctx.get_parameter_source("backend") is not click.core.ParameterSource.COMMANDLINE:
                backend = str(info.get("backend", backend))  # by default, where the sweep began
            if previous.complete:
                click.echo(f"archbench: {folder} is already complete; nothing to measure", err=True)
                if isinstance(previous, LabelledRuns):
                    _finish_labelled(previous, folder)
                else:
                    _finish(previous, folder)
                return
        else:
            _refuse_earlier_sweep(folder, labels)
        result = _sweep(registry, settings, info, folder, previous, backend, address, workers, labels)
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


def _sweep(registry: Registry, settings: Any, info: dict[str, Any], folder: Path,
           previous: RunResult | LabelledRuns | None, backend: str, address: str | None, workers: int,
           labels: tuple[str, ...]) -> RunResult | LabelledRuns:
    """The sweep into ``folder`` (whose locks this process holds): one run, or one per node label
    measured together; writes the report(s)."""
    from archbench.cli import _ARGV, measure_and_finish
    from archbench.render.console import RichProgress
    from archbench.sweep import SweepGroup, SweepRunner, make_backend, spec_texts

    engine = make_backend(backend, workers, address, labels, settings.threads)
    command = previous.command if previous else "archbench " + " ".join(shlex.quote(a) for a in _ARGV)
    progress, specs, folders = RichProgress(), spec_texts(_spec_paths()), run_folders(folder, labels)
    runners = [SweepRunner(settings, path, command=command, progress=progress, registry=registry, backend=engine,
                           specs=specs, space=info["space"],
                           sweep_info={**info, "backend": backend, "workers": workers, "on": label})
               for label, path in folders.items()]
    try:
        if len(runners) == 1:
            return measure_and_finish(runners[0], folder, previous, _finish, "sweep")
        if previous is None:
            write_index(folder, labels)
        sweep = LabelledSweep(SweepGroup(runners, engine, progress), folder)
        saved_to = ", ".join(str(path / "results.json") for path in folders.values())
        return measure_and_finish(sweep, folder, previous, _finish_labelled, "sweep", saved_to)
    finally:
        engine.close()


def _finish(result: Any, folder: Path) -> None:
    """Write the report; print one line of counts (a sweep's table would be hundreds of rows)."""
    from archbench.render.report import write_report

    report = write_report(result, folder)
    done, total = result.progress()
    click.echo(f"sweep: {done} of {total} cells measured, {len(result.failed)} failed or skipped\n"
               f"results: {folder / 'results.json'}\nreport:  {report}", err=True)


# -- a sweep timed under several node labels: one run folder per label -------------------------
@dataclass
class LabelledRuns:
    """The runs of a sweep timed under several node labels, by label (``folder/<label>``)."""

    folder: Path
    runs: dict[str, RunResult]

    @property
    def first(self) -> RunResult:
        return next(iter(self.runs.values()))

    @property
    def command(self) -> str:
        return self.first.command

    @property
    def complete(self) -> bool:
        return all(run.complete for run in self.runs.values())

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [record for run in self.runs.values() for record in run.failed]

    def progress(self) -> tuple[int, int]:
        """(cells complete, cells) over all the runs."""
        counts = [run.progress() for run in self.runs.values()]
        return sum(done for done, _ in counts), sum(total for _, total in counts)


@dataclass
class LabelledSweep:
    """A ``SweepGroup`` of one run per label, as ``archbench.cli.measure_and_finish`` drives a runner."""

    group: SweepGroup
    folder: Path

    @property
    def result(self) -> LabelledRuns | None:
        """The runs by label, once every one has begun."""
        runs = {runner.label: runner.result for runner in self.group.runners
                if runner.label is not None and runner.result is not None}
        return LabelledRuns(self.folder, runs) if len(runs) == len(self.group.runners) else None

    def run(self, previous: LabelledRuns | None) -> LabelledRuns:
        self.group.run([previous.runs[str(r.label)] if previous else None for r in self.group.runners])
        result = self.result
        assert result is not None
        return result


def run_folders(folder: Path, labels: Sequence[str]) -> dict[str | None, Path]:
    """Each label's run folder: ``folder`` itself for one label or none, else ``folder/<label>``
    (``ArchbenchError`` for a label that cannot name a folder)."""
    if len(labels) <= 1:
        return {labels[0] if labels else None: folder}
    for label in labels:
        if not FOLDER_LABEL.fullmatch(label) or label in (LABELS_INDEX, LABELS_SUMMARY):
            raise ArchbenchError(f"--on label {label!r} cannot name a run folder; with several labels, "
                                 "use letters, digits, '_', '.' and '-'")
    return {label: folder / label for label in labels}


@contextmanager
def _locks(folder: Path, labels: Sequence[str], *, create: bool) -> Iterator[None]:
    """The lock of ``folder`` and of each label's run folder (see ``run_folder.run_lock``)."""
    from archbench.run_folder import run_lock

    with ExitStack() as stack:
        stack.enter_context(run_lock(folder, create=create))
        if len(labels) > 1:
            for path in run_folders(folder, labels).values():
                stack.enter_context(run_lock(path, create=True))
        yield


def write_index(folder: Path, labels: Sequence[str]) -> None:
    """``folder/sweep.json``: the sweep's node labels, each label's run in ``folder/<label>``."""
    from archbench.results import write_atomic

    index = {"schema": LABELS_SCHEMA, "schema_version": 1, "on": list(labels)}
    write_atomic(folder / LABELS_INDEX, json.dumps(index, indent=2) + "\n")


def recorded_labels(folder: Path) -> tuple[str, ...]:
    """The node labels of the sweep in ``folder`` if it was timed under several (its index), else ()."""
    path = folder / LABELS_INDEX
    if not path.exists():
        return ()
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchbenchError(f"{path}: cannot read the sweep's index: {exc}") from None
    labels = index.get("on") if isinstance(index, dict) and index.get("schema") == LABELS_SCHEMA else None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ArchbenchError(f"{path}: not an index of a sweep on several kinds of node ({LABELS_SCHEMA})")
    return tuple(labels)


def _load_previous(resume: Path, labels: Sequence[str]) -> RunResult | LabelledRuns:
    """The run to resume, or with several labels each label's run (from its folder)."""
    from archbench.results import load

    if len(labels) <= 1:
        return load(resume)
    folder = resume if resume.is_dir() else resume.parent
    return LabelledRuns(folder, {str(label): load(path) for label, path in run_folders(folder, labels).items()})


def _refuse_earlier_sweep(folder: Path, labels: Sequence[str]) -> None:
    """``ArchbenchError`` if ``folder`` (or a label's folder in it) already holds a sweep."""
    from archbench.run_folder import RESULTS_NAME

    held = [path for path in (folder / RESULTS_NAME, folder / LABELS_INDEX,
                              *(p / RESULTS_NAME for p in run_folders(folder, labels).values()))
            if path.exists()]
    if held:
        raise ArchbenchError(f"{folder} already holds a sweep ({held[0]}); finish it with "
                             f"`archbench sweep --resume {folder}`, or choose a new --out folder")


def _finish_labelled(runs: LabelledRuns, folder: Path) -> None:
    """Write each label's report and the sweep's summary; print which folder holds which label."""
    from archbench.render.report import write_report

    for label, result in runs.runs.items():
        write_report(result, folder / label)
    summary = write_summary(runs)
    done, total = runs.progress()
    lines = [f"sweep: {done} of {total} cells measured on {len(runs.runs)} kinds of node, "
             f"{len(runs.failed)} failed or skipped"]
    for label, result in runs.runs.items():
        label_done, label_total = result.progress()
        lines.append(f"  {label}: {folder / label} ({label_done} of {label_total} cells, "
                     f"{len(result.failed)} failed or skipped)")
    lines += [f"compare: {compare_command(runs)}", f"summary: {summary}"]
    click.echo("\n".join(lines), err=True)


def compare_command(runs: LabelledRuns) -> str:
    """The command comparing the first two labels' runs."""
    first, second = list(runs.runs)[:2]
    return f"archbench compare {shlex.quote(str(runs.folder / first))} {shlex.quote(str(runs.folder / second))}"


def write_summary(runs: LabelledRuns) -> Path:
    """``folder/report.md``: which folder holds which label, how far each got, on which
    hosts and CPUs it was timed, and how to compare them."""
    from archbench.results import write_atomic

    sweep = runs.first.environment.get("sweep", {})
    lines = [f"# Sweep of {sweep.get('space', '?')} on {len(runs.runs)} kinds of node", "",
             f"`{runs.command}`", "",
             "Each kind of node (a Ray resource label given to `--on`) has its own run folder: a complete run "
             "that `archbench report` and `archbench compare` read. The static cells (params, MACs, memory) were "
             "counted once and are the same in every folder; the timed cells were measured on the nodes of each "
             "label, all labels at the same time, one cell at a time per node. Every record names its label in "
             "`node_label` and the machine that measured it in `host`.", "",
             "| label | run folder | cells measured | failed or skipped | timed on | CPU |",
             "|---|---|---|---|---|---|"]
    for label, result in runs.runs.items():
        done, total = result.progress()
        hosts = ", ".join(sorted(result.environment.get("hosts", {}))) or "-"
        lines.append(f"| {label} | [{label}/]({label}/report.md) | {done} of {total} | {len(result.failed)} | "
                     f"{hosts} | {result.environment.get('cpu_model', '?')} |")
    lines += ["", "Compare two kinds of node cell by cell:", "", "```console", f"$ {compare_command(runs)}", "```", "",
              "`archbench compare` compares latency only between runs timed on the same CPU model, threads, "
              "torch version, device and input kind; across kinds of node with different CPUs it shows latency "
              "as \"not compared\" (the static columns are still compared) unless `--force` is given, which "
              "compares it with a warning naming what differs. Its exit code 1 then means some cell is slower "
              "on the second kind beyond noise and `--threshold`."]
    if not runs.complete:
        lines += ["", f"**This sweep is incomplete**; `archbench sweep --resume {runs.folder}` measures the "
                      "missing cells of every label."]
    path = runs.folder / LABELS_SUMMARY
    write_atomic(path, "\n".join(lines) + "\n")
    return path
