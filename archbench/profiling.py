"""``archbench.profile``: one table of measurements for variants x resolutions.

Data flows one way: a name goes through the registry to a built model; each
profiler (params, compute, memory, latency) measures it and returns plain
data; this module turns those into tidy rows, one per variant x resolution x
batch size x device, with units in the column names. It formats nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from archbench.environment import environment
from archbench.errors import ArchbenchError
from archbench.factory import create_model
from archbench.forms import PreparedForm, check_forms, prepare_form, unavailable_reason
from archbench.profilers.compute import (
    CATEGORIES,
    FVCORE_CONVENTION,
    THOP_CONVENTION,
    count_compute,
    fvcore_count,
    thop_count,
)
from archbench.profilers.latency import (
    LatencyConfig,
    LatencyResult,
    cpu_threads,
    cpu_timer,
    cuda_timer,
    measure_latency,
    quantile,
)
from archbench.profilers.memory import LiveStorageTracker, activation_tracker, profile_memory
from archbench.profilers.params import count_params, model_parts

METRICS: tuple[str, ...] = ("params", "macs", "memory", "latency")
DEFAULT_METRICS: tuple[str, ...] = ("params", "macs", "memory")
COUNTERS: tuple[str, ...] = ("fvcore", "thop")
DEFAULT_RESOLUTIONS: tuple[int, ...] = (320, 416, 640)

CONVENTIONS = {
    "params": "weights + biases + norm affine; BatchNorm running stats are buffers; shared tensors once",
    "macs": "multiply-accumulates of conv and linear/matmul (bias excluded), counted at ATen dispatch",
    "flops": "exactly 2 x macs; other ops are in the *_elems columns, not in flops",
    "act_peak_bytes": "peak bytes of live activation storages in one no-grad forward (params, buffers, input excluded)",
    "latency_ms": "model-forward latency per call; median of per-call samples after warm-up",
}

COUNTER_CONVENTIONS = {"fvcore_total": FVCORE_CONVENTION, "thop_total": THOP_CONVENTION}

ModelLike = str | nn.Module


@dataclass(frozen=True)
class Subject:
    """A model to profile and the name its rows carry."""

    name: str
    model: nn.Module


def conventions_for(metrics: Sequence[str], counters: Sequence[str]) -> dict[str, str]:
    """What each reported column counts, for the metrics and counters asked for."""
    wanted = {"params": ("params",), "macs": ("macs", "flops"), "memory": ("act_peak_bytes",),
              "latency": ("latency_ms",)}
    chosen = {k: CONVENTIONS[k] for m in metrics for k in wanted[m]}
    chosen.update({f"{c}_total": COUNTER_CONVENTIONS[f"{c}_total"] for c in counters})
    return chosen


def _as_list(model_or_name: ModelLike | Sequence[ModelLike]) -> list[ModelLike]:
    return [model_or_name] if isinstance(model_or_name, str | nn.Module) else list(model_or_name)


def _subjects(model_or_name: ModelLike | Sequence[ModelLike]) -> list[Subject]:
    items = _as_list(model_or_name)
    if not items:
        raise ArchbenchError("nothing to profile: give a variant name or a module")
    subjects = []
    for item in items:
        if isinstance(item, str):
            subjects.append(Subject(item, create_model(item)))
        elif isinstance(item, nn.Module):
            subjects.append(Subject(type(item).__name__, item.eval()))
        else:
            raise ArchbenchError(f"cannot profile a {type(item).__name__}: give a variant name or an nn.Module")
    return subjects


def input_multiple(model: nn.Module) -> int:
    """The stride every input side must be a multiple of: the backbone's largest stride
    (upsampled maps must line up with lateral ones); 1 for models that declare none."""
    body = getattr(model, "backbone", model)
    strides = getattr(body, "strides", None)
    return max(strides) if strides else 1


def check_resolution(model: nn.Module, name: str, resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ArchbenchError(f"resolution must be a positive integer, got {resolution!r}")
    multiple = input_multiple(model)
    if resolution % multiple:
        raise ArchbenchError(
            f"{name} cannot take resolution {resolution}: it must be a multiple of the largest "
            f"backbone stride, {multiple} (nearest: {max(multiple, round(resolution / multiple) * multiple)})"
        )
    return resolution


def check_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ArchbenchError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ArchbenchError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ArchbenchError(f"--device {device} asked for, but CUDA is not available (torch {torch.__version__})")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ArchbenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def check_choices(values: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ArchbenchError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return tuple(values)


def sample_input(batch_size: int, resolution: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The input every profiler uses: seeded normal noise, (B, 3, R, R)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, resolution, resolution, generator=generator).to(device)


def static_columns(model: nn.Module, x: torch.Tensor, metrics: Sequence[str], counters: Sequence[str]) -> dict[str, Any]:
    """Params, MACs and memory of one model on one input, as columns."""
    row: dict[str, Any] = {}
    parts = list(model_parts(model))
    if "params" in metrics:
        count = count_params(model)
        row.update(params=count.total, trainable_params=count.trainable)
        row.update({f"params_{part}": n for part, n in count.by_part.items()})
    peak: int | None = None
    if "macs" in metrics:
        # One forward serves both the MAC counter and the activation tracker.
        tracker = activation_tracker(model, x) if "memory" in metrics else nullcontext()
        with tracker:
            compute = count_compute(model, x)
        peak = tracker.peak_bytes if isinstance(tracker, LiveStorageTracker) else None
        row.update(macs=compute.macs, flops=2 * compute.macs)
        row.update({f"{c}_elems": compute.elements(c) for c in CATEGORIES})
        by_part = compute.by_module("macs", depth=1)
        row.update({f"macs_{part}": by_part.get(part, 0) for part in parts})
        if compute.unclassified_ops:
            row["unclassified_ops"] = ",".join(sorted(compute.unclassified_ops))
    for counter in counters:
        check = fvcore_count(model, x) if counter == "fvcore" else thop_count(model, x)
        row[f"{counter}_total"] = check.total
        row[f"{counter}_conv_linear_macs"] = check.conv_linear_macs
        row[f"{counter}_unsupported"] = ",".join(f"{k}x{v}" for k, v in sorted(check.unsupported.items()))
    if "memory" in metrics:
        memory = profile_memory(model, x, act_peak_bytes=peak)
        row.update(asdict(memory))
    elif "params" in metrics:
        row["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return row


def latency_columns(result: LatencyResult, threads: int) -> dict[str, Any]:
    stats = result.stats
    return {
        "latency_ms_median": stats.median_ms,
        "latency_ms_iqr": stats.iqr_ms,
        "latency_ms_p90": stats.p90_ms,
        "latency_ms_min": stats.min_ms,
        "latency_n": stats.n,
        "latency_ms_cold": result.cold_ms,
        "latency_rel_ci": stats.rel_ci,
        "latency_wall_ms_median": result.wall_median_ms,
        "latency_other_load": result.other_load,
        "latency_attempts": result.attempts,
        "latency_noise": result.verdict,
        "threads": threads,
    }


def cuda_memory_columns(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Peak allocated/reserved CUDA memory of one forward, as deltas over the warm state."""
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    allocated, reserved = torch.cuda.memory_allocated(x.device), torch.cuda.memory_reserved(x.device)
    with torch.inference_mode():
        model(x)
    torch.cuda.synchronize(x.device)
    return {
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(x.device) - allocated,
        "cuda_max_reserved_bytes": torch.cuda.max_memory_reserved(x.device) - reserved,
    }


def device_memory_columns(model: nn.Module, resolution: int, batch_size: int, device: torch.device) -> dict[str, int]:
    """CUDA allocator peaks of one forward after a warm-up forward; the model goes back to the CPU."""
    model.to(device)
    try:
        x = sample_input(batch_size, resolution, device)
        with torch.inference_mode():
            model(x)  # warm-up: cuDNN workspaces and allocator pools settle
        return cuda_memory_columns(model, x)
    finally:
        model.to("cpu")


def latency_order(names: Sequence[str], resolutions: Sequence[int], rotation: int = 0) -> list[tuple[str, int]]:
    """Interleaved measuring order: resolution by resolution, all variants each time,
    rotated by ``rotation`` so that no variant always goes first (drift hits all alike)."""
    shift = rotation % len(names) if names else 0
    rotated = [*names[shift:], *names[:shift]]
    return [(name, r) for r in resolutions for name in rotated]


def _cells(subjects: Sequence[Subject], resolutions: Sequence[int]) -> Iterator[tuple[Subject, int]]:
    for subject in subjects:
        for resolution in resolutions:
            yield subject, resolution


def failure_reason(exc: BaseException) -> str:
    """One line: what went wrong, with out-of-memory called by its name."""
    if isinstance(exc, ArchbenchError):
        return str(exc)
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return f"out of memory: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def form_columns(prepared: PreparedForm) -> dict[str, Any]:
    return {
        "form_prepare_s": prepared.prepare_s,
        "form_max_rel_err": prepared.max_rel_err,
        "form_tolerance": prepared.tolerance,
        "form_note": prepared.note,
    }


def latency_cell(
    model: nn.Module, resolution: int, batch_size: int, device: torch.device, config: LatencyConfig,
    threads: int, form: str = "eager",
) -> dict[str, Any]:
    """Latency columns of one cell in one deployment form.

    The form is made and checked against eager outputs first (``FormError`` if it
    cannot be made or diverges; it is then never timed). The model is moved to
    ``device`` and back.
    """
    model.to(device)
    try:
        x = sample_input(batch_size, resolution, device)
        prepared = prepare_form(form, model, x, threads=threads)
        timer = cuda_timer() if device.type == "cuda" else cpu_timer
        with torch.inference_mode():
            result = measure_latency(prepared.call, config, timer=timer)
        row = {**latency_columns(result, threads), **form_columns(prepared)}
        if device.type == "cuda":
            row.update(cuda_memory_columns(model, x))
        return row
    finally:
        model.to("cpu")


def aggregate_repeats(per_process: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell's headline from its per-process measurements.

    The latency is the median of the per-process medians, with their spread
    (max - min) beside it: variance between processes is what a reader of the
    number will meet, and it is larger than the variance within one.
    """
    medians = sorted(r["latency_ms_median"] for r in per_process)
    flags = sorted({f for r in per_process for f in r["latency_noise"].split("+") if f != "ok"})
    return {
        "latency_ms_median": quantile(medians, 0.5),
        "latency_ms_spread": medians[-1] - medians[0],
        "latency_ms_iqr": quantile(sorted(r["latency_ms_iqr"] for r in per_process), 0.5),
        "latency_ms_p90": quantile(sorted(r["latency_ms_p90"] for r in per_process), 0.5),
        "latency_ms_min": min(r["latency_ms_min"] for r in per_process),
        "latency_n": sum(r["latency_n"] for r in per_process),
        "latency_ms_cold": quantile(sorted(r["latency_ms_cold"] for r in per_process), 0.5),
        "latency_rel_ci": max(r["latency_rel_ci"] for r in per_process),
        "latency_wall_ms_median": quantile(sorted(r["latency_wall_ms_median"] for r in per_process), 0.5),
        "latency_other_load": max(r["latency_other_load"] for r in per_process),
        "latency_attempts": sum(r["latency_attempts"] for r in per_process),
        "latency_noise": "+".join(flags) or "ok",
        "latency_repeats": len(per_process),
        "threads": per_process[0]["threads"],
    }


def run_worker(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One repeat in a fresh interpreter (``python -m archbench.worker``)."""
    done = subprocess.run(
        [sys.executable, "-m", "archbench.worker"], input=json.dumps(job), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArchbenchError(f"latency worker process failed: {last}")
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def latency_in_processes(
    names: Sequence[str], resolutions: Sequence[int], batch_size: int, device: torch.device,
    config: LatencyConfig, threads: int, repeats: int, forms: Sequence[str] = ("eager",),
) -> list[dict[str, Any]]:
    """Per-process latency rows: ``repeats`` fresh processes, each measuring every cell
    in the interleaved order, rotated by its index."""
    rows = []
    for index in range(repeats):
        job = {"variants": list(names), "resolutions": list(resolutions), "batch_size": batch_size,
               "device": str(device), "threads": threads, "config": asdict(config), "rotation": index,
               "forms": list(forms)}
        rows += [{**row, "process": index} for row in run_worker(job)]
    return rows


def profile(
    model_or_name: ModelLike | Sequence[ModelLike],
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    batch_size: int = 1,
    device: str = "cpu",
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    counters: Sequence[str] = (),
    threads: int = 1,
    repeats: int = 1,
    latency: LatencyConfig | None = None,
    forms: Sequence[str] = ("eager",),
) -> pd.DataFrame:
    """Profile registered variants or modules; one row per model x resolution x form.

    Args:
        model_or_name: A registered name, any module taking a (B, 3, H, W) input, or a list of them.
        metrics: Any of ``params``, ``macs``, ``memory``, ``latency``.
        counters: Cross-check counters to run as well: ``fvcore``, ``thop``.
        threads: CPU intra-op (and inter-op) threads, restored afterwards.
        repeats: Latency repeats, each in a fresh process (registered names only);
            1 measures in this process.
        latency: Settings of the latency measurement.
        forms: Deployment forms to time (``archbench.forms.FORMS``: eager, fused,
            channels_last, torchscript, onnxruntime, compile, fp16, bf16); each is
            checked against eager outputs first. Rows are per model x resolution x form.

    Returns:
        A DataFrame whose columns carry their units (``params``, ``macs``,
        ``flops`` = 2 x ``macs``, ``act_peak_bytes``, ``latency_ms_median``, ...);
        ``df.attrs`` holds the environment, the counting conventions and, with
        repeats, the per-process latency rows (``latency_processes``).
    """
    metrics = check_choices(list(metrics), METRICS, "metric")
    counters = check_choices(list(counters), COUNTERS, "counter")
    for label, value in (("batch size", batch_size), ("threads", threads), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArchbenchError(f"{label} must be an integer of at least 1, got {value!r}")
    forms = check_forms(forms)
    target = check_device(device)
    if "latency" in metrics:
        for form in forms:
            if (why := unavailable_reason(form, target)) is not None:
                raise ArchbenchError(f"form {form} cannot run on {target}: {why}")
    if repeats > 1 and not all(isinstance(m, str) for m in _as_list(model_or_name)):
        raise ArchbenchError("repeats > 1 measures in fresh processes, which need registered variant names")
    subjects = _subjects(model_or_name)
    for subject in subjects:
        for resolution in resolutions:
            check_resolution(subject.model, subject.name, resolution)

    static: dict[tuple[str, int], dict[str, Any]] = {}
    processes: list[dict[str, Any]] = []
    with cpu_threads(threads):
        for subject, resolution in _cells(subjects, resolutions):
            x = sample_input(batch_size, resolution)
            static[(subject.name, resolution)] = {
                "variant": subject.name, "resolution": resolution, "batch_size": batch_size, "device": str(target),
                **static_columns(subject.model, x, metrics, counters),
            }
            if target.type == "cuda" and "memory" in metrics:
                static[(subject.name, resolution)].update(
                    device_memory_columns(subject.model, resolution, batch_size, target))
        rows = {(*key, form): {**row, "form": form} for key, row in static.items() for form in forms}
        if "latency" in metrics:
            config = latency or LatencyConfig()
            names = [s.name for s in subjects]
            if repeats == 1:
                by_name = {s.name: s.model for s in subjects}
                for name, resolution in latency_order(names, resolutions):
                    for form in forms:
                        rows[(name, resolution, form)].update(
                            latency_cell(by_name[name], resolution, batch_size, target, config, threads, form))
            else:
                processes = latency_in_processes(names, resolutions, batch_size, target, config, threads, repeats, forms)
                errors = [p for p in processes if "error" in p]
                if errors:
                    raise ArchbenchError(f"{errors[0]['variant']} @ {errors[0]['resolution']}: {errors[0]['error']}")
                for key, row in rows.items():
                    row.update(aggregate_repeats(
                        [p for p in processes if (p["variant"], p["resolution"], p["form"]) == key]))
    frame = pd.DataFrame(list(rows.values()))
    frame.attrs["environment"] = environment(threads)
    frame.attrs["conventions"] = conventions_for(metrics, counters)
    if processes:
        frame.attrs["latency_processes"] = processes
    return frame
