"""The ``archbench`` command line.

(About 430 lines: one short function per command; the work is in the modules they call.)

Every user error is one line on stderr (``archbench: error: ...``) and exit
code 2; Ctrl-C exits 130. Commands that do not build models never import torch.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from archbench import __version__
from archbench.errors import (
    EXIT_CELLS_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    ArchbenchError,
)
from archbench.registry import Registry, parse_list, registry_with
from archbench.settings import (
    DEFAULT_FORMS,
    DEFAULT_INPUT,
    DEFAULT_RESOLUTIONS,
    DEFAULT_RUN_METRICS,
)
from archbench.specs import VariantSpec

# Arguments shown in `archbench list`, in this order, when a spec sets them.
KEY_SETTINGS = (
    "scale", "stage_channels", "backbone", "neck", "neck_channels", "head", "head_convs",
    "se", "branch", "act", "neck_kernel", "neck_conv", "num_levels", "num_anchors",
)


def _settings(spec: VariantSpec) -> str:
    return ", ".join(f"{k}={spec.args[k]}" for k in KEY_SETTINGS if k in spec.args)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="archbench")
@click.option("--specs", "spec_files", multiple=True, type=click.Path(path_type=Path),
              help="Extra variant spec file (TOML), added to the built-in ones; repeatable.")
@click.pass_context
def cli(ctx: click.Context, spec_files: tuple[Path, ...]) -> None:
    """Benchmark lightweight detection architectures: params, MACs, memory, latency."""
    ctx.obj = registry_with(spec_files)


def _registry() -> Registry:
    registry: Registry = click.get_current_context().find_root().obj
    return registry


@cli.command("list")
@click.argument("pattern", required=False)
def list_command(pattern: str | None) -> None:
    """List registered variants, optionally filtered by PATTERN (wildcard or family)."""
    from rich.console import Console
    from rich.table import Table

    specs = _registry().filter(pattern)
    if not specs:
        raise ArchbenchError(f"no variant matches {pattern!r}; run `archbench list` to see all")
    table = Table(title=f"archbench variants ({len(specs)})", title_justify="left")
    for column in ("name", "family", "kind", "derived from", "key settings"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        table.add_row(spec.name, spec.family, spec.kind, spec.base or "", _settings(spec))
    Console(width=max(Console().width, 120)).print(table)


@cli.command("show")
@click.argument("variant")
@click.option("--resolution", "-r", default=320, show_default=True, type=int, help="Input side in pixels.")
@click.option("--batch-size", "-b", default=1, show_default=True, type=int)
@click.option("--depth", default=3, show_default=True, type=click.IntRange(0, 10),
              help="How many levels of modules to list (1: parts, 2: stages, 3: blocks).")
@click.option("--counters", default="", help="Cross-check counters to run too: fvcore,thop.")
@click.option("--latency", is_flag=True, help="Per-layer latency on the roofline instead (CPU, 1 thread).")
@click.option("--top", default=None, type=click.IntRange(min=1), help="With --latency: the N slowest rows.")
@click.option("--by", "by", default="module", show_default=True,
              type=click.Choice(["module", "type", "kind", "part", "stage"]), help="With --latency: grouping.")
def show_command(variant: str, resolution: int, batch_size: int, depth: int, counters: str,
                 latency: bool = False, top: int | None = None, by: str = "module") -> None:
    """Params, MACs and activations of VARIANT by part, stage and module, and the ops
    without a counting rule, if any (--latency: per-layer latency, see show_latency)."""
    if latency:
        return show_latency(variant, resolution, batch_size, by, top)
    import warnings

    from rich.console import Console

    from archbench.cells import check_resolution
    from archbench.factory import create_model
    from archbench.inputs import sample_input
    from archbench.profilers.breakdown import module_breakdown
    from archbench.profilers.compute import UncountedOpWarning
    from archbench.profiling import profile
    from archbench.render.console import breakdown_tables

    model = create_model(variant, registry=_registry())
    check_resolution(model, variant, resolution)
    chosen = parse_list(counters)
    with warnings.catch_warnings():  # ops without a rule are listed under the table instead
        warnings.simplefilter("ignore", UncountedOpWarning)
        frame = profile(model, (resolution,), batch_size, counters=chosen)
    modules = module_breakdown(model, sample_input(batch_size, resolution), max_depth=depth)
    console = Console(width=max(Console().width, 110))
    for table in breakdown_tables(variant, resolution, batch_size, frame.iloc[0].to_dict(), modules,
                                  frame.attrs["conventions"], chosen):
        console.print(table)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"320,416"`` -> ``(320, 416)``, or one clear error naming the bad item."""
    values = []
    for item in parse_list(text):
        try:
            values.append(int(item))
        except ValueError:
            raise ArchbenchError(f"malformed {what} {item!r} in {text!r}: expected integers like 320,416") from None
    if not values:
        raise ArchbenchError(f"no {what} given")
    return tuple(values)


def default_out_dir(root: Path) -> Path:
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


@cli.command("run")
@click.option("--variants", "-v", default=None, help="Comma-separated names, families or wildcards. "
              "Default: ShuffleNetV2 1.0x vs ESNet-m and their SE/ghost/dw ablations.")
@click.option("--resolutions", "-r", default=",".join(map(str, DEFAULT_RESOLUTIONS)), show_default=True)
@click.option("--batch-size", "-b", default="1", show_default=True)
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--metrics", "-m", default=",".join(DEFAULT_RUN_METRICS), show_default=True)
@click.option("--counters", default="", help="Cross-check counters to run too: fvcore,thop.")
@click.option("--threads", "-t", default="1", show_default=True, help="CPU intra-op threads.")
@click.option("--repeats", default="1", show_default=True, help="Latency repeats, each in a fresh process.")
@click.option("--baseline", default=None, help="Variant the report's deltas are relative to.")
@click.option("--forms", "-f", default=",".join(DEFAULT_FORMS), show_default=True,
              help="Deployment forms to time: eager, fused, channels_last, torchscript, onnxruntime, compile, "
                   "openvino, openvino_bf16, ncnn, ncnn_fp16, fp16, bf16 (GPU, converted to half precision).")
@click.option("--tf32/--no-tf32", default=False, show_default=True,
              help="On a GPU, let float32 convolutions and matmuls use TF32 (PyTorch's default for convolutions).")
@click.option("--input", "input_kind", default=DEFAULT_INPUT, show_default=True,
              help="What the models see: image (a photograph), random (seeded noise) or zeros.")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder [default: reports/<run-id>]; one that holds a run needs --resume or --overwrite.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Finish the interrupted run in this folder: only its missing cells, with its recorded settings.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in the --out folder (its results.json/csv, report, plots, artifacts).")
@click.option("--keep-artifacts", is_flag=True,
              help="Keep the files forms convert through (ncnn's) in the run folder's artifacts/.")
@click.pass_context
def run_command(ctx: click.Context, variants: str | None, resolutions: str, batch_size: str, device: str,
                metrics: str, counters: str, threads: str, repeats: str, baseline: str | None, forms: str,
                tf32: bool, input_kind: str, out: Path | None, resume: Path | None, overwrite: bool,
                keep_artifacts: bool) -> None:
    """Profile variants at several resolutions; print a table, write results and a report."""
    from archbench.results import load
    from archbench.run_folder import check_out_folder, run_lock

    registry = _registry()
    settings = None
    if resume is not None:
        given = [name for name in ctx.params if name != "resume"
                 and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise ArchbenchError(f"--resume uses the settings recorded in {resume}; drop --{given[0].replace('_', '-')}")
        folder = resume if resume.is_dir() else resume.parent
        if not folder.is_dir():
            load(resume)  # names the missing file
    else:
        settings = _settings_from_options(registry, variants, resolutions, batch_size, device, input_kind, metrics,
                                          counters, threads, repeats, baseline, forms, tf32, keep_artifacts)
        folder = out or default_out_dir(Path("reports"))
        check_out_folder(folder)
    # The lock is held until the report is written; SIGTERM unwinds through it like Ctrl-C.
    with _sigterm_as_interrupt(), run_lock(folder, create=resume is None):
        result = _run_locked(registry, settings, folder, resume, overwrite)
    if result.failed:
        raise CellsFailed(len(result.failed))


def _run_locked(registry: Registry, settings: Any, folder: Path, resume: Path | None, overwrite: bool) -> Any:
    """The run (or the resume) into ``folder``, whose lock this process holds; the result."""
    from archbench.render.console import RichProgress
    from archbench.results import load
    from archbench.run_folder import clear_earlier_run, refuse_earlier_run
    from archbench.runner import Runner, RunSettings

    previous = None
    if resume is not None:
        previous = load(resume)  # read under the lock: nobody is writing it now
        settings = RunSettings.from_json(previous.settings)
        if previous.complete:
            click.echo(f"archbench: {folder} is already complete; nothing to measure", err=True)
            _finish(previous, folder)
            return previous
    else:
        refuse_earlier_run(folder, overwrite)
    command = previous.command if previous else "archbench " + " ".join(shlex.quote(a) for a in _ARGV)
    runner = Runner(settings, folder, command=command, progress=RichProgress(), registry=registry)
    if overwrite:
        runner.preflight()  # bad input leaves the earlier run in place
        clear_earlier_run(folder)
    return measure_and_finish(runner, folder, previous, _finish)


def measure_and_finish(runner: Any, folder: Path, previous: Any, finish: Callable[[Any, Path], None],
                       command: str = "run", saved_to: str | None = None) -> Any:
    """``runner.run(previous)``, then ``finish`` (the report); interrupted (Ctrl-C, SIGTERM), it
    finishes what was measured and raises ``Interrupted`` naming ``archbench COMMAND --resume``
    (``saved_to``: the results files, if not ``folder/results.json``)."""
    try:
        result = runner.run(previous)
    except KeyboardInterrupt as interrupt:
        if runner.result is None:
            raise
        finish(runner.result, folder)
        raise Interrupted(folder, runner.result, isinstance(interrupt, Terminated), command, saved_to) from None
    finish(result, folder)
    return result


def _settings_from_options(registry: Registry, variants: str | None, resolutions: str, batch_size: str, device: str,
                           input_kind: str, metrics: str, counters: str, threads: str, repeats: str, baseline: str | None,
                           forms: str, tf32: bool, keep_artifacts: bool = False) -> Any:
    """Parse the options' text; ``RunSettings`` checks the values."""
    from archbench.settings import DEFAULT_BASELINE, DEFAULT_VARIANTS, RunSettings

    names = tuple(s.name for s in registry.select(variants if variants is not None else DEFAULT_VARIANTS))
    if baseline is None and variants is None:
        baseline = DEFAULT_BASELINE
    return RunSettings(
        variants=names,
        resolutions=parse_ints(resolutions, "resolution"),
        batch_size=_one(parse_ints(batch_size, "batch size"), "batch size"),
        device=device,
        metrics=tuple(parse_list(metrics)),
        counters=tuple(parse_list(counters)),
        threads=_one(parse_ints(threads, "thread count"), "threads"),
        repeats=_one(parse_ints(repeats, "repeat count"), "repeats"),
        baseline=None if baseline is None else registry.get(baseline).name,
        forms=tuple(parse_list(forms)),
        input=input_kind,
        tf32=tf32,
        keep_artifacts=keep_artifacts,
    )


def _finish(result: Any, folder: Path) -> None:
    """Write the report and print the comparison table (also for an interrupted run)."""
    from rich.console import Console

    from archbench.render.console import comparison_table
    from archbench.render.report import write_report

    report = write_report(result, folder)
    Console(width=max(Console().width, 140)).print(comparison_table(result))
    click.echo(f"results: {folder / 'results.json'}\nreport:  {report}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that the same path saves what was measured."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after saving what it had measured."""

    def __init__(self, folder: Path, result: Any, terminated: bool, command: str = "run",
                 saved_to: str | None = None) -> None:
        done, total = result.progress()
        super().__init__(f"interrupted: {done} of {total} cells complete, saved to {saved_to or folder / 'results.json'} "
                         f"(marked incomplete); finish with `archbench {command} --resume {folder}`")
        self.exit_code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


@cli.command("report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Folder for report.md and plots [default: beside results.json].")
def report_command(results: Path, out: Path | None) -> None:
    """Re-render tables and report.md from RESULTS (a results.json or its folder), without measuring."""
    from rich.console import Console

    from archbench.render.console import comparison_table
    from archbench.render.report import write_report
    from archbench.results import load

    result = load(results)
    folder = out or (results if results.is_dir() else results.parent)
    report = write_report(result, folder)
    Console(width=max(Console().width, 140)).print(comparison_table(result))
    click.echo(f"report:  {report}", err=True)


@cli.command("compare")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="text", show_default=True, help="text, or markdown for a pull-request comment.")
@click.option("--threshold", default=10.0, show_default=True, type=float,
              help="Latency regression threshold in % (the measured noise of both runs is the floor).")
@click.option("--force", is_flag=True, help="Compare latency even across different CPUs, threads or torch versions.")
@click.option("--all", "verbose", is_flag=True, help="Text format: every changed column and every latency verdict.")
def compare_command(base: Path, new: Path, fmt: str, threshold: float, force: bool, verbose: bool) -> None:
    """Compare two results files: exit 1 if an exact metric changed or latency regressed beyond noise."""
    from archbench.compare import compare_files

    text, code = compare_files(base, new, fmt=fmt, latency_threshold_pct=threshold, force=force, verbose=verbose)
    click.echo(text)
    click.get_current_context().exit(code)


@cli.command("expect")
@click.option("--update", is_flag=True, help="Rewrite the file with the measured values instead of checking.")
@click.option("--path", "path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Expectations file [default: expectations/variants.json in the source checkout].")
def expect_command(update: bool, path: Path | None) -> None:
    """Check every variant's params, MACs, activation peak and output shapes against
    expectations/variants.json (exit 1 on any difference); --update rewrites it."""
    from archbench.expectations import expect_command as run_expect

    text, code = run_expect(update, path)
    click.echo(text)
    click.get_current_context().exit(code)


@cli.command("machine")
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--threads", "-t", default=1, show_default=True, type=click.IntRange(min=1),
              help="CPU intra-op threads.")
@click.option("--refresh", is_flag=True, help="Measure again instead of reading the cache.")
def machine_command(device: str, threads: int, refresh: bool) -> None:
    """This machine's attainable fp32 compute peak (a large GEMM) and memory bandwidth (a large
    copy, bytes read + written), cached per device model, threads and torch version."""
    from rich.console import Console

    from archbench.machine import machine_ceilings
    from archbench.render.layers import ceilings_table

    ceilings = machine_ceilings(device, threads, refresh=refresh)
    Console(width=max(Console().width, 110)).print(ceilings_table(ceilings))


def show_latency(variant: str, resolution: int, batch_size: int, by: str, top: int | None,
                 device: str = "cpu", threads: int = 1) -> None:
    """``archbench show VARIANT --latency``: the per-layer profile as a rich table."""
    from rich.console import Console

    from archbench.profilers.layers import profile_layers
    from archbench.render.layers import latency_tables

    frame = profile_layers(variant, resolution, batch_size=batch_size, device=device, threads=threads,
                           registry=_registry())
    console = Console(width=max(Console().width, 200 if by == "module" else 130))
    for table in latency_tables(frame, by=by, top=top):
        console.print(table)


def _one(values: tuple[int, ...], what: str) -> int:
    if len(values) != 1:
        raise ArchbenchError(f"{what} must be one integer, got {','.join(map(str, values))}")
    return values[0]


from archbench.cli_sweep import space_group, sweep_command  # noqa: E402  (archbench space, archbench sweep)

cli.add_command(space_group)
cli.add_command(sweep_command)

from archbench.cli_predict import predict_command, predictor_group  # noqa: E402  (archbench predictor, predict)

cli.add_command(predictor_group)
cli.add_command(predict_command)


class CellsFailed(Exception):
    """Some cells failed or were skipped: results are written, the exit code says so."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


_ARGV: list[str] = []  # this invocation's arguments, recorded in results.json


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    _ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
    try:
        code = cli.main(args=list(_ARGV), prog_name="archbench", standalone_mode=False)
    except ArchbenchError as exc:
        click.echo(f"archbench: error: {exc}", err=True)
        return EXIT_USAGE
    except Interrupted as exc:
        click.echo(f"archbench: {exc}", err=True)
        return exc.exit_code
    except CellsFailed as exc:
        click.echo(f"archbench: {exc.count} cell(s) failed or were skipped; see the report's Notes", err=True)
        return EXIT_CELLS_FAILED
    except click.exceptions.Abort as exc:  # click's wrapping of KeyboardInterrupt
        click.echo("archbench: interrupted", err=True)
        return EXIT_TERMINATED if isinstance(exc.__cause__, Terminated) else EXIT_INTERRUPTED
    except click.ClickException as exc:
        click.echo(f"archbench: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("archbench: interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
