"""``archbench sweep``: a run over points sampled from a search space, on a backend.

A sweep is an ``archbench run`` whose variants are ``--samples N`` points of a space
drawn with ``--seed S`` (``archbench.spaces``) plus the registered variants that lie
in it; its results.json has the same schema, and ``archbench report`` and
``archbench compare`` read it as any other. The space's annotations go into
``variants`` (``space``, ``point``: the sample name of the point, ``registered``:
whether it is a registered variant) and the sweep's own settings into
``environment["sweep"]``; every record says on which ``host`` it was measured, and
``environment["hosts"]`` describes each host that timed cells.

Two phases, each cell a job of ``archbench.sweep_jobs`` (the same ``Runner`` and
``measure_cell`` as ``archbench run``):

1. static cells (params, MACs, memory, counted on the meta device), all submitted at
   once to the backend's workers, saved as each one finishes (in any order);
2. timed cells (latency, per-layer), in the run's interleaved order, never two at a
   time on one machine: the local backend runs them one after another; the Ray backend
   gives each node one ``archbench_timer`` resource, which every timed task takes.

results.json is written atomically after every cell, so an interruption (Ctrl-C,
SIGTERM) loses only the cells in flight, whose workers are terminated; ``--resume``
measures only what is missing. A worker that dies fails the cells it had with the
reason, and the sweep goes on.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from archbench.cells import Cell
from archbench.errors import ArchbenchError
from archbench.metrics import is_done, phase_metrics
from archbench.registry import Registry
from archbench.results import KEY_COLUMNS, RunResult
from archbench.runner import Runner
from archbench.spaces import members, sample_names, split_sample_name
from archbench.sweep_jobs import init_worker, static_job, timed_job

BACKENDS = ("local", "ray")

Job = dict[str, Any]
Outcome = dict[str, Any]


def sweep_variants(registry: Registry, space: str, samples: int, seed: int, *, registered: bool = True) -> list[str]:
    """The variants of a sweep: the registered variants in the space (unless
    ``registered`` is false), then ``samples`` points drawn with ``seed``."""
    found = registry.space(space)
    chosen = [m.variant for m in members(found, registry)] if registered else []
    return list(dict.fromkeys([*chosen, *sample_names(found, samples, seed)]))


def annotate_variants(result: RunResult, registry: Registry, space: str) -> None:
    """Mark each variant of ``result`` with its space, its point and whether it is registered."""
    found = registry.space(space)
    points = {m.variant: m.name for m in members(found, registry)}
    for name, info in result.variants.items():
        parts = split_sample_name(name)
        sample = parts is not None and parts[0] == space
        info.update(space=space, point=name if sample else points.get(name), registered=not sample)


class Backend(Protocol):
    """Where a sweep's jobs run. Outcomes are the jobs' return values, or the exception
    that kept a job from returning (a dead worker or node)."""

    name: str

    def static(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Outcome | BaseException]]:
        """Run all ``jobs`` in parallel; yield each as it finishes."""

    def timed(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Outcome | BaseException]]:
        """Run ``jobs`` never two at a time on one machine; yield each as it finishes."""

    def close(self) -> None:
        """Stop every worker (also the ones still running, on an interruption)."""


class LocalBackend:
    """Worker processes on this machine (``spawn``: fresh interpreters, torch imported
    once per worker and reused); static jobs over all of them, timed jobs one at a time."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker)
        return self._pool

    def _discard(self) -> None:
        """Terminate the pool's processes (a broken pool, or an interruption)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        for process in processes:
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()

    def static(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Outcome | BaseException]]:
        """All jobs over the pool. A worker that dies takes every job in flight down with the
        pool, and which one killed it is unknown: those jobs are tried again one at a time, in
        a fresh pool, so only a job that kills its worker alone is failed."""
        suspects: list[Job] = []
        running: dict[Future[Outcome], Job] = {self._executor().submit(static_job, job): job for job in jobs}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                job = running.pop(future)
                try:
                    yield job, future.result()
                except BrokenProcessPool:
                    broken = True
                    suspects.append(job)
            if broken:
                suspects += running.values()
                running.clear()
                self._discard()
        yield from self._one_at_a_time(static_job, suspects)

    def timed(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Outcome | BaseException]]:
        yield from self._one_at_a_time(timed_job, jobs)

    def _one_at_a_time(self, work: Callable[[Job], Outcome],
                       jobs: Sequence[Job]) -> Iterator[tuple[Job, Outcome | BaseException]]:
        """Each job alone in the pool; a job whose worker dies fails, and the next gets a fresh pool."""
        for job in jobs:
            try:
                yield job, self._executor().submit(work, job).result()
            except BrokenProcessPool as exc:
                self._discard()
                yield job, exc

    def close(self) -> None:
        self._discard()


def failure_of(exc: BaseException) -> str:
    """Why a job returned nothing, in one line."""
    if isinstance(exc, BrokenProcessPool):
        return "the worker process died while measuring this cell (killed, or out of memory)"
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class SweepRunner(Runner):
    """The ``Runner`` of a sweep: the same results, records and saving, with the cells
    measured by ``backend`` (see the module docstring). ``specs``: the (source, text)
    of the user's extra spec files, sent with every job."""

    backend: Backend | None = None
    specs: tuple[tuple[str, str], ...] = ()
    space: str = ""
    sweep_info: dict[str, Any] = field(default_factory=dict)

    def _job(self, variant: str, resolution: int, form: str | None = None) -> Job:
        job: Job = {"settings": self.settings.to_json(), "specs": [list(s) for s in self.specs],
                    "variant": variant, "resolution": resolution}
        if form is not None:
            job["form"] = form
        return job

    def preflight(self) -> None:
        """Nothing to build here: each job checks its own cell (a point that cannot be built,
        or cannot take a resolution, is a failed cell, not bad input)."""

    def _static_phase(self, result: RunResult) -> None:
        assert self.backend is not None
        jobs = []
        for name, resolution in self._static_cells():
            if all(result.record(name, resolution, f) is not None for f in self.settings.forms):
                self.progress.advance()
            else:
                jobs.append(self._job(name, resolution))
        self.progress.step(f"params, MACs, memory: {len(jobs)} cells on {self.backend.name} workers")
        for job, outcome in self.backend.static(jobs):
            records = (outcome["records"] if isinstance(outcome, dict)
                       else self._failed(job, failure_of(outcome), self.settings.forms))
            for record in records:
                if result.record(record["variant"], record["resolution"], record["form"]) is None:
                    result.records.append(record)
            self.progress.advance()
            self._save(result)

    def _failed(self, job: Job, reason: str, forms: Sequence[str]) -> list[dict[str, Any]]:
        records = []
        for form in forms:
            record = self._new_record(Cell(job["variant"], job["resolution"], form))
            self._mark(record, "failed", reason)
            records.append(record)
        return records

    def _timed_phase(self, result: RunResult) -> None:
        assert self.backend is not None
        s = self.settings
        jobs = []
        for cell in self.latency_cells():
            record = result.record(cell.variant, cell.resolution, cell.form)
            if record is None or is_done(record, s.metrics):
                self._advance_timed()
            else:
                jobs.append(self._job(cell.variant, cell.resolution, cell.form))
        for job, outcome in self.backend.timed(jobs):
            self.progress.step(f"{job['variant']} @ {job['resolution']}: timed, {job['form']}")
            record = result.record(job["variant"], job["resolution"], job["form"])
            assert record is not None
            if isinstance(outcome, dict):
                measured = outcome["records"][0]
                record.update({k: v for k, v in measured.items() if k not in KEY_COLUMNS})
                result.layers.extend(outcome.get("layers", []))
                hosts = result.environment.setdefault("hosts", {})
                hosts.setdefault(outcome["host"], outcome["environment"])
            else:
                self._mark(record, "failed", failure_of(outcome))
            self._advance_timed()
            self._save(result)

    @property
    def _timed_phases(self) -> int:
        """How many timed phases (latency, per-layer) each timed cell stands for in the progress."""
        return len([m for m in self.settings.metrics if m not in phase_metrics(self.settings.metrics, "static")])

    def _advance_timed(self) -> None:
        for _ in range(self._timed_phases):
            self.progress.advance()

    def run(self, previous: RunResult | None = None) -> RunResult:
        """Measure every missing cell through the backend; saved after every cell and on the way out."""
        result = previous or self._new_result()
        if previous is None:
            annotate_variants(result, self.registry, self.space)
            result.environment["sweep"] = dict(self.sweep_info)
        result.complete = False
        self.result = result
        s = self.settings
        cells = len(s.variants) * len(s.resolutions)
        timed = self._timed_phases
        self.progress.start(cells + cells * len(s.forms) * timed)
        try:
            self._static_phase(result)
            if timed:
                self._timed_phase(result)
            result.complete = True
        finally:
            self.progress.stop()
            self._save(result)
        return result


def make_backend(name: str, workers: int, address: str | None = None, on: str | None = None,
                 threads: int = 1) -> Backend:
    """The backend called ``name`` (``ray`` needs ``pip install 'archbench[ray]'``)."""
    if name == "local":
        if address is not None or on is not None:
            raise ArchbenchError("--address and --on need --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        from archbench.ray_backend import RayBackend

        return RayBackend(workers=workers, address=address, on=on, threads=threads)
    raise ArchbenchError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def spec_texts(paths: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """(source, text) of the user's extra spec files, for the workers."""
    texts = []
    for path in paths:
        try:
            texts.append((str(path), path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ArchbenchError(f"{path}: cannot read spec file: {exc.strerror}") from None
    return tuple(texts)
