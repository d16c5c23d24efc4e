"""A latency table's build set measured into a run folder, and an interrupted build finished there.

A build is a run of the metrics ``BUILD_METRICS``: registered variants through the ``Runner``
in this process (as ``archbench run``), a space's samples through the sweep pipeline
(``SweepRunner`` on a backend, as ``archbench sweep``). Its results.json says that it is a
build: ``environment["predictor_build"]`` (``BUILD_MARK``) holds the table file it was to
write (``out``, an absolute path, or null), from the first cell saved on. An interrupted
build (Ctrl-C, SIGTERM, a killed process) is finished by ``resume_runner`` with the recorded
settings, as ``archbench run --resume`` and ``archbench sweep --resume`` do: only the cells
results.json lacks are measured, then the table is written
(``archbench predictor build --resume FOLDER``).

Importing this module imports torch (the runners); ``archbench.predict.table`` imports it
only when it builds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archbench.errors import ArchbenchError
from archbench.predict.table import BUILD_METRICS
from archbench.profilers.latency import LatencyConfig
from archbench.registry import Registry
from archbench.results import RunResult
from archbench.runner import NoProgress, Progress, Runner
from archbench.settings import RunSettings
from archbench.sweep import SweepRunner, make_backend

#: The key of ``environment`` that marks a build's results.
BUILD_MARK = "predictor_build"


@dataclass(frozen=True)
class BuildPlan:
    """What a new build measures: the build set (a space's samples, or registered variants)
    at ``resolutions`` in ``forms``, with ``threads``; ``out``, the table file it is for;
    ``latency``, the knobs of each latency measurement (recorded with the settings)."""

    names: tuple[str, ...]
    resolutions: tuple[int, ...]
    forms: tuple[str, ...]
    threads: int
    space: str | None = None
    seed: int | None = None
    samples: int | None = None
    out: Path | None = None
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def settings(self) -> RunSettings:
        return RunSettings(variants=self.names, resolutions=self.resolutions, metrics=BUILD_METRICS,
                           forms=self.forms, threads=self.threads, latency=self.latency)

    def mark(self) -> dict[str, Any]:
        return {"out": None if self.out is None else str(self.out.absolute())}

    def sweep_info(self, on: str | None) -> dict[str, Any] | None:
        """A space's build: ``environment["sweep"]`` as ``archbench sweep`` records it; None otherwise."""
        if self.space is None:
            return None
        return {"space": self.space, "samples": self.samples, "seed": self.seed, "registered": False, "on": on}


def _marked(result: RunResult, mark: dict[str, Any]) -> RunResult:
    result.environment[BUILD_MARK] = dict(mark)
    return result


@dataclass
class BuildRunner(Runner):
    """The ``Runner`` of a build of registered variants: its new results carry ``BUILD_MARK``."""

    build_mark: dict[str, Any] = field(default_factory=dict)

    def _new_result(self) -> RunResult:
        return _marked(super()._new_result(), self.build_mark)


@dataclass
class BuildSweepRunner(SweepRunner):
    """The ``SweepRunner`` of a build of a space's samples: its new results carry ``BUILD_MARK``."""

    build_mark: dict[str, Any] = field(default_factory=dict)

    def _new_result(self) -> RunResult:
        return _marked(super()._new_result(), self.build_mark)


@contextlib.contextmanager
def _runner(registry: Registry, settings: RunSettings, folder: Path, mark: dict[str, Any],
            sweep_info: dict[str, Any] | None, *, backend: str, workers: int, address: str | None,
            specs: tuple[tuple[str, str], ...], progress: Progress | None, command: str) -> Iterator[Runner]:
    """A build's runner: a ``BuildRunner`` without ``sweep_info``, else a ``BuildSweepRunner``
    on ``backend`` (closed when the block ends), timing where ``sweep_info["on"]`` says."""
    progress = progress or NoProgress()
    if sweep_info is None:
        yield BuildRunner(settings, folder, command=command, progress=progress, registry=registry, build_mark=mark)
        return
    engine = make_backend(backend, workers, address, sweep_info.get("on"), settings.threads)
    try:
        yield BuildSweepRunner(settings, folder, command=command, progress=progress, registry=registry,
                               backend=engine, specs=specs, space=str(sweep_info.get("space") or ""),
                               sweep_info={**sweep_info, "backend": backend, "workers": workers}, build_mark=mark)
    finally:
        engine.close()


def build_runner(registry: Registry, plan: BuildPlan, folder: Path, *, backend: str = "local", workers: int = 2,
                 address: str | None = None, on: str | None = None, specs: tuple[tuple[str, str], ...] = (),
                 progress: Progress | None = None,
                 command: str = "") -> contextlib.AbstractContextManager[Runner]:
    """The runner of a new build into ``folder`` (``runner.run()`` measures it); a space's
    build runs on ``backend`` (``local`` worker processes or ``ray``), closed when the block ends."""
    return _runner(registry, plan.settings(), folder, plan.mark(), plan.sweep_info(on), backend=backend,
                   workers=workers, address=address, specs=specs, progress=progress, command=command)


def recorded_build(previous: RunResult, folder: Path) -> dict[str, Any]:
    """What the build in ``folder`` recorded (``BUILD_MARK``); ``ArchbenchError`` for a run or
    sweep that is not a build."""
    mark = previous.environment.get(BUILD_MARK)
    if not isinstance(mark, dict):
        raise ArchbenchError(f"{folder} holds a run or sweep, not a latency table's build (its results.json has no "
                             f"environment.{BUILD_MARK}); finish it with `archbench run --resume` or `archbench sweep "
                             "--resume`, or tabulate it with `archbench predictor build --from-results`")
    return mark


def resume_runner(registry: Registry, previous: RunResult, folder: Path, *, backend: str = "local",
                  workers: int = 2, address: str | None = None, specs: tuple[tuple[str, str], ...] = (),
                  progress: Progress | None = None) -> contextlib.AbstractContextManager[Runner]:
    """The runner that finishes the build in ``folder`` (``previous``: its results, checked with
    ``recorded_build``): ``runner.run(previous)`` measures the missing cells with the recorded
    settings; a space's build on ``backend``, timing where it was recorded to (``--on``)."""
    mark = recorded_build(previous, folder)
    sweep = previous.environment.get("sweep")
    return _runner(registry, RunSettings.from_json(previous.settings), folder, mark,
                   dict(sweep) if isinstance(sweep, dict) else None, backend=backend, workers=workers,
                   address=address, specs=specs, progress=progress, command=previous.command)


__all__ = ["BUILD_MARK", "BuildPlan", "BuildRunner", "BuildSweepRunner", "build_runner", "recorded_build",
           "resume_runner"]
