"""A latency predictor for unseen variants: a table of measured blocks, summed per model.

**The table** (schema ``archbench.latency_table`` version 1, one JSON object) holds the
per-layer own times (``archbench.profile_layers``: in-situ, exclusive, per-row medians) of
a build set's cells, pooled by *block signature*: a row's type, configuration (channels,
kernel, stride, groups, bias, SE, activation, ...) and input/output shapes, or for an
``(own)`` row its module type and the ATen ops that run directly in it (the ``signature``
column of ``profile_layers``). An entry is keyed by (form, signature); the table as a whole
by its threads, device, batch size and input, and it records the environment it was measured
in (``environment``, as results.json has). Fields::

    schema, schema_version, created, archbench_version, command
    environment   cpu_model, torch, intra_op_threads, ... of the build run
    settings      threads, device, batch_size, input, forms, resolutions
    build         space (or null), seed, samples, variants (the build set), results (its results.json),
                  left_out (cells timed while other processes were busy: not pooled),
                  probe_reference_ms (the speed every time in the table is brought to)
    calibration   form -> {slope, intercept, rms_ms, n}: measured = slope x sum + intercept (below)
    cells         the build cells: variant, resolution, form, latency_ms (the run's latency median),
                  macs, params, table_sum_ms (the sum of this table's entries over the cell's rows)
    entries       form, signature, type, kind, macs, bytes_moved, n, median_ms, q1_ms, q3_ms,
                  min_ms, max_ms, values_ms (each observation: one row of one build cell)

**Prediction.** The model is walked once on zeros-like input on the CPU, in one thread, through
``profile_layers``' own capture pass and ``count_compute`` (the same rows, signatures, kinds,
MACs and bytes as a profile; nothing is timed); each row takes, in order:

* *exact*: the entry with its signature: its median;
* *interpolated*: entries with the same signature up to the spatial sizes (the last two dims
  of every shape of 4 or more dims): linear in the row's output elements between the nearest entry below
  and above, or proportional to the elements from the nearest one when on one side only;
* *fitted*: a least-squares fit over the table's entries of the same kind and form,
  ``ms = a x macs + b x bytes_moved + c`` (``a x bytes + c`` where MACs are all zero);
* *uncovered*: none of these (fewer than 2 entries of its kind): counts 0 ms and is named.

The own times of one forward include the timing wrappers' overhead, so their sum is
calibrated on the build cells: ``latency_ms = slope x sum + intercept``, fitted (Theil-Sen:
robust to the slow phases a shared machine has) on (sum of the table's entries over the
cell's rows, the cell's measured latency median). **Uncertainty** (one standard deviation)::

    uncertainty_ms = sqrt(slope^2 x sum_i sigma_i^2 + rms_cal^2)

with ``sigma_i`` the normal-equivalent deviation ``IQR_i / 1.349`` of the entry's observations
(0 for a single observation; interpolated rows interpolate it; fitted rows take the fit's RMS
residual) assumed independent, and ``rms_cal`` the calibration's robust residual scale
(1.4826 x the median absolute residual).

**Speed.** Building a model costs ~30 ms, so ESNet-builder variants are planned per block
(``plan_segments``): the builder's arguments are resolved by ``build_esnet`` itself (with
``ShuffleStyleNet`` replaced by a recorder), and each distinct (block, arguments, input
shape, form) is built once per process (on the CPU, where it is walked: cheaper than on
meta and allocated after) and walked once per distinct *module structure*
(``module_structure``: each submodule's name, class and configuration), so blocks built
alike from other arguments share a walk (a stride-2 block ignores the branch style); other
builders are walked whole, once per (variant, resolution, form). A variant is planned once
for all its resolutions. The ``Predictor`` keeps each walk's row predictions
(``RowsPrediction``), so a variant costs a loop over its walks' per-row times, added in row
order: the same sums, to the last bit, as a loop over its rows. ``tests/test_predictor.py``
checks the plan against the whole model's walk, row for row, and the prediction against
that row-by-row sum.

**Reuse across machines.** A table refuses (``ArchbenchError``) to predict for another CPU
model, thread count, torch version, device or input (``archbench.compare``'s
``environment_differences``) or a form it lacks; ``force=True`` turns that into a warning.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from archbench.errors import ArchbenchError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from archbench.registry import Registry
    from archbench.results import RunResult

SCHEMA = "archbench.latency_table"
SCHEMA_VERSION = 1
EXACT, INTERPOLATED, FITTED, UNCOVERED = "exact", "interpolated", "fitted", "uncovered"
STATUSES = (EXACT, INTERPOLATED, FITTED, UNCOVERED)
#: IQR / this = the standard deviation of a normal distribution with that IQR.
IQR_TO_SIGMA = 1.349
#: What the build measures: static counts for the baselines, latency for the calibration.
BUILD_METRICS = ("params", "macs", "latency", "layers")

_SHAPE = re.compile(r"\[([\d,]*)\]")
_SPATIAL = re.compile(r"\[((?:\d+,)+\d+),\d+,\d+\]")  # shapes of 4 or more dims
_OUTPUTS = re.compile(r"-> ([^;|]*)")


# -- signatures -------------------------------------------------------------------------
def spatial_key(signature: str) -> str:
    """The signature with the spatial sizes (the last two dims of every shape of 4 or more) masked."""
    return _SPATIAL.sub(r"[\1,*,*]", signature)


def output_elements(signature: str) -> int:
    """Elements of every output a signature names (after each ``->``)."""
    total = 0
    for outputs in _OUTPUTS.findall(signature):
        for dims in _SHAPE.findall(outputs):
            total += math.prod(int(d) for d in dims.split(",") if d)
    return total


@dataclass(frozen=True)
class RowWork:
    """What one profile row does, as the table keys it."""

    signature: str
    kind: str
    type: str
    macs: int
    bytes_moved: int


# -- the table --------------------------------------------------------------------------
@dataclass
class Entry:
    """The observations of one signature in one form."""

    form: str
    signature: str
    type: str
    kind: str
    macs: int
    bytes_moved: int
    values_ms: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values_ms)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.values_ms))

    def quartiles(self) -> tuple[float, float]:
        if self.n < 2:
            return self.values_ms[0], self.values_ms[0]
        q1, _, q3 = statistics.quantiles(self.values_ms, n=4, method="inclusive")
        return float(q1), float(q3)

    @property
    def sigma_ms(self) -> float:
        q1, q3 = self.quartiles()
        return (q3 - q1) / IQR_TO_SIGMA

    @property
    def elements(self) -> int:
        return output_elements(self.signature)

    def to_json(self) -> dict[str, Any]:
        q1, q3 = self.quartiles()
        return {"form": self.form, "signature": self.signature, "type": self.type, "kind": self.kind,
                "macs": self.macs, "bytes_moved": self.bytes_moved, "n": self.n, "median_ms": self.median_ms,
                "q1_ms": q1, "q3_ms": q3, "min_ms": min(self.values_ms), "max_ms": max(self.values_ms),
                "values_ms": list(self.values_ms)}


@dataclass
class LatencyTable:
    """A latency table in memory (see the module docstring for its fields)."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    build: dict[str, Any] = field(default_factory=dict)
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    created: str = ""
    command: str = ""
    archbench_version: str = ""

    @property
    def forms(self) -> list[str]:
        return list(self.settings.get("forms") or ["eager"])

    @property
    def threads(self) -> int:
        return int(self.settings.get("threads", 1))

    @property
    def device(self) -> str:
        return str(self.settings.get("device", "cpu"))

    def add(self, form: str, row: dict[str, Any]) -> None:
        """One observation: a per-layer row (``signature``, ``type``, ``kind``, ``macs``,
        ``bytes_moved``, ``latency_ms``) of one build cell."""
        key = (form, str(row["signature"]))
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(form, key[1], str(row["type"]), str(row["kind"]),
                                              int(row.get("macs") or 0), int(row.get("bytes_moved") or 0))
        entry.values_ms.append(float(row["latency_ms"]))

    def to_json(self) -> dict[str, Any]:
        from archbench import __version__

        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created,
                "archbench_version": self.archbench_version or __version__, "command": self.command,
                "environment": self.environment, "settings": self.settings, "build": self.build,
                "calibration": self.calibration, "cells": self.cells,
                "entries": [e.to_json() for e in self.entries.values()]}

    def save(self, path: Path | str) -> Path:
        from archbench.results import write_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


def _bad(path: Path | str, what: str) -> ArchbenchError:
    return ArchbenchError(f"{path}: not a usable latency table: {what}")


def table_from_json(data: Any, path: Path | str = "<table>") -> LatencyTable:
    """A table from its JSON object; one ``ArchbenchError`` naming the first problem."""
    from archbench.results import misshapen_field

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise _bad(path, f"schema is not {SCHEMA!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise _bad(path, f"schema_version {data.get('schema_version')!r}, this archbench reads {SCHEMA_VERSION}")
    problem = misshapen_field(data, objects=("environment", "settings", "build", "calibration"),
                              lists=("entries", "cells"))
    if problem:
        raise _bad(path, problem)
    table = LatencyTable(environment=dict(data.get("environment", {})), settings=dict(data.get("settings", {})),
                         build=dict(data.get("build", {})), cells=[dict(c) for c in data.get("cells", [])],
                         created=str(data.get("created", "")), command=str(data.get("command", "")),
                         archbench_version=str(data.get("archbench_version", "")))
    try:
        table.calibration = {str(f): {k: float(v) for k, v in c.items()} for f, c in data.get("calibration", {}).items()}
        for i, raw in enumerate(data.get("entries", [])):
            values = raw.get("values_ms") if isinstance(raw, dict) else None
            if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
                raise _bad(path, f"entries[{i}] has no values_ms numbers")
            entry = Entry(str(raw["form"]), str(raw["signature"]), str(raw["type"]), str(raw["kind"]),
                          int(raw["macs"]), int(raw["bytes_moved"]), [float(v) for v in values])
            table.entries[(entry.form, entry.signature)] = entry
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, f"malformed field ({type(exc).__name__}: {exc})") from None
    return table


def load_table(path: Path | str) -> LatencyTable:
    """Read a table file (``ArchbenchError`` if missing, not JSON, or not a table)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ArchbenchError(f"{path}: cannot read latency table: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not JSON ({exc.msg} at line {exc.lineno})") from None
    return table_from_json(data, path)


# -- least squares, small and exact ---------------------------------------------------------
def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``y = slope x + intercept``; a flat line
    at the mean of ``y`` when ``x`` does not vary."""
    n = len(x)
    if n == 0:
        raise ArchbenchError("no points to fit a line through")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return 0.0, my
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    return slope, my - slope * mx


def _rms(values: Iterable[float]) -> float:
    values = list(values)
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0


def fit_robust_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Theil-Sen: ``slope`` the median of the pairwise slopes, ``intercept`` the median of
    ``y - slope x``; a flat line at the median of ``y`` when ``x`` does not vary."""
    if not x:
        raise ArchbenchError("no points to fit a line through")
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x)) if x[j] != x[i]]
    slope = float(statistics.median(slopes)) if slopes else 0.0
    return slope, float(statistics.median(b - slope * a for a, b in zip(x, y, strict=True)))


#: Median absolute deviation x this = the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826


def calibrate(table: LatencyTable) -> None:
    """Fit each form's calibration line on the build cells (``table_sum_ms`` -> ``latency_ms``):
    Theil-Sen, because a cell's latency on a shared machine has heavy-tailed slow phases that
    least squares would follow; ``rms_ms`` is ``1.4826 x`` the median absolute residual."""
    table.calibration = {}
    for form in table.forms:
        cells = [c for c in table.cells if c.get("form") == form and c.get("latency_ms") and c.get("table_sum_ms")]
        if not cells:
            continue
        xs = [float(c["table_sum_ms"]) for c in cells]
        ys = [float(c["latency_ms"]) for c in cells]
        slope, intercept = fit_robust_line(xs, ys) if len(cells) > 1 else (ys[0] / xs[0], 0.0)
        residuals = [abs(y - (slope * x + intercept)) for x, y in zip(xs, ys, strict=True)]
        table.calibration[form] = {"slope": slope, "intercept": intercept,
                                   "rms_ms": MAD_TO_SIGMA * float(statistics.median(residuals)), "n": float(len(cells))}


# -- walking a model ------------------------------------------------------------------------------
#: Where models are walked: zeros on the CPU. The meta device gives the same shapes, but its
#: Python decompositions of BatchNorm and Hardswish make a walk ~10x slower than computing.
WALK_DEVICE = "cpu"


def _walk_input(shape: Sequence[int], form: str) -> torch.Tensor:
    import torch

    x = torch.empty(tuple(shape), device=WALK_DEVICE).normal_()
    return x.contiguous(memory_format=torch.channels_last) if form == "channels_last" else x


def _formed(module: nn.Module, form: str) -> nn.Module:
    import torch

    if form == "fused":
        from archbench.folding import fold_conv_bn

        fold_conv_bn(module)
    elif form == "channels_last":
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


def walk_rows(module: nn.Module, x: torch.Tensor, *, rows: str = "all") -> tuple[list[RowWork], Any]:
    """The rows ``profile_layers`` would time for ``module`` on input ``x``, with their
    signatures, kinds, MACs and bytes (its capture pass and ``count_compute``, as there), in
    execution order (first exit); and the forward's output. ``rows``: ``all``, ``children`` (without the
    module's own ``(own)`` row: a container walked alone) or ``root`` (only that row)."""
    from archbench.profilers.compute import count_compute
    from archbench.profilers.latency import cpu_threads
    from archbench.profilers.layer_views import KIND_SE, is_se, leaf_kind, own_kind
    from archbench.profilers.layers import OWN_SUFFIX, _capture_bytes, _Hooks, work_by_row

    module.eval()
    hooks = _Hooks(module, x.device)
    signatures: dict[str, str] = {}
    outputs: list[Any] = []
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        with cpu_threads(1):
            bytes_by_row = _capture_bytes(module, x, hooks.nodes, signatures)
            compute = count_compute(module, x)
    finally:
        handle.remove()
    macs, elements = work_by_row(module, hooks.nodes, compute)
    se_ids = {id(m) for se in module.modules() if is_se(se) for m in se.modules()}
    found = []
    by_name = {node.name: node for node in hooks.nodes}
    for node in (by_name[name] for name in signatures):  # in order of first exit, as profile_layers' rows
        if rows != "all" and (node.name == OWN_SUFFIX) != (rows == "root"):
            continue
        if id(node.module) in se_ids:
            kind = KIND_SE
        elif node.leaf:
            kind = leaf_kind(node.module)
        else:
            kind = own_kind({**elements.get(node.name, {}), "macs": macs.get(node.name, 0)})
        type_name = type(node.module).__name__ if node.leaf else f"{type(node.module).__name__} {OWN_SUFFIX}"
        found.append(RowWork(signatures[node.name], kind, type_name, macs.get(node.name, 0),
                             bytes_by_row.get(node.name, 0)))
    return found, outputs[0] if outputs else None


# -- plans: a model as segments, each walked once -------------------------------------------------
class Segment(NamedTuple):
    """A piece of a model whose rows depend only on ``key`` and its input shape (a named tuple:
    a plan makes one per block of every variant, and a dataclass would cost more to make)."""

    key: Any
    make: Callable[[], nn.Module]
    rows: str = "children"  # which rows of its walk count (``walk_rows``)


@dataclass(frozen=True, eq=False)
class Walk:
    """The rows of one segment walked at one input shape and form, and its output shape.
    Made once per process and cached, so compared and hashed by identity (``Predictor``
    keeps each walk's predictions under it)."""

    rows: tuple[RowWork, ...]
    out_shape: tuple[int, ...]


#: (segment key, input shape, form) -> its walk: a plan's lookups, without building anything.
_WALKS: dict[Any, Walk] = {}
#: (module structure, rows, input shape, form) -> the walk: segments whose keys differ but whose
#: modules are the same (a ``DownBlock`` ignores the branch style) share one walk.
_WALKS_BY_STRUCTURE: dict[Any, Walk] = {}


def module_structure(module: nn.Module) -> tuple[tuple[str, type, str], ...]:
    """What a module's rows depend on besides the input: each submodule's name, class and
    configuration (``extra_repr``: what a row's signature names). Two modules with one structure
    walk alike as long as their forwards read nothing but their submodules (true of the blocks
    the planners make; a module keeping other state would need it here)."""
    return tuple((name, type(m), m.extra_repr()) for name, m in module.named_modules())


def _segment_walk(segment: Segment, shape: tuple[int, ...], form: str) -> Walk:
    """The walk of one segment at one input shape and form (cached)."""
    key = (segment.key, shape, form)
    walk = _WALKS.get(key)
    if walk is None:
        walk = _WALKS[key] = _walk_segment(segment, shape, form)
    return walk


def _walk_segment(segment: Segment, shape: tuple[int, ...], form: str) -> Walk:
    """Build the segment and walk it, unless a segment with the same modules was walked at
    this shape and form. Built where it is walked: initialising a block's weights costs less
    than building it on meta and allocating it after (``to_empty``); the initialisation draws
    from a forked random generator, so the caller's is left as it was (the walk needs shapes,
    not values)."""
    import torch

    from archbench.profilers.latency import cpu_threads

    with cpu_threads(1), torch.random.fork_rng(devices=[]), _on_walk_device():
        module = segment.make()
    structure = (module_structure(module), segment.rows, shape, form)
    walk = _WALKS_BY_STRUCTURE.get(structure)
    if walk is None:
        walk = _WALKS_BY_STRUCTURE[structure] = _walk(_formed(module, form), shape, form, segment.rows)
    return walk


def _on_walk_device() -> contextlib.AbstractContextManager[Any]:
    """Where a segment is built: ``WALK_DEVICE``, made the default only if it is not already
    (a device context intercepts every torch call made while building a block)."""
    import torch

    device = torch.device(WALK_DEVICE)
    return contextlib.nullcontext() if torch.get_default_device() == device else device


def _walk(module: nn.Module, shape: tuple[int, ...], form: str, rows: str = "all") -> Walk:
    """``walk_rows`` of a module (already in ``form``) on an input of ``shape``."""
    import torch

    found, output = walk_rows(module, _walk_input(shape, form), rows=rows)
    return Walk(tuple(found), tuple(output.shape) if isinstance(output, torch.Tensor) else shape)


@functools.cache
def _signature(function: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(function)


def _shuffle_style_plan(args: dict[str, Any]) -> list[Segment] | None:
    """Segments of an ESNet-builder model: stem, each block, the root's own row; None when
    the builder makes something else (a classifier)."""
    from unittest import mock

    from torch import nn

    from archbench.models import esnet as esnet_module
    from archbench.models.layers import ConvBN
    from archbench.models.shuffle_blocks import DownBlock, ShuffleStyleNet, SplitBlock

    captured: list[inspect.BoundArguments] = []
    signature = _signature(ShuffleStyleNet.__init__)

    def record(*a: Any, **k: Any) -> None:
        captured.append(signature.bind(None, *a, **k))

    with mock.patch.object(esnet_module, "ShuffleStyleNet", record):
        esnet_module.build_esnet(**args)
    bound = captured[0]
    bound.apply_defaults()
    net = dict(bound.arguments)
    if net["num_classes"] is not None:
        return None
    channels, repeats, mids = list(net["stage_channels"]), list(net["stage_repeats"]), list(net["mids"])
    styles = [net["style"]] * len(channels) if not isinstance(net["style"], list | tuple) else list(net["style"])
    stem, act = int(net["stem_channels"]), styles[0].act
    segments = [Segment(("stem", stem, act), lambda: nn.Sequential(ConvBN(3, stem, 3, 2, act=act), nn.MaxPool2d(3, 2, 1)))]
    in_channels, block = stem, 0
    for width, count, style in zip(channels, repeats, styles, strict=True):
        segments.append(Segment(("down", in_channels, mids[block], width, style),
                                functools.partial(DownBlock, in_channels, mids[block], width, style), "all"))
        segments += [Segment(("split", width, mids[block + j], style),
                             functools.partial(SplitBlock, width, mids[block + j], style), "all")
                     for j in range(1, count)]
        in_channels, block = width, block + count
    tiny = len(channels)
    segments.append(Segment(("root", tiny, styles[0]), lambda: ShuffleStyleNet([16] * tiny, [1] * tiny, [16] * tiny,
                                                                               styles, stem_channels=16), rows="root"))
    return segments


#: Builders whose models are planned per block (others are walked whole).
PLANNERS: dict[str, Callable[[dict[str, Any]], list[Segment] | None]] = {"esnet": _shuffle_style_plan}


def plan_segments(target: str, registry: Registry | None = None) -> list[Segment]:
    """The segments of variant ``target``: its blocks where its builder has a planner
    (``PLANNERS``), else the whole model."""
    from archbench.factory import create_model
    from archbench.registry import default_registry

    registry = registry or default_registry()
    spec = registry.get(target)
    planner = PLANNERS.get(spec.builder)
    segments = planner(dict(spec.args)) if planner is not None else None
    if segments is not None:
        return segments
    key = ("model", spec.builder, json.dumps(spec.args, sort_keys=True, default=str))

    def build() -> nn.Module:
        return create_model(target, registry=registry)

    return [Segment(key, build, rows="all")]


def segment_walks(segments: Sequence[Segment], resolution: int, *, form: str = "eager",
                  batch_size: int = 1) -> list[Walk]:
    """The walk of each segment (cached) at ``resolution`` in ``form``, each on the output of the one before."""
    walks = []
    shape: tuple[int, ...] = (batch_size, 3, resolution, resolution)
    for segment in segments:
        if segment.rows == "root":  # the root's own row, from a tiny net of the same kind: it runs no ops
            walks.append(_segment_walk(segment, (batch_size, 3, 64, 64), form))
        else:
            walks.append(_segment_walk(segment, shape, form))
            shape = walks[-1].out_shape
    return walks


def plan_walks(target: str, resolution: int, *, form: str = "eager", batch_size: int = 1,
               registry: Registry | None = None) -> list[Walk]:
    """The walks whose rows, in order, are the rows of variant ``target`` at ``resolution`` in
    ``form``: one per segment of its plan, each cached for the process."""
    return segment_walks(plan_segments(target, registry), resolution, form=form, batch_size=batch_size)


def plan_rows(target: Any, resolution: int, *, form: str = "eager", batch_size: int = 1,
              registry: Registry | None = None) -> list[RowWork]:
    """The rows of ``target`` (a variant name or an ``nn.Module``) at ``resolution`` in ``form``."""
    from torch import nn

    if isinstance(target, nn.Module):
        model = _formed(copy.deepcopy(target).to(WALK_DEVICE), form)
        return list(_walk(model, (batch_size, 3, resolution, resolution), form).rows)
    walks = plan_walks(target, resolution, form=form, batch_size=batch_size, registry=registry)
    return [row for walk in walks for row in walk.rows]


# -- predicting ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowPrediction:
    status: str
    ms: float
    sigma_ms: float


@dataclass(frozen=True)
class RowsPrediction:
    """The predictions of a run of rows in one form: per row its time and variance
    (``sigma_ms ** 2``), in row order; rows per status (in ``STATUSES`` order); the signatures
    interpolated or fitted, and those uncovered."""

    ms: tuple[float, ...]
    variances: tuple[float, ...]
    counts: tuple[int, ...]
    interpolated: frozenset[str]
    uncovered: frozenset[str]


@dataclass
class Prediction:
    """A variant's predicted latency at one resolution and form."""

    variant: str
    resolution: int
    form: str
    latency_ms: float
    uncertainty_ms: float
    sum_ms: float
    rows: int
    counts: dict[str, int]
    interpolated: list[str] = field(default_factory=list)  # signatures (interpolated or fitted)
    uncovered: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        return not self.uncovered

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "resolution": self.resolution, "form": self.form,
                "latency_ms": self.latency_ms, "uncertainty_ms": self.uncertainty_ms, "sum_ms": self.sum_ms,
                "rows": self.rows, **{f"rows_{k}": v for k, v in self.counts.items()},
                "interpolated": self.interpolated, "uncovered": self.uncovered}


def table_differences(table: LatencyTable, threads: int, device: str, env: dict[str, Any] | None = None) -> list[str]:
    """What differs between the table's measuring conditions and these (``compare``'s rules)."""
    from archbench.compare import environment_differences
    from archbench.environment import environment
    from archbench.results import RunResult

    here = env if env is not None else environment(threads, device)
    settings = {"threads": threads, "device": device, "input": table.settings.get("input")}
    base = RunResult("table", "", "", "", dict(table.settings), dict(table.environment))
    new = RunResult("here", "", "", "", settings, dict(here))
    return environment_differences(base, new)


def check_table(table: LatencyTable, form: str, threads: int, device: str, *, force: bool = False,
                env: dict[str, Any] | None = None) -> list[str]:
    """Refuse (``ArchbenchError``) a table measured under other conditions or lacking ``form``;
    with ``force``, the reasons come back as warnings instead."""
    reasons = table_differences(table, threads, device, env)
    if form not in table.forms:
        reasons.append(f"the table has no form {form!r} (it has {', '.join(table.forms)})")
    if reasons and not force:
        raise ArchbenchError(f"latency table measured under other conditions: {'; '.join(reasons)}; "
                             "pass --force to use it anyway")
    return [f"latency table used across different conditions (--force): {'; '.join(reasons)}"] if reasons else []


class Predictor:
    """Predictions from one table, with its lookups built once."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self._by_key: dict[tuple[str, str], list[Entry]] = {}
        for entry in table.entries.values():
            self._by_key.setdefault((entry.form, spatial_key(entry.signature)), []).append(entry)
        for entries in self._by_key.values():
            entries.sort(key=lambda e: e.elements)
        self._fits: dict[tuple[str, str], tuple[list[float], list[str], float] | None] = {}
        self._rows: dict[tuple[str, str], RowPrediction] = {}
        self._walks: dict[tuple[str, Walk], RowsPrediction] = {}

    def _fit(self, form: str, kind: str) -> tuple[list[float], list[str], float] | None:
        """Least squares of entry medians on (macs, bytes, 1) over one kind: coefficients,
        their features, RMS residual; None with fewer than 2 entries."""
        import numpy as np

        if (form, kind) in self._fits:
            return self._fits[(form, kind)]
        entries = [e for e in self.table.entries.values() if e.form == form and e.kind == kind]
        fit = None
        if len(entries) >= 2:
            y = np.array([e.median_ms for e in entries])
            for features in (["macs", "bytes_moved"], ["bytes_moved"]):
                a = np.array([[float(getattr(e, f)) for f in features] + [1.0] for e in entries])
                if np.linalg.matrix_rank(a) < a.shape[1]:
                    continue
                coef = np.linalg.lstsq(a, y, rcond=None)[0]
                residual = y - a @ coef
                fit = ([float(c) for c in coef], features, float(math.sqrt(float(np.mean(residual ** 2)))))
                break
        self._fits[(form, kind)] = fit
        return fit

    def row(self, form: str, row: RowWork) -> RowPrediction:
        cached = self._rows.get((form, row.signature))
        if cached is None:
            cached = self._rows[(form, row.signature)] = self._row(form, row)
        return cached

    def _row(self, form: str, row: RowWork) -> RowPrediction:
        entry = self.table.entries.get((form, row.signature))
        if entry is not None:
            return RowPrediction(EXACT, entry.median_ms, entry.sigma_ms)
        similar = self._by_key.get((form, spatial_key(row.signature)), [])
        if similar:
            e = output_elements(row.signature)
            below = [s for s in similar if s.elements <= e]
            above = [s for s in similar if s.elements > e]
            if below and above and below[-1].elements < above[0].elements:
                lo, hi = below[-1], above[0]
                t = (e - lo.elements) / (hi.elements - lo.elements)
                return RowPrediction(INTERPOLATED, lo.median_ms + t * (hi.median_ms - lo.median_ms),
                                     lo.sigma_ms + t * (hi.sigma_ms - lo.sigma_ms))
            near = below[-1] if below else above[0]
            scale = e / near.elements if near.elements else 1.0
            return RowPrediction(INTERPOLATED, near.median_ms * scale, near.sigma_ms * scale)
        fit = self._fit(form, row.kind)
        if fit is None:
            return RowPrediction(UNCOVERED, 0.0, 0.0)
        coef, features, rms = fit
        ms = sum(c * float(getattr(row, f)) for c, f in zip(coef, features, strict=False)) + coef[-1]
        return RowPrediction(FITTED, max(ms, 0.0), rms)

    def rows_prediction(self, form: str, rows: Sequence[RowWork]) -> RowsPrediction:
        """Each row's prediction, kept apart so that a model's rows add up in order."""
        predictions = [self.row(form, row) for row in rows]
        return RowsPrediction(
            ms=tuple(p.ms for p in predictions), variances=tuple(p.sigma_ms ** 2 for p in predictions),
            counts=tuple(sum(1 for p in predictions if p.status == status) for status in STATUSES),
            interpolated=frozenset(r.signature for r, p in zip(rows, predictions, strict=True)
                                   if p.status in (INTERPOLATED, FITTED)),
            uncovered=frozenset(r.signature for r, p in zip(rows, predictions, strict=True) if p.status == UNCOVERED))

    def walk_prediction(self, form: str, walk: Walk) -> RowsPrediction:
        """``rows_prediction`` of a walk's rows, kept per walk (a plan reuses its walks)."""
        found = self._walks.get((form, walk))
        if found is None:
            found = self._walks[(form, walk)] = self.rows_prediction(form, walk.rows)
        return found

    def predict_rows(self, variant: str, resolution: int, form: str, rows: Sequence[RowWork],
                     warnings: Sequence[str] = ()) -> Prediction:
        return self.combine(variant, resolution, form, [self.rows_prediction(form, rows)], warnings)

    def predict_walks(self, variant: str, resolution: int, form: str, walks: Sequence[Walk],
                      warnings: Sequence[str] = ()) -> Prediction:
        return self.combine(variant, resolution, form, [self.walk_prediction(form, w) for w in walks], warnings)

    def combine(self, variant: str, resolution: int, form: str, parts: Sequence[RowsPrediction],
                warnings: Sequence[str] = ()) -> Prediction:
        """The prediction of a model whose rows are ``parts``' rows in order: their times and
        variances added one row after another (the same sums, to the last bit, as a loop over
        the rows), through the calibration."""
        total = variance = 0.0
        for part in parts:
            for ms in part.ms:
                total += ms
            for row_variance in part.variances:
                variance += row_variance
        by_status = [sum(counts) for counts in zip(*(part.counts for part in parts), strict=True)] or [0] * len(STATUSES)
        counts = dict(zip(STATUSES, by_status, strict=True))
        cal = self.table.calibration.get(form, {"slope": 1.0, "intercept": 0.0, "rms_ms": 0.0})
        latency = cal["slope"] * total + cal["intercept"]
        uncertainty = math.sqrt(cal["slope"] ** 2 * variance + cal["rms_ms"] ** 2)
        return Prediction(variant, resolution, form, latency, uncertainty, total, sum(counts.values()), counts,
                          sorted(frozenset().union(*(p.interpolated for p in parts))),
                          sorted(frozenset().union(*(p.uncovered for p in parts))), list(warnings))


_PREDICTORS: dict[int, tuple[LatencyTable, Predictor]] = {}


def predictor_for(table: LatencyTable) -> Predictor:
    """The (cached) ``Predictor`` of a table object."""
    found = _PREDICTORS.get(id(table))
    if found is None or found[0] is not table:
        if len(_PREDICTORS) > 8:
            _PREDICTORS.clear()
        found = _PREDICTORS[id(table)] = (table, Predictor(table))
    return found[1]


def predict_latency(target: Any, resolution: int = 320, *, table: LatencyTable | Path | str,
                    form: str | None = None, threads: int | None = None, device: str | None = None,
                    force: bool = False, registry: Registry | None = None,
                    env: dict[str, Any] | None = None) -> Prediction:
    """The predicted latency of ``target`` (a variant name or an ``nn.Module``) at ``resolution``.

    Args:
        table: A ``LatencyTable`` or the path of its file.
        form, threads, device: What to predict for (default: the table's first form, its
            threads and device); a table measured otherwise, or on another CPU or torch,
            raises ``ArchbenchError`` unless ``force`` (then ``Prediction.warnings`` says so).
        env: This machine's environment (default: ``archbench.environment.environment``).
    """
    if not isinstance(table, LatencyTable):
        table = load_table(table)
    form = form or table.forms[0]
    threads = table.threads if threads is None else threads
    device = device or table.device
    warnings = check_table(table, form, threads, device, force=force, env=env)
    use_form = form if form in table.forms else table.forms[0]
    batch, predictor = int(table.settings.get("batch_size", 1)), predictor_for(table)
    if isinstance(target, str):
        walks = plan_walks(target, resolution, form=use_form, batch_size=batch, registry=registry)
        return predictor.predict_walks(target, resolution, use_form, walks, warnings)
    rows = plan_rows(target, resolution, form=use_form, batch_size=batch, registry=registry)
    return predictor.predict_rows(type(target).__name__, resolution, use_form, rows, warnings)


def predict_many(names: Sequence[str], resolutions: Sequence[int], table: LatencyTable, *,
                 form: str | None = None, force: bool = False, registry: Registry | None = None,
                 env: dict[str, Any] | None = None) -> list[Prediction]:
    """``predict_latency`` for every name x resolution, the table checked once."""
    form = form or table.forms[0]
    warnings = check_table(table, form, table.threads, table.device, force=force, env=env)
    use_form = form if form in table.forms else table.forms[0]
    predictor = predictor_for(table)
    batch = int(table.settings.get("batch_size", 1))
    predictions = []
    for name in names:
        segments = plan_segments(name, registry)
        for resolution in resolutions:
            walks = segment_walks(segments, resolution, form=use_form, batch_size=batch)
            predictions.append(predictor.predict_walks(name, resolution, use_form, walks, warnings))
    return predictions


# -- building a table from a run -----------------------------------------------------------------
def contended_layers(record: dict[str, Any]) -> bool:
    """Whether other processes kept more than ``max_other_load`` cores (0.5) busy, anywhere on
    the machine, while a cell's layers were timed. Stricter than ``latency_noise``'s rule (the
    load on the measured CPUs only): a busy neighbour core still shares caches and memory
    bandwidth, and own times of small blocks feel it."""
    from archbench.profilers.latency import LatencyConfig

    load = record.get("layers_other_load")
    if load is None or (isinstance(load, float) and math.isnan(load)):
        return False
    return float(load) > LatencyConfig().max_other_load


def speed_factors(result: RunResult) -> tuple[float, dict[tuple[str, int, str], tuple[float, float]]]:
    """The run's reference speed, its fastest speed-probe reading (``archbench.profilers.speed``;
    NaN if none was read), and each ok cell's (latency, per-layer) slowdown against it: how
    much slower the machine ran while that phase was timed (1.0 where the probe was not read)."""
    from archbench.profilers.speed import PROBE_COLUMNS, reading, reference_ms

    records = [r for r in result.records if r.get("status") == "ok"]
    reference = reference_ms(records)

    def slowdown(record: dict[str, Any], column: str) -> float:
        value = reading(record, column)
        return value / reference if value is not None else 1.0

    return reference, {(r["variant"], int(r["resolution"]), r.get("form", "eager")):
                       (slowdown(r, PROBE_COLUMNS[0]), slowdown(r, PROBE_COLUMNS[1])) for r in records}


def table_from_result(result: RunResult, build: dict[str, Any], command: str = "") -> LatencyTable:
    """A table from a run that measured ``latency`` and ``layers`` (rows with signatures).

    Cells whose layers were timed while other processes kept the measured CPUs busy
    (``contended_layers``) are left out of the entries and the calibration, and named in
    ``build["left_out"]``: their own times say more about the other processes than the blocks.
    Every other cell's times are brought to the run's reference speed (``speed_factors``:
    divided by the slowdown the speed probe read around each phase), so that the table
    describes the machine at its fastest in the build, ``build["probe_reference_ms"]``; the
    cells keep their measured latency beside (``measured_latency_ms``, ``slowdown``)."""
    s = result.settings
    table = LatencyTable(
        environment=dict(result.environment),
        settings={"threads": s.get("threads", 1), "device": s.get("device", "cpu"),
                  "batch_size": s.get("batch_size", 1), "input": s.get("input"),
                  "forms": list(s.get("forms") or ["eager"]), "resolutions": list(s.get("resolutions", []))},
        build=build, created=datetime.now(UTC).isoformat(timespec="seconds"), command=command,
    )
    by_cell: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in result.layers:
        if not row.get("signature"):
            raise ArchbenchError(f"{row.get('variant')} @ {row.get('resolution')}: per-layer rows without signatures "
                                 "(measured by an archbench older than the predictor); measure them again")
        by_cell.setdefault((row["variant"], int(row["resolution"]), row.get("form", "eager")), []).append(row)
    left_out = table.build.setdefault("left_out", [])
    reference, slowdowns = speed_factors(result)
    table.build["probe_reference_ms"] = reference
    for (variant, resolution, form), rows in by_cell.items():
        record = result.record(variant, resolution, form)
        if record is None or record.get("status") != "ok":
            continue
        if contended_layers(record):
            left_out.append({"variant": variant, "resolution": resolution, "form": form,
                             "why": f"contended: other load {record['layers_other_load']:.2f} cores"})
            continue
        latency_slowdown, layers_slowdown = slowdowns.get((variant, resolution, form), (1.0, 1.0))
        for row in rows:
            table.add(form, {**row, "latency_ms": float(row["latency_ms"]) / layers_slowdown})
        latency = record.get("latency_ms_median")
        table.cells.append({"variant": variant, "resolution": resolution, "form": form,
                            "latency_ms": None if latency is None else float(latency) / latency_slowdown,
                            "measured_latency_ms": latency, "slowdown": [latency_slowdown, layers_slowdown],
                            "macs": record.get("macs"), "params": record.get("params"),
                            "layers_forward_ms": record.get("layers_forward_ms"),
                            "signatures": [row["signature"] for row in rows]})
    if not table.cells:
        raise ArchbenchError("no cell of the build run measured per-layer rows; nothing to tabulate")
    for cell in table.cells:
        signatures = cell.pop("signatures")
        cell["table_sum_ms"] = sum(table.entries[(cell["form"], sig)].median_ms for sig in signatures)
    calibrate(table)
    return table


def build_table(registry: Registry, names: Sequence[str], *, resolutions: Sequence[int], forms: Sequence[str],
                threads: int, folder: Path, space: str | None = None, seed: int | None = None,
                samples: int | None = None, backend: str = "local", workers: int = 2, address: str | None = None,
                on: str | None = None, specs: tuple[tuple[str, str], ...] = (), progress: Any = None,
                command: str = "", out: Path | None = None) -> tuple[LatencyTable, RunResult]:
    """Measure the build set (``BUILD_METRICS``) into ``folder`` and tabulate it.

    A space's samples go through the sweep pipeline (``SweepRunner`` on ``backend``: local
    worker processes or Ray, latency cells one at a time per machine); a list of registered
    variants through the ``Runner`` in this process, as ``archbench run`` measures them.
    ``out``: the table file the caller will write, recorded for ``archbench predictor build
    --resume`` (``archbench.predict.build``).
    """
    from archbench.predict.build import BuildPlan, build_runner

    plan = BuildPlan(tuple(names), tuple(resolutions), tuple(forms), threads, space, seed, samples, out)
    with build_runner(registry, plan, folder, backend=backend, workers=workers, address=address, on=on, specs=specs,
                      progress=progress, command=command) as runner:
        result = runner.run()
    return table_from_result(result, build_info(result, folder / "results.json"), command), result


def build_info(result: RunResult, results: Path | str) -> dict[str, Any]:
    """The table's ``build`` field for a run's results (the build set; a sweep's space, seed
    and samples) kept in ``results``."""
    sweep = result.environment.get("sweep") or {}
    return {"space": sweep.get("space"), "seed": sweep.get("seed"), "samples": sweep.get("samples"),
            "variants": list(result.settings.get("variants", [])), "results": str(results)}


def table_from_results_file(path: Path | str, command: str = "") -> LatencyTable:
    """A table from a results.json that measured ``latency`` and ``layers`` (a run, a sweep,
    or an earlier build), without measuring again."""
    from archbench.results import load

    result = load(path)
    return table_from_result(result, build_info(result, path), command)


# -- ranking a space by prediction ------------------------------------------------------------------
def rank_by_prediction(names: Sequence[str], resolution: int, table: LatencyTable, top: int, *,
                       form: str | None = None, force: bool = False,
                       registry: Registry | None = None) -> tuple[list[str], list[Prediction]]:
    """The ``top`` names predicted fastest at ``resolution`` (ties by name), and every prediction."""
    predictions = predict_many(names, [resolution], table, form=form, force=force, registry=registry)
    ranked = sorted(predictions, key=lambda p: (p.latency_ms, p.variant))
    return [p.variant for p in ranked[:top]], predictions


@contextlib.contextmanager
def _no_cache() -> Iterator[None]:
    """Empty the per-process caches (walks, and predictors with their per-row and per-walk
    predictions) around a block, as in a fresh process (tests, benchmarks)."""
    caches: list[dict[Any, Any]] = [_WALKS, _WALKS_BY_STRUCTURE, _PREDICTORS]
    saved = [dict(cache) for cache in caches]
    for cache in caches:
        cache.clear()
    try:
        yield
    finally:
        for cache, before in zip(caches, saved, strict=True):
            cache.clear()
            cache.update(before)


__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "Entry", "LatencyTable", "Prediction", "Predictor", "RowWork", "Segment", "Walk",
    "build_table", "check_table", "fit_line", "load_table", "output_elements", "plan_rows", "plan_segments",
    "plan_walks", "predict_latency", "predict_many", "rank_by_prediction", "segment_walks", "spatial_key",
    "table_from_json", "table_from_result", "walk_rows",
]
