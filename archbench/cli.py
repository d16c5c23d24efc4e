"""The ``archbench`` command line.

Every user error is one line on stderr (``archbench: error: ...``) and exit
code 2; Ctrl-C exits 130. Commands that do not build models never import torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from archbench import __version__
from archbench.errors import EXIT_CELLS_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ArchbenchError
from archbench.registry import default_registry, parse_list
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
def cli() -> None:
    """Benchmark lightweight detection architectures: params, MACs, memory, latency."""


@cli.command("list")
@click.argument("pattern", required=False)
def list_command(pattern: str | None) -> None:
    """List registered variants, optionally filtered by PATTERN (wildcard or family)."""
    from rich.console import Console
    from rich.table import Table

    specs = default_registry().filter(pattern)
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
def show_command(variant: str, resolution: int, batch_size: int, depth: int, counters: str) -> None:
    """Params, MACs and activations of VARIANT by part, stage and module."""
    from archbench.render.console import print_breakdown

    print_breakdown(variant, resolution, batch_size, depth, parse_list(counters))


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
@click.option("--resolutions", "-r", default="320,416,640", show_default=True)
@click.option("--batch-size", "-b", default="1", show_default=True)
@click.option("--device", "-d", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--metrics", "-m", default="params,macs,memory,latency", show_default=True)
@click.option("--counters", default="", help="Cross-check counters to run too: fvcore,thop.")
@click.option("--threads", "-t", default="1", show_default=True, help="CPU intra-op threads.")
@click.option("--repeats", default="1", show_default=True, help="Latency repeats, each in a fresh process.")
@click.option("--baseline", default=None, help="Variant the report's deltas are relative to.")
@click.option("--autocast", default=None, help="Time CUDA forwards under autocast: fp16 or bf16.")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Output folder [default: reports/<run-id>].")
def run_command(variants: str | None, resolutions: str, batch_size: str, device: str, metrics: str, counters: str,
                threads: str, repeats: str, baseline: str | None, autocast: str | None, out: Path | None) -> None:
    """Profile variants at several resolutions; print a table, write results and a report."""
    from rich.console import Console

    from archbench.profiling import AUTOCAST, COUNTERS, METRICS, check_choices, check_device
    from archbench.render.console import RichProgress, comparison_table
    from archbench.render.report import write_report
    from archbench.runner import DEFAULT_BASELINE, DEFAULT_VARIANTS, Runner, RunSettings

    registry = default_registry()
    names = tuple(s.name for s in registry.select(variants if variants is not None else DEFAULT_VARIANTS))
    if baseline is None and variants is None:
        baseline = DEFAULT_BASELINE
    if baseline is not None:
        baseline = registry.get(baseline).name
        if baseline not in names:
            raise ArchbenchError(f"baseline {baseline!r} is not among the selected variants")
    settings = RunSettings(
        variants=names,
        resolutions=parse_ints(resolutions, "resolution"),
        batch_size=_positive(parse_ints(batch_size, "batch size"), "batch size"),
        device=str(check_device(device)),
        metrics=check_choices(parse_list(metrics), METRICS, "metric"),
        counters=check_choices(parse_list(counters), COUNTERS, "counter"),
        threads=_positive(parse_ints(threads, "thread count"), "threads"),
        repeats=_positive(parse_ints(repeats, "repeat count"), "repeats"),
        baseline=baseline,
        autocast=autocast,
    )
    if autocast not in AUTOCAST or (autocast and not settings.device.startswith("cuda")):
        raise ArchbenchError(f"--autocast {autocast} needs --device cuda and one of fp16, bf16")
    for resolution in settings.resolutions:
        if resolution < 1:
            raise ArchbenchError(f"resolution must be a positive integer, got {resolution}")
    folder = out or default_out_dir(Path("reports"))
    command = "archbench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("archbench") else ""
    runner = Runner(settings, folder, command=command or f"archbench run --variants {','.join(names)}",
                    progress=RichProgress(), registry=registry)
    result = runner.run()
    report = write_report(result, folder)
    Console(width=max(Console().width, 140)).print(comparison_table(result))
    click.echo(f"results: {folder / 'results.json'}\nreport:  {report}", err=True)
    if result.failed:
        raise CellsFailed(len(result.failed))


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


def _positive(values: tuple[int, ...], what: str) -> int:
    if len(values) != 1 or values[0] < 1:
        raise ArchbenchError(f"{what} must be one integer of at least 1, got {','.join(map(str, values))}")
    return values[0]


class CellsFailed(Exception):
    """Some cells failed or were skipped: results are written, the exit code says so."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="archbench", standalone_mode=False)
    except ArchbenchError as exc:
        click.echo(f"archbench: error: {exc}", err=True)
        return EXIT_USAGE
    except CellsFailed as exc:
        click.echo(f"archbench: {exc.count} cell(s) failed or were skipped; see the report's Notes", err=True)
        return EXIT_CELLS_FAILED
    except click.exceptions.Abort:
        click.echo("archbench: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        click.echo(f"archbench: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("archbench: interrupted", err=True)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
