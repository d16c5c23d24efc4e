"""The ``archbench`` command line.

Every user error is one line on stderr (``archbench: error: ...``) and exit
code 2; Ctrl-C exits 130. Commands that do not build models never import torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from archbench import __version__
from archbench.errors import EXIT_INTERRUPTED, EXIT_USAGE, ArchbenchError
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


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="archbench", standalone_mode=False)
    except ArchbenchError as exc:
        click.echo(f"archbench: error: {exc}", err=True)
        return EXIT_USAGE
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
