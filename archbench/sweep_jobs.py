"""The work of one sweep cell, wherever it runs: a local worker process or a Ray task.

A job is plain data (picklable, JSON-like): the run's settings, the text of the user's
extra spec files (so that a worker on another machine resolves the same variants and
spaces), one variant, one resolution and, for a timed job, one form. Each job runs the
same pipeline as ``archbench run``: a ``Runner`` over that one cell, which measures
through ``archbench.cells.measure_cell`` and records failures per cell. A job returns
the cell's records (one per form for a static job), plus where and when it ran: the
host, the pid, start and end times (``time.time()``) and, for timed jobs, the host's
environment. Every record carries ``host``.

* ``static_job``: params, MACs and memory, counted on the meta device (the model is
  built there, nothing is computed: the same numbers as on the CPU, ``cells.measure_static``),
  in one thread. A model that cannot be built on meta is built on the CPU instead; one
  that cannot be built at all is a failed record.
* ``timed_job``: the latency (and per-layer) phases of one cell in ``threads`` threads,
  set inside the job; the model is built, seeded and calibrated as in ``archbench run``.

Importing this module does not import torch; running a job does.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import replace
from typing import Any

from archbench.metrics import phase_metrics

HOST = socket.gethostname()
#: What a static record's model state says: nothing was computed, so no weights matter.
META_STATE = "meta device: counted, not run"


class JobLost(Exception):
    """A job that returned nothing because the process or machine running it went away
    (a killed worker, a dead node); its message is the cell's one-line failure reason."""


@functools.cache
def worker_registry(specs: tuple[tuple[str, str], ...]) -> Any:
    """The registry of a sweep's process: built-in specs, the given spec texts
    ((source, TOML text) pairs, as ``archbench --specs`` read them) and plugins."""
    from archbench.registry import build_registry, default_registry
    from archbench.specs import builtin_spec_dir, load_spec_files, parse_spec_text

    if not specs:
        return default_registry()
    extra = [parse_spec_text(text, source) for source, text in specs]
    return build_registry([*load_spec_files(builtin_spec_dir().glob("*.toml")), *extra])


def _settings(job: dict[str, Any], metrics: tuple[str, ...], forms: tuple[str, ...] | None = None) -> Any:
    from archbench.settings import RunSettings

    settings = RunSettings.from_json(job["settings"])
    return replace(settings, variants=(job["variant"],), resolutions=(job["resolution"],), metrics=metrics,
                   forms=forms or settings.forms, baseline=None, repeats=1, counters=settings.counters)


def _meta_model(name: str, registry: Any) -> Any | None:
    """``name`` built on the meta device, or None if its builder cannot build there."""
    from archbench.cells import CELL_ERRORS
    from archbench.factory import create_meta_model

    try:
        return create_meta_model(name, registry=registry)
    except CELL_ERRORS:
        return None


def _failed_records(job: dict[str, Any], settings: Any, reason: str) -> list[dict[str, Any]]:
    return [{"variant": job["variant"], "resolution": job["resolution"], "batch_size": settings.batch_size,
             "device": settings.device, "form": form, "status": "failed", "reason": reason,
             "input": settings.input, "model_state": "", "host": HOST} for form in settings.forms]


def static_job(job: dict[str, Any]) -> dict[str, Any]:
    """The static records of one variant x resolution (one per form of the run)."""
    from archbench.cells import CELL_ERRORS, failure_reason
    from archbench.runner import Runner

    start = time.time()
    registry = worker_registry(tuple(map(tuple, job.get("specs", ()))))
    full = _settings(job, tuple(job["settings"]["metrics"]))
    settings = replace(_settings(job, phase_metrics(full.metrics, "static")), threads=1)
    name = job["variant"]
    meta = None if settings.counters or settings.device != "cpu" else _meta_model(name, registry)
    runner = Runner(settings, None, registry=registry, memory_probe=lambda: None,
                    models={name: meta} if meta is not None else {})
    try:
        records = runner.run().records
    except CELL_ERRORS as exc:  # a resolution this variant cannot take (the runner's preflight)
        records = _failed_records(job, settings, failure_reason(exc))
    for record in records:
        record["host"] = HOST
        if meta is not None and record["status"] == "ok":
            record["model_state"] = META_STATE
    return {"records": records, "host": HOST, "pid": os.getpid(), "start": start, "end": time.time()}


def timed_job(job: dict[str, Any]) -> dict[str, Any]:
    """The latency (and per-layer) columns of one cell, measured here in the run's threads."""
    from archbench.cells import CELL_ERRORS, failure_reason
    from archbench.environment import environment
    from archbench.runner import Runner

    start = time.time()
    registry = worker_registry(tuple(map(tuple, job.get("specs", ()))))
    full = _settings(job, tuple(job["settings"]["metrics"]))
    timed = tuple(m for m in full.metrics if m not in phase_metrics(full.metrics, "static"))
    settings = _settings(job, timed, forms=(job["form"],))
    runner = Runner(settings, None, registry=registry)
    layers: list[dict[str, Any]] = []
    try:
        result = runner.run()
        records, layers = result.records, result.layers
        env = result.environment
    except CELL_ERRORS as exc:
        records, env = _failed_records(job, settings, failure_reason(exc)), environment(settings.threads)
    for record in records:
        record["host"] = HOST
    return {"records": records, "layers": layers, "host": HOST, "pid": os.getpid(), "start": start,
            "end": time.time(), "environment": env}


def init_worker() -> None:
    """A local worker process: Ctrl-C is the parent's to handle (it terminates its workers)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
