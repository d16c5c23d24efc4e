"""Measuring one cell: the function every sweep calls.

A cell is one variant at one resolution in one deployment form, under a run's
``RunSettings`` (batch size, device, threads, metrics). ``measure_cell`` measures
it in one phase and returns plain columns (named as the metric catalog declares):

* ``static``: params, MACs and memory, once per variant x resolution (the same in
  every form, so the runner copies them into each form's record);
* ``latency``: the form is made and checked against eager, then timed;
* ``layers``: the per-layer profile (``archbench.profilers.layers``) in the cell's form,
  where the form keeps the modules; its rows come back under ``LAYER_ROWS``, which the
  runner moves out of the record into results.json's ``layers`` list.

The runner's sweep (``archbench run``, ``archbench.profile``) and the repeat
worker call it; nothing else measures. This module formats nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from archbench.devices import check_device, on_device, precision_policy
from archbench.errors import ArchbenchError
from archbench.forms import PreparedForm, prepare_form
from archbench.inputs import sample_input
from archbench.metrics import Phase
from archbench.profilers.compute import ComputeCount, unclassified_to_text
from archbench.profilers.crosscheck import agreement, fvcore_count, thop_count
from archbench.profilers.latency import LatencyResult, cpu_timer, cuda_timer, measure_latency
from archbench.profilers.memory import profile_memory
from archbench.profilers.meta import counting_pass
from archbench.profilers.op_rules import CATEGORIES
from archbench.profilers.params import count_params, model_parts
from archbench.profilers.speed import speed_probe
from archbench.settings import RunSettings

#: Errors that fail one cell (recorded with their reason; the sweep goes on).
CELL_ERRORS: tuple[type[BaseException], ...] = (ArchbenchError, RuntimeError, MemoryError, ValueError, TypeError)


@dataclass(frozen=True)
class Cell:
    variant: str
    resolution: int
    form: str = "eager"


def input_multiple(model: nn.Module) -> int:
    """The stride every input side must be a multiple of: the backbone's largest stride
    (upsampled maps must line up with lateral ones); 1 for models that declare none."""
    body = getattr(model, "backbone", model)
    strides = getattr(body, "strides", None)
    return max(strides) if strides else 1


def check_resolution(model: nn.Module, name: str, resolution: object) -> int:
    """``resolution`` if ``model`` can take it, else one error naming the nearest that fits."""
    from archbench.settings import check_resolution_value

    resolution = check_resolution_value(resolution)
    multiple = input_multiple(model)
    if resolution % multiple:
        raise ArchbenchError(
            f"{name} cannot take resolution {resolution}: it must be a multiple of the largest "
            f"backbone stride, {multiple} (nearest: {max(multiple, round(resolution / multiple) * multiple)})"
        )
    return resolution


def failure_reason(exc: BaseException) -> str:
    """One line: what went wrong, with out-of-memory called by its name."""
    if isinstance(exc, ArchbenchError):
        return str(exc)
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- static ---------------------------------------------------------------------------


def static_columns(model: nn.Module, x: torch.Tensor, metrics: Sequence[str], counters: Sequence[str]) -> dict[str, Any]:
    """Params, MACs and memory of one model on one input, as columns."""
    row: dict[str, Any] = {}
    parts = list(model_parts(model))
    if "params" in metrics:
        count = count_params(model)
        row.update(params=count.total, trainable_params=count.trainable)
        row.update({f"params_{part}": n for part, n in count.by_part.items()})
    peak: int | None = None
    compute: ComputeCount | None = None
    if "macs" in metrics or x.is_meta:
        # One forward serves both the MAC counter and the activation tracker.
        counted, peak = counting_pass(model, x, track_peak="memory" in metrics)
        compute = counted if "macs" in metrics else None
    if compute is not None:
        row.update(macs=compute.macs, flops=2 * compute.macs)
        row.update({f"{c}_elems": compute.elements(c) for c in CATEGORIES})
        by_part = compute.by_module("macs", depth=1)
        row.update({f"macs_{part}": by_part.get(part, 0) for part in parts})
        if compute.unclassified_ops:
            row["unclassified_ops"] = ",".join(sorted(compute.unclassified_ops))
            row["unclassified_calls"] = unclassified_to_text(compute.unclassified)
    for counter in counters:
        check = fvcore_count(model, x) if counter == "fvcore" else thop_count(model, x)
        row[f"{counter}_total"] = check.total
        row[f"{counter}_conv_linear_macs"] = check.conv_linear_macs
        unsupported = ",".join(f"{k}x{v}" for k, v in sorted(check.unsupported.items()))
        if compute is not None:  # where the tool's conv/linear part differs, said beside what it skipped
            agreed = agreement(check, compute)
            row[f"{counter}_conv_linear_agrees"] = int(agreed.agrees)
            if not agreed.agrees:
                unsupported = "; ".join(part for part in (unsupported, agreed.summary()) if part)
        row[f"{counter}_unsupported"] = unsupported
    if "memory" in metrics:
        memory = profile_memory(model, x, act_peak_bytes=peak)
        row.update(asdict(memory))
    elif "params" in metrics:
        row["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return row


def cuda_memory_columns(call: Callable[[], object], device: torch.device) -> dict[str, int]:
    """Peak allocated/reserved CUDA memory of one ``call``, as deltas over the warm state
    (run it inside ``on_device(device)``)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    with torch.inference_mode():
        call()
    torch.cuda.synchronize(device)
    return {
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) - allocated,
        "cuda_max_reserved_bytes": torch.cuda.max_memory_reserved(device) - reserved,
    }


def measure_static(model: nn.Module, resolution: int, settings: RunSettings) -> dict[str, Any]:
    """The static columns of one variant x resolution; on a GPU also the allocator peaks of
    an eager forward after a warm-up one (each timed form records its own in the latency phase).

    A model on the meta device (a sweep's static cells, ``archbench.sweep_jobs``) is counted
    with shape-only kernels, as ``archbench expect`` counts: the same columns, no kernel run."""
    if any(p.is_meta for p in model.parameters()):
        meta_input = torch.empty(settings.batch_size, 3, resolution, resolution, device="meta")
        return static_columns(model, meta_input, settings.metrics, settings.counters)
    x = sample_input(settings.batch_size, resolution, kind=settings.input)
    row = static_columns(model, x, settings.metrics, settings.counters)
    device = check_device(settings.device)
    if device.type == "cuda" and "memory" in settings.metrics:
        with on_device(device), precision_policy(settings.tf32):
            model.to(device)
            try:
                x = x.to(device)
                with torch.inference_mode():
                    model(x)  # warm-up: cuDNN workspaces and allocator pools settle
                row.update(cuda_memory_columns(lambda: model(x), device))
            finally:
                model.to("cpu")
    return row


# -- latency --------------------------------------------------------------------------


def latency_columns(result: LatencyResult, threads: int, cold_ms: float) -> dict[str, Any]:
    """The columns of a latency measurement; ``cold_ms`` is the first call on the prepared form."""
    stats = result.stats
    return {
        "latency_ms_median": stats.median_ms,
        "latency_ms_iqr": stats.iqr_ms,
        "latency_ms_p90": stats.p90_ms,
        "latency_ms_min": stats.min_ms,
        "latency_n": stats.n,
        "latency_ms_cold": cold_ms,
        "latency_rel_ci": stats.rel_ci,
        "latency_wall_ms_median": result.wall_median_ms,
        "latency_other_load": result.other_load,
        "latency_probe_ms": result.probe_ms,
        "latency_attempts": result.attempts,
        "latency_noise": result.verdict,
        "threads": threads,
    }


def form_columns(prepared: PreparedForm) -> dict[str, Any]:
    return {
        "form_prepare_s": prepared.prepare_s,
        "form_max_rel_err": prepared.max_rel_err,
        "form_ref_rel_err": prepared.ref_rel_err,
        "eager_ref_rel_err": prepared.eager_ref_rel_err,
        "form_tolerance": prepared.tolerance,
        "form_check": prepared.check,
        "form_note": prepared.note,
        "form_runtime": prepared.runtime,
        "form_precision": prepared.precision,
    }


def measure_form_latency(model: nn.Module, cell: Cell, settings: RunSettings) -> dict[str, Any]:
    """Latency columns of one cell in its deployment form.

    The form is made and checked first (``FormError`` if it cannot be made or diverges;
    it is then never timed). The model is moved to the settings' device and back; on a
    GPU everything runs on that device under the run's TF32 setting, timed with CUDA
    events, except forms that run on their own stream (``host_timed``: host time after
    the call has synchronised).
    """
    device = check_device(settings.device)
    with on_device(device), precision_policy(settings.tf32):
        model.to(device)
        try:
            x = sample_input(settings.batch_size, cell.resolution, device, settings.input)
            x_alt = sample_input(settings.batch_size, cell.resolution, device, settings.input, variant=1)
            prepared = prepare_form(cell.form, model, x, threads=settings.threads, x_alt=x_alt)
            cuda_events = device.type == "cuda" and not prepared.host_timed
            speed = speed_probe().read_ms if device.type == "cpu" else None
            with torch.inference_mode():
                result = measure_latency(prepared.call, settings.latency, timer=cuda_timer() if cuda_events else cpu_timer,
                                         speed=speed)
            row = {**latency_columns(result, settings.threads, prepared.cold_ms), **form_columns(prepared)}
            if device.type == "cuda":
                row.update(cuda_memory_columns(prepared.call, device))  # the form that was timed
            return row
        finally:
            model.to("cpu")


# -- layers ---------------------------------------------------------------------------

#: Where ``measure_cell`` returns the per-layer rows of a ``layers`` cell.
LAYER_ROWS = "layers"
#: Per-layer medians in a run: at least this many hooked forwards (``profile_layers`` takes
#: more, up to its default, while within the budget below).
RUN_LAYER_MIN_SAMPLES = 5


def layers_budget_s(record: dict[str, Any]) -> float | None:
    """Sampling time for a cell's per-layer profile in a run: what its latency measurement
    spent sampling (calls x median), so that ``layers`` adds at most about as much again;
    None (the profiler's default) when the cell's latency was not measured."""
    n, median_ms = record.get("latency_n"), record.get("latency_ms_median")
    if not n or not median_ms:
        return None
    return float(n) * float(median_ms) / 1e3


def measure_layers(model: nn.Module, cell: Cell, settings: RunSettings,
                   budget_s: float | None = None) -> dict[str, Any]:
    """Per-layer columns of one cell, its rows under ``LAYER_ROWS``; a form that does not keep
    the modules (exported, traced, compiled) gets ``layers_note`` instead of rows."""
    from archbench.profilers.layers import DEFAULT_MAX_SECONDS, LAYER_FORMS, profile_layers

    if cell.form not in LAYER_FORMS:
        return {"layers_sum_ms": None, "layers_note": f"per-layer timing needs the modules: {', '.join(LAYER_FORMS)}",
                LAYER_ROWS: []}
    frame = profile_layers(model, cell.resolution, batch_size=settings.batch_size, device=settings.device,
                           threads=settings.threads, form=cell.form, input=settings.input, calibrate=False,
                           max_seconds=DEFAULT_MAX_SECONDS if budget_s is None else budget_s,
                           min_samples=RUN_LAYER_MIN_SAMPLES)
    attrs = frame.attrs
    return {
        "layers_forward_ms": attrs["forward_ms"],
        "layers_sum_ms": attrs["layers_sum_ms"],
        "layers_reconciliation": attrs["reconciliation"],
        "layers_samples": attrs["samples"],
        "layers_other_load": attrs["other_load"],
        "layers_probe_ms": attrs["probe_ms"],
        "bytes_moved": int(frame["bytes_moved"].sum()),
        LAYER_ROWS: [{"variant": cell.variant, "resolution": cell.resolution, "form": cell.form, **row}
                     for row in frame.to_dict("records")],
    }


def measure_cell(model: nn.Module, cell: Cell, settings: RunSettings, phase: Phase,
                 budget_s: float | None = None) -> dict[str, Any]:
    """Measure one cell in one phase; the columns it produced (``budget_s``: the sampling
    time of a ``layers`` cell, see ``layers_budget_s``).

    Raises whatever the measurement raised (``CELL_ERRORS`` are the cell's own failures).
    """
    if phase == "static":
        return measure_static(model, cell.resolution, settings)
    if phase == "layers":
        return measure_layers(model, cell, settings, budget_s)
    return measure_form_latency(model, cell, settings)
