"""``archbench sweep``: a run over points sampled from a search space, on a backend.

A sweep is an ``archbench run`` whose variants are ``--samples N`` points of a space
drawn with ``--seed S`` (``archbench.spaces``) plus the registered variants that lie
in it; its results.json has the same schema, and ``archbench report`` and
``archbench compare`` read it as any other. The space's annotations go into
``variants`` (``space``, ``point``: the sample name of the point, ``registered``:
whether it is a registered variant) and the sweep's own settings into
``environment["sweep"]``; every record says on which ``host`` it was measured, and
``environment["hosts"]`` describes each host that timed cells. Once cells are timed,
the top-level environment describes the timing hosts (``timing_environment``), not
the machine that drove the sweep: that is what ``archbench compare`` checks.

Two phases, each cell a job of ``archbench.sweep_jobs`` (the same ``Runner`` and
``measure_cell`` as ``archbench run``):

1. static cells (params, MACs, memory, counted on the meta device), all submitted at
   once to the backend's workers, saved as each one finishes (in any order);
2. timed cells (latency, per-layer), in the run's interleaved order, never two at a
   time on one machine: the local backend runs them one after another; the Ray backend
   gives each node one ``archbench_timer`` resource, which every timed task takes.

On Ray, a sweep may be timed under node labels (``--on A,B``: custom resources that
only the nodes of one kind declare): one run per label (``SweepRunner``, its records
marked ``node_label``), measured together by a ``SweepGroup``: the static cells once,
copied into every run; the timed cells of all labels submitted at once, so the kinds
of node time at the same time.

results.json is written atomically after every cell, so an interruption (Ctrl-C,
SIGTERM) loses only the cells in flight, whose workers are terminated; ``--resume``
measures only what is missing. A worker or node that dies fails the cells it had with
the reason, and the sweep goes on.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import product, zip_longest
from pathlib import Path
from typing import Any, Protocol

from archbench.cells import Cell
from archbench.errors import ArchbenchError
from archbench.metrics import is_done, phase_metrics
from archbench.registry import Registry, parse_list
from archbench.results import KEY_COLUMNS, RunResult
from archbench.runner import NoProgress, Progress, Runner
from archbench.spaces import members, sample_names, split_sample_name
from archbench.sweep_jobs import JobLost, init_worker, static_job, timed_job

BACKENDS = ("local", "ray")
#: The record column naming the node label (``--on``) a run's cells were timed under.
NODE_LABEL = "node_label"

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
    if isinstance(exc, JobLost):
        return str(exc)
    if isinstance(exc, BrokenProcessPool):
        return "the worker process died while measuring this cell (killed, or out of memory)"
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def node_labels(on: str | Sequence[str] | None) -> tuple[str, ...]:
    """The node labels of ``--on`` (``"A"``, ``"A,B"``, or the list a sweep recorded), each once, in order."""
    items = parse_list(on) if isinstance(on, str) else list(on or ())
    return tuple(dict.fromkeys(items))


def timing_environment(hosts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One environment for the hosts that timed a run's cells: the first host's, with each text
    field the hosts disagree on listing every value (``"CPU A | CPU B"``), so that
    ``archbench compare`` sees a difference wherever one of the hosts differs."""
    envs = list(hosts.values())
    merged = dict(envs[0]) if envs else {}
    for key, value in merged.items():
        if not isinstance(value, str):
            continue
        values = list(dict.fromkeys(str(env.get(key)) for env in envs))
        if len(values) > 1:
            merged[key] = " | ".join(values)
    return merged


@dataclass
class SweepRunner(Runner):
    """The ``Runner`` of a sweep: the same results, records and saving, with the cells
    measured by ``backend`` (see the module docstring). ``specs``: the (source, text)
    of the user's extra spec files, sent with every job. ``sweep_info["on"]``, when
    given, is the node label this run's cells are timed under (``--on``): each timed
    job asks for it, and each record says it in ``node_label``."""

    backend: Backend | None = None
    specs: tuple[tuple[str, str], ...] = ()
    space: str = ""
    sweep_info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The node label this run is timed under (``sweep_info["on"]``), or None: any timing node."""
        on = self.sweep_info.get("on")
        return on if isinstance(on, str) else None

    def make_job(self, variant: str, resolution: int, form: str | None = None) -> Job:
        """A static job (no ``form``) or a timed one, for the worker that will run it."""
        job: Job = {"settings": self.settings.to_json(), "specs": [list(s) for s in self.specs],
                    "variant": variant, "resolution": resolution}
        if form is not None:
            job["form"] = form
            if self.label is not None:
                job["on"] = self.label
        return job

    def preflight(self) -> None:
        """Nothing to build here: each job checks its own cell (a point that cannot be built,
        or cannot take a resolution, is a failed cell, not bad input)."""

    # -- the parts of a sweep that SweepGroup drives ---------------------------------------
    def begin(self, previous: RunResult | None) -> RunResult:
        """The run to measure into: ``previous``, or a new one annotated with the space and
        the sweep's settings; marked incomplete and saved."""
        result = previous or self._new_result()
        if previous is None:
            annotate_variants(result, self.registry, self.space)
            result.environment["sweep"] = dict(self.sweep_info)
        result.complete = False
        self.result = result
        self._save(result)
        return result

    def _current(self) -> RunResult:
        """The run being measured (``begin`` made it)."""
        assert self.result is not None, "begin() first"
        return self.result

    def lacks_static(self, variant: str, resolution: int) -> bool:
        """Whether some form of this cell has no record yet."""
        result = self._current()
        return any(result.record(variant, resolution, form) is None for form in self.settings.forms)

    def static_records(self, job: Job, outcome: Outcome | BaseException) -> list[dict[str, Any]]:
        """The records a static job gave, or its cell's failed records."""
        if isinstance(outcome, dict):
            return list(outcome["records"])
        return self._failed(job, failure_of(outcome), self.settings.forms)

    def add_static(self, records: Sequence[dict[str, Any]]) -> None:
        """Copies of the ``records`` this run lacks (with its ``node_label``); saved."""
        result = self._current()
        for record in records:
            if result.record(record["variant"], record["resolution"], record["form"]) is None:
                copy = dict(record)
                if self.label is not None:
                    copy[NODE_LABEL] = self.label
                result.records.append(copy)
        self._save(result)

    def _failed(self, job: Job, reason: str, forms: Sequence[str]) -> list[dict[str, Any]]:
        records = []
        for form in forms:
            record = self._new_record(Cell(job["variant"], job["resolution"], form))
            self._mark(record, "failed", reason)
            records.append(record)
        return records

    def timed_jobs(self) -> list[Job]:
        """A job for each timed cell still to measure, in the run's interleaved order."""
        result = self._current()
        jobs = []
        for cell in self.latency_cells():
            record = result.record(cell.variant, cell.resolution, cell.form)
            if record is not None and not is_done(record, self.settings.metrics):
                jobs.append(self.make_job(cell.variant, cell.resolution, cell.form))
        return jobs

    def take_timed(self, job: Job, outcome: Outcome | BaseException) -> None:
        """A timed job's columns (or its failure) into its record, its host into the
        environment; saved."""
        result = self._current()
        record = result.record(job["variant"], job["resolution"], job["form"])
        assert record is not None
        if isinstance(outcome, dict):
            measured = outcome["records"][0]
            record.update({k: v for k, v in measured.items() if k not in KEY_COLUMNS})
            result.layers.extend(outcome.get("layers", []))
            hosts = result.environment.setdefault("hosts", {})
            hosts.setdefault(outcome["host"], outcome["environment"])
            result.environment.update(timing_environment(hosts))
        else:
            self._mark(record, "failed", failure_of(outcome))
        self._save(result)

    @property
    def timed_phases(self) -> int:
        """How many timed phases (latency, per-layer) each timed cell stands for in the progress."""
        return len([m for m in self.settings.metrics if m not in phase_metrics(self.settings.metrics, "static")])

    def finish(self) -> None:
        """Mark the run complete."""
        self._current().complete = True

    def save(self) -> None:
        self._save(self._current())

    def run(self, previous: RunResult | None = None) -> RunResult:
        """Measure every missing cell through the backend; saved after every cell and on the way out."""
        assert self.backend is not None
        return SweepGroup([self], self.backend, self.progress).run([previous])[0]


@dataclass
class SweepGroup:
    """Sweeps of the same settings, one per node label (``--on A,B``), measured together
    through one backend: each static cell once, its records copied into every run; then
    the timed cells of every run submitted at once, so that nodes of each label time
    theirs at the same time (still one cell at a time per node), each outcome going to
    the run of its job's label. Each run is saved after each of its cells and on the way
    out. One ``SweepRunner`` is a group of one."""

    runners: Sequence[SweepRunner]
    backend: Backend
    progress: Progress = field(default_factory=NoProgress)

    def __post_init__(self) -> None:
        labels = [runner.label for runner in self.runners]
        if not self.runners or len(set(labels)) != len(labels):
            raise ArchbenchError(f"a sweep group needs runs of distinct node labels, got {labels}")
        self._by_label = dict(zip(labels, self.runners, strict=True))

    def run(self, previous: Sequence[RunResult | None]) -> list[RunResult]:
        results = [runner.begin(p) for runner, p in zip(self.runners, previous, strict=True)]
        first = self.runners[0]
        cells = len(first.settings.variants) * len(first.settings.resolutions)
        timed = first.timed_phases * len(first.settings.forms) * cells
        self.progress.start(cells + timed * len(self.runners))
        try:
            self._static_phase()
            if first.timed_phases:
                self._timed_phase()
            for runner in self.runners:
                runner.finish()
        finally:
            self.progress.stop()
            for runner in self.runners:
                runner.save()
        return results

    def _static_phase(self) -> None:
        first = self.runners[0]
        jobs = []
        for name, resolution in product(first.settings.variants, first.settings.resolutions):
            if any(runner.lacks_static(name, resolution) for runner in self.runners):
                jobs.append(first.make_job(name, resolution))
            else:
                self.progress.advance()
        self.progress.step(f"params, MACs, memory: {len(jobs)} cells on {self.backend.name} workers")
        for job, outcome in self.backend.static(jobs):
            records = first.static_records(job, outcome)
            for runner in self.runners:
                runner.add_static(records)
            self.progress.advance()

    def _timed_phase(self) -> None:
        queues = []
        for runner in self.runners:
            jobs = runner.timed_jobs()
            self._advance(runner, len(runner.latency_cells()) - len(jobs))
            queues.append(jobs)
        jobs = [job for round_ in zip_longest(*queues) for job in round_ if job is not None]
        for job, outcome in self.backend.timed(jobs):
            label = job.get("on")
            self.progress.step(f"{job['variant']} @ {job['resolution']}: timed, {job['form']}"
                               + (f", on {label}" if label else ""))
            runner = self._by_label[label]
            runner.take_timed(job, outcome)
            self._advance(runner, 1)

    def _advance(self, runner: SweepRunner, cells: int) -> None:
        for _ in range(cells * runner.timed_phases):
            self.progress.advance()


def make_backend(name: str, workers: int, address: str | None = None, on: str | Sequence[str] | None = None,
                 threads: int = 1) -> Backend:
    """The backend called ``name`` (``ray`` needs ``pip install 'archbench[ray]'``); ``on``: the
    node labels timed jobs may ask for (``node_labels``), each checked to be declared."""
    labels = node_labels(on)
    if name == "local":
        if address is not None or labels:
            raise ArchbenchError("--address and --on need --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        from archbench.ray_backend import RayBackend

        return RayBackend(workers=workers, address=address, labels=labels, threads=threads)
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
