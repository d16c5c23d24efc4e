"""Exact expectations: every registered variant's params, MACs, activation peak and output
shapes, committed in ``expectations/variants.json`` and checked by the test suite.

A change to an architecture (a layer, a channel count, a default argument) shows up as
a readable diff against the committed file::

    picodet_s @ 416: macs 593,460,248 -> 601,234,112 (+1.31%)
    esnet_m: params 1,338,026 -> 1,257,683 (-6.00%)

When the change is intended, regenerate the file and commit it with the change::

    archbench expect --update        # rewrite expectations/variants.json
    archbench expect                 # check: exit 1 and the diff on any difference
    archbench expect --path FILE     # another file (outside a source checkout)

The test suite runs the same check (``tests/test_expectations.py``).

Measuring is done on the ``meta`` device: one forward per variant x resolution, under
the same MAC counter and activation tracker ``archbench.profile`` uses (nested as in
``archbench.cells.static_columns``), so the numbers are those of ``profile`` on the
CPU, exactly, without computing anything; torch's slow Python meta kernels of the common
ops are answered by shape alone (``archbench.profilers.meta``). The tests check meta
against CPU values.

Importing this module does not import torch; measuring does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archbench.errors import ArchbenchError
from archbench.render.units import format_change
from archbench.settings import DEFAULT_RESOLUTIONS

if TYPE_CHECKING:
    from torch import nn

SCHEMA = "archbench.expectations"
SCHEMA_VERSION = 1
BATCH_SIZE = 1
UPDATE_COMMAND = "archbench expect --update"
CELL_FIELDS: tuple[str, ...] = ("macs", "act_peak_bytes", "output_shapes")
"""What is recorded per resolution (``params`` is recorded once per variant)."""

# ----------------------------------------------------------------------------- paths


def default_expectations_path() -> Path:
    """``expectations/variants.json`` beside ``variants/`` in a source checkout.

    Expectations are a development gate and are not shipped in the wheel; outside a
    checkout, pass a path.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "variants").is_dir():
        raise ArchbenchError(
            f"archbench is not running from a source checkout ({root} has no variants/ folder); "
            "give the expectations file's path"
        )
    return root / "expectations" / "variants.json"


# ----------------------------------------------------------------------------- measuring


def _measure_meta(model: nn.Module, name: str, resolutions: Sequence[int]) -> dict[str, Any]:
    """Params and, per resolution, MACs, activation peak and output shapes of a model
    already on the meta device (one forward per resolution)."""
    import torch
    from torch.utils._pytree import tree_flatten

    from archbench.cells import check_resolution
    from archbench.profilers.meta import counting_pass
    from archbench.profilers.params import count_params

    for resolution in resolutions:
        check_resolution(model, name, resolution)
    shapes: list[list[list[int]]] = []

    def record_outputs(module: nn.Module, args: Any, output: Any) -> None:
        leaves = tree_flatten(output)[0]
        shapes.append([list(t.shape) for t in leaves if isinstance(t, torch.Tensor)])

    cells: dict[str, dict[str, Any]] = {}
    handle = model.register_forward_hook(record_outputs)
    try:
        for resolution in resolutions:
            x = torch.empty(BATCH_SIZE, 3, resolution, resolution, device="meta")
            shapes.clear()
            compute, peak = counting_pass(model, x, track_peak=True)
            cells[str(resolution)] = {
                "macs": compute.macs,
                "act_peak_bytes": peak,
                "output_shapes": shapes[-1],
            }
    finally:
        handle.remove()
    return {"params": count_params(model).total, "by_resolution": cells}


def measure_model(
    model: nn.Module, resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, name: str | None = None
) -> dict[str, Any]:
    """One variant's expectation entry for any module (a meta copy is measured; the
    module itself is not changed)::

        {"params": 992715, "by_resolution": {"320": {"macs": ..., "act_peak_bytes": ...,
                                                      "output_shapes": [[1, 112, 40, 40], ...]}}}
    """
    meta = copy.deepcopy(model).to("meta").eval()
    return _measure_meta(meta, name or type(model).__name__, resolutions)


def measure_variant(name: str, resolutions: Sequence[int] = DEFAULT_RESOLUTIONS, **overrides: Any) -> dict[str, Any]:
    """The expectation entry of a registered variant, optionally with builder overrides
    (``measure_variant("esnet_s", se=False)``)."""
    from archbench.factory import create_model

    model = create_model(name, **overrides).to("meta")  # built here, so moved in place
    return _measure_meta(model, name, resolutions)


def _canonical_names(names: Iterable[str] | None) -> list[str]:
    from archbench.registry import default_registry

    registry = default_registry()
    if names is None:
        return [spec.name for spec in registry]
    return list(dict.fromkeys(registry.get(name).name for name in names))


def measure_expectations(
    names: Iterable[str] | None = None, resolutions: Sequence[int] = DEFAULT_RESOLUTIONS
) -> dict[str, Any]:
    """The expectations document for ``names`` (default: every registered variant).

    Args:
        names: Variant names or aliases; ``None`` measures ``archbench.list_variants()``.
        resolutions: Input sides, batch size 1.

    Returns:
        ``{"schema", "schema_version", "batch_size", "resolutions", "variants": {name: entry}}``
        where each entry is what ``measure_variant`` returns.
    """
    resolutions = tuple(resolutions)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_by": UPDATE_COMMAND,
        "batch_size": BATCH_SIZE,
        "resolutions": list(resolutions),
        "variants": {name: measure_variant(name, resolutions) for name in _canonical_names(names)},
    }


# ----------------------------------------------------------------------------- files


def _sort_key(key: str) -> tuple[bool, int, str]:
    """Resolution keys in numeric order ("320" < "1024"), other keys alphabetically."""
    return (not key.isdigit(), int(key) if key.isdigit() else 0, key)


def render_json(value: Any, indent: int = 0) -> str:
    """JSON with sorted keys, one key per line, and lists (output shapes) on one line,
    so that a changed number is a one-line diff."""
    if isinstance(value, Mapping) and value:
        pad = "  " * (indent + 1)
        items = [
            f"{pad}{json.dumps(str(key))}: {render_json(value[key], indent + 1)}"
            for key in sorted(value, key=lambda k: _sort_key(str(k)))
        ]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    return json.dumps(value)


def write_expectations(data: Mapping[str, Any], path: Path) -> None:
    """Write an expectations document atomically (temporary file and rename)."""
    from archbench.results import write_atomic

    write_atomic(Path(path), render_json(data) + "\n")


def load_expectations(path: Path) -> dict[str, Any]:
    """Read an expectations document, checking its schema."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchbenchError(f"no expectations file at {path}; create it with `{UPDATE_COMMAND}`") from None
    except json.JSONDecodeError as exc:
        raise ArchbenchError(f"{path} is not valid JSON ({exc}); regenerate it with `{UPDATE_COMMAND}`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ArchbenchError(f"{path} is not an archbench expectations file (schema {SCHEMA!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ArchbenchError(
            f"{path} has schema version {data.get('schema_version')!r}, this archbench reads "
            f"{SCHEMA_VERSION}; regenerate it with `{UPDATE_COMMAND}`"
        )
    if not isinstance(data.get("variants"), dict):
        raise ArchbenchError(f"{path} has no 'variants' table")
    return data


# ----------------------------------------------------------------------------- diffs


def _shapes_text(shapes: Any) -> str:
    if not isinstance(shapes, list):
        return repr(shapes)
    return ", ".join("x".join(map(str, s)) if isinstance(s, list) else repr(s) for s in shapes) or "none"


def _diff_entry(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[str]:
    if old.get("params") != new.get("params"):
        yield f"{name}: params {format_change(old.get('params'), new.get('params'))}"
    old_cells, new_cells = old.get("by_resolution", {}), new.get("by_resolution", {})
    for resolution in sorted({*old_cells, *new_cells}, key=_sort_key):
        where = f"{name} @ {resolution}"
        if resolution not in old_cells:
            yield f"{where}: measured but not in expectations (run `{UPDATE_COMMAND}`)"
            continue
        if resolution not in new_cells:
            yield f"{where}: in expectations but not measured"
            continue
        before, after = old_cells[resolution], new_cells[resolution]
        for field in ("macs", "act_peak_bytes"):
            if before.get(field) != after.get(field):
                yield f"{where}: {field} {format_change(before.get(field), after.get(field))}"
        if before.get("output_shapes") != after.get("output_shapes"):
            yield (f"{where}: output shapes {_shapes_text(before.get('output_shapes'))} -> "
                   f"{_shapes_text(after.get('output_shapes'))}")


def diff_expectations(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two expectations documents, old -> new.

    An empty list means they agree on every variant, resolution and value.
    """
    lines = []
    if expected.get("batch_size") != actual.get("batch_size"):
        lines.append(f"batch_size {expected.get('batch_size')} -> {actual.get('batch_size')}")
    old_variants, new_variants = expected.get("variants", {}), actual.get("variants", {})
    for name in sorted({*old_variants, *new_variants}):
        if name not in old_variants:
            lines.append(f"new variant {name} not in expectations (run `{UPDATE_COMMAND}`)")
        elif name not in new_variants:
            lines.append(f"variant {name} in expectations but not registered")
        else:
            lines.extend(_diff_entry(name, old_variants[name], new_variants[name]))
    return lines


# ----------------------------------------------------------------------------- command


def _summary(data: Mapping[str, Any]) -> str:
    resolutions = "/".join(map(str, data.get("resolutions", [])))
    return f"{len(data['variants'])} variants x {resolutions} px"


def expect_command(update: bool, path: Path | None = None) -> tuple[str, int]:
    """``archbench expect [--update] [--path FILE]``: the text to print and the exit code.

    Check mode measures every registered variant and compares it with the file: exit 0
    when all match, 1 with one line per difference otherwise. Update mode rewrites the
    file (only when something changed) and lists what changed; exit 0.
    """
    target = Path(path) if path is not None else default_expectations_path()
    rerun = UPDATE_COMMAND if path is None else f"{UPDATE_COMMAND} --path {path}"
    if update:
        previous = load_expectations(target) if target.exists() else None
        measured = measure_expectations()
        if previous is None:
            write_expectations(measured, target)
            return f"wrote {target}: {_summary(measured)}", 0
        changes = diff_expectations(previous, measured)
        if not changes and render_json(previous) == render_json(measured):
            return f"{target} is up to date: {_summary(measured)}", 0
        write_expectations(measured, target)
        listed = "".join(f"\n  {line}" for line in changes)
        return f"updated {target}: {_summary(measured)}; {len(changes)} change(s){listed}", 0
    if not target.exists():
        raise ArchbenchError(f"no expectations file at {target}; create it with `{rerun}`")
    expected = load_expectations(target)
    measured = measure_expectations(resolutions=expected.get("resolutions") or DEFAULT_RESOLUTIONS)
    changes = diff_expectations(expected, measured)
    if not changes:
        return f"all {len(measured['variants'])} variants match {target}", 0
    listed = "".join(f"\n  {line}" for line in changes)
    return (
        f"{len(changes)} difference(s) from {target} (expected -> measured):{listed}\n"
        f"If the change is intended, run `{rerun}` and commit {target.name}."
    ), 1


__all__ = [
    "DEFAULT_RESOLUTIONS",
    "SCHEMA",
    "default_expectations_path",
    "diff_expectations",
    "expect_command",
    "load_expectations",
    "measure_expectations",
    "measure_model",
    "measure_variant",
    "write_expectations",
]
