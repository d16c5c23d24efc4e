"""The one sweep loop: variants x resolutions x forms, cell by cell, into a ``RunResult``.

Three phases, each through ``archbench.cells.measure_cell``: ``static`` (params, MACs,
memory: once per variant x resolution), ``latency`` (per form, interleaved) and, when the
``layers`` metric is asked for, ``layers`` (the per-layer profile of each cell whose form
keeps the modules, its rows in results.json's ``layers``).

``archbench run`` drives it into a results folder, ``archbench.profile`` in memory
(``out_dir=None``, ``strict=True``: the first failure raises), and each repeat
process (``archbench.worker``) runs its latency phase. Each cell is measured by
``archbench.cells.measure_cell``.

In the default (recording) mode, a model that fails to build, a cell that fails to
run or runs out of memory, or a cell that would not fit in memory is recorded with
its status and reason, and the sweep goes on. Results are saved atomically after
every cell, so an interruption loses nothing already measured.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from archbench import __version__
from archbench.cells import (
    CELL_ERRORS,
    Cell,
    check_resolution,
    failure_reason,
    input_multiple,
    measure_cell,
)
from archbench.devices import check_device, cuda_free_bytes
from archbench.environment import environment
from archbench.errors import ArchbenchError
from archbench.factory import DEFAULT_SEED, create_model
from archbench.forms import FORMS, keep_artifacts
from archbench.inputs import (
    CALIBRATION_INPUTS,
    CALIBRATION_RESOLUTION,
    calibrate_batchnorm,
    calibration_batches,
)
from archbench.metrics import aggregate_repeats, conventions_for, is_done
from archbench.profilers.latency import cpu_threads
from archbench.registry import Registry, default_registry
from archbench.results import RunResult, save
from archbench.settings import RunSettings

#: Every record says on which machine it was measured (a sweep's cells may run on several).
HOST = socket.gethostname()

#: The run folder's subfolder for kept conversion files (``--keep-artifacts``).
ARTIFACTS_FOLDER = "artifacts"

__all__ = ["NoProgress", "Progress", "RunSettings", "Runner", "latency_order", "memory_available_bytes"]


class Progress(Protocol):
    """What the runner tells the outside world; the CLI draws it."""

    def start(self, total: int) -> None: ...

    def step(self, description: str) -> None:
        """About to work on ``description``; called before (never during) a measurement."""

    def advance(self) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    """Progress that shows nothing (the library default)."""

    def start(self, total: int) -> None:
        pass

    def step(self, description: str) -> None:
        pass

    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


def variant_info(registry: Registry, name: str) -> dict[str, Any]:
    spec = registry.get(name)
    return {"family": spec.family, "kind": spec.kind, "base": spec.base, "builder": spec.builder,
            "args": dict(spec.args), "description": spec.description}


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def latency_order(names: Sequence[str], resolutions: Sequence[int], rotation: int = 0) -> list[tuple[str, int]]:
    """Interleaved measuring order: resolution by resolution, all variants each time,
    rotated by ``rotation`` so that no variant always goes first (drift hits all alike)."""
    shift = rotation % len(names) if names else 0
    rotated = [*names[shift:], *names[:shift]]
    return [(name, r) for r in resolutions for name in rotated]


@dataclass
class Runner:
    """Sweeps ``settings`` cell by cell.

    Attributes:
        out_dir: Where results.json goes after every cell; None keeps the run in memory.
        models: Modules to measure under the given names instead of building them from
            the registry (``archbench.profile`` on a user's module).
        strict: Raise the first failure instead of recording it (``archbench.profile``).
        calibrate_models: Calibrate the BatchNorm statistics of ``models`` too (registered
            variants always are when latency is measured; a user's module is left as given).
        rotation: Shifts the latency order (each repeat process gets its own).
        artifacts_root: Where forms keep their conversion files, one folder per cell
            (``settings.keep_artifacts``: the run folder's ``artifacts/``); None: temporary.
        memory_probe: Available memory in bytes, or None to skip the does-it-fit check.
    """

    settings: RunSettings
    out_dir: Path | None
    command: str = ""
    progress: Progress = field(default_factory=NoProgress)
    registry: Registry = field(default_factory=default_registry)
    memory_probe: Callable[[], int | None] = memory_available_bytes
    models: Mapping[str, nn.Module] = field(default_factory=dict)
    strict: bool = False
    rotation: int = 0
    calibrate_models: bool = False
    artifacts_root: Path | None = None

    def __post_init__(self) -> None:
        if self.artifacts_root is None and self.settings.keep_artifacts and self.out_dir is not None:
            self.artifacts_root = self.out_dir / ARTIFACTS_FOLDER
        self._built: dict[str, nn.Module] = {}
        self._state: dict[str, str] = {}
        self.result: RunResult | None = None  # the run in progress, also after an interruption

    # -- bookkeeping ------------------------------------------------------
    def _new_result(self) -> RunResult:
        now = datetime.now(UTC)
        s = self.settings
        return RunResult(
            run_id=(self.out_dir.name if self.out_dir else "") or now.strftime("%Y%m%d-%H%M%S"),
            created=now.isoformat(timespec="seconds"),
            command=self.command,
            archbench_version=__version__,
            settings=s.to_json(),
            environment=environment(s.threads, s.device, s.tf32),
            conventions=conventions_for(s.metrics, s.counters),
            variants={name: variant_info(self.registry, name) for name in s.variants if name not in self.models},
        )

    def _new_record(self, cell: Cell) -> dict[str, Any]:
        return {"variant": cell.variant, "resolution": cell.resolution, "batch_size": self.settings.batch_size,
                "device": self.settings.device, "form": cell.form, "status": "ok", "reason": "",
                "input": self.settings.input, "model_state": self._state.get(cell.variant, ""), "host": HOST}

    @staticmethod
    def _mark(record: dict[str, Any], status: str, reason: str) -> None:
        if record["status"] == "ok":
            record["status"], record["reason"] = status, reason
        elif reason not in record["reason"]:
            record["reason"] += f"; {reason}"

    def _save(self, result: RunResult) -> None:
        if self.out_dir is not None:
            save(result, self.out_dir)

    # -- models -------------------------------------------------------------
    def model(self, name: str) -> nn.Module:
        """The model of variant ``name``, built once (seeded), its BatchNorm statistics
        calibrated on the run's input kind when latency is measured."""
        if name not in self._built:
            given = name in self.models
            model = self.models[name] if given else create_model(name, registry=self.registry, seed=DEFAULT_SEED)
            state = "as given" if given else f"seed {DEFAULT_SEED}"
            if self.settings.times_models and (self.calibrate_models or not given):
                state += "; " + self._calibrate(model)
            self._built[name], self._state[name] = model, state
        return self._built[name]

    def _calibrate(self, model: nn.Module) -> str:
        """Calibrate at one resolution whatever cells a process measures, so that every
        process of a run (repeats, resumes) measures the same weights and statistics."""
        kind, multiple = self.settings.input, input_multiple(model)
        resolution = -(-CALIBRATION_RESOLUTION // multiple) * multiple
        norms = calibrate_batchnorm(model, calibration_batches(kind, resolution))
        if not norms:
            return "no BatchNorm to calibrate"
        return f"BatchNorm statistics of {norms} layers from {CALIBRATION_INPUTS} {kind} inputs at {resolution} px"

    def _fits(self, name: str, resolution: int) -> str | None:
        """Why the cell cannot fit in memory, sized on the meta device; None if it fits.

        On the CPU the need is the activation peak plus the input, against MemAvailable
        (the model is already in memory); on a GPU the parameters and buffers count too,
        against the device's free memory.
        """
        s = self.settings
        cuda = s.device.startswith("cuda")
        available = cuda_free_bytes(check_device(s.device)) if cuda else self.memory_probe()
        if available is None:
            return None
        from archbench.profilers.memory import estimate_activation_peak, tensor_bytes

        model = self.model(name)
        shape = (s.batch_size, 3, resolution, resolution)
        need = estimate_activation_peak(model, shape) + 4 * s.batch_size * 3 * resolution * resolution
        if cuda:
            need += tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
        if need > 0.8 * available:
            where = f"{s.device} memory free" if cuda else "available"
            return (f"needs an estimated {need / 2**30:.2f} GiB of {'weights, ' if cuda else ''}activations and "
                    f"input, more than 80% of the {available / 2**30:.2f} GiB {where}")
        return None

    def artifacts_folder(self, cell: Cell) -> Path | None:
        """Where ``cell``'s form keeps its conversion files; None: a temporary folder."""
        if self.artifacts_root is None:
            return None
        return self.artifacts_root / f"{cell.variant}-{cell.resolution}px-{cell.form}"

    # -- phases ---------------------------------------------------------------
    def _static_cells(self) -> Iterator[tuple[str, int]]:
        for name in self.settings.variants:
            for resolution in self.settings.resolutions:
                yield name, resolution

    def latency_cells(self) -> list[Cell]:
        """Every latency cell in the interleaved measuring order."""
        s = self.settings
        return [Cell(n, r, f) for n, r in latency_order(s.variants, s.resolutions, self.rotation) for f in s.forms]

    def _static_phase(self, result: RunResult) -> None:
        """Params, MACs and memory once per variant x resolution, copied into each form's record."""
        s = self.settings
        device = check_device(s.device)
        for name, resolution in self._static_cells():
            missing = [f for f in s.forms if result.record(name, resolution, f) is None]
            if not missing:  # measured before an interruption
                self.progress.advance()
                continue
            self.progress.step(f"{name} @ {resolution}: params, MACs, memory")
            status, reason, measured = "ok", "", {}
            try:
                model = self.model(name)
                too_big = self._fits(name, resolution)
                if too_big:
                    status, reason = "skipped", too_big
                else:
                    measured = measure_cell(model, Cell(name, resolution), s, "static")
            except CELL_ERRORS as exc:
                if self.strict:
                    raise
                status, reason = "failed", failure_reason(exc)
            for form in missing:
                record = {**self._new_record(Cell(name, resolution, form)), **measured}
                if status != "ok":
                    self._mark(record, status, reason)
                elif s.wants_latency and (why := FORMS.get(form).unavailable(device)):
                    self._mark(record, "skipped", f"{form}: {why}")
                result.records.append(record)
            self.progress.advance()
            self._save(result)

    def _latency_phase(self, result: RunResult) -> None:
        s = self.settings
        records = {(r["variant"], r["resolution"], r["form"]): r for r in result.records}

        def record(cell: Cell) -> dict[str, Any]:
            return records[(cell.variant, cell.resolution, cell.form)]

        runnable = []
        for cell in self.latency_cells():
            if is_done(record(cell), s.metrics, "latency"):  # measured before an interruption, or not measurable
                self.progress.advance()
            else:
                runnable.append(cell)
        if s.repeats > 1 and runnable:
            self._repeated_latency(result, runnable, record)
            return
        for cell in runnable:
            self.progress.step(f"{cell.variant} @ {cell.resolution}: latency, {cell.form}")
            try:
                with keep_artifacts(self.artifacts_folder(cell)):
                    record(cell).update(measure_cell(self.model(cell.variant), cell, s, "latency"))
            except CELL_ERRORS as exc:
                if self.strict:
                    raise
                self._mark(record(cell), "failed", failure_reason(exc))
            self.progress.advance()
            self._save(result)

    def _repeated_latency(self, result: RunResult, runnable: list[Cell],
                          record: Callable[[Cell], dict[str, Any]]) -> None:
        """Latency in ``repeats`` fresh processes, one after another, each kept as it finishes.

        Process ``i`` (its measuring order rotated by ``i``) measures every runnable cell
        that has no row of process ``i`` in ``result.latency_processes`` yet. When it exits,
        its rows, tagged ``process: i``, are appended to ``result.latency_processes`` and
        results.json is saved, so an interruption (Ctrl-C, SIGTERM) loses at most the
        process in flight, which ``run_worker`` terminates. ``--resume`` keeps and counts
        the rows already saved and runs only the missing processes, each over only the
        cells that lack it: a resumed run ends with the same cells and the same number of
        per-process rows per cell as an uninterrupted one.

        A cell's record gets its headline (``aggregate_repeats``: median of per-process
        medians, ``latency_ms_spread``, ``latency_repeats`` = ``repeats``) only once all
        its processes are in. No provisional headline: a record's ``latency_ms_median`` is
        what marks a cell measured (``is_done``) for ``--resume``, the progress count and
        ``complete``, so a provisional one would make an interrupted cell look finished;
        until then its per-process rows are in ``latency_processes``. A cell for which a
        process reports an error is marked failed at once (``strict``: raised) and left
        out of the later processes.
        """
        from archbench.worker import job_for, run_worker

        s = self.settings

        def key(cell: Cell) -> tuple[str, int, str]:
            return (cell.variant, cell.resolution, cell.form)

        def rows_of(cell: Cell) -> list[dict[str, Any]]:
            mine = [p for p in result.latency_processes if (p["variant"], p["resolution"], p["form"]) == key(cell)]
            return sorted(mine, key=lambda p: int(p["process"]))

        def settle(cell: Cell) -> bool:
            """Fail or aggregate ``cell`` if its rows allow; whether it is finished."""
            mine = rows_of(cell)
            errors = [p["error"] for p in mine if "error" in p]
            if errors:
                if self.strict:
                    raise ArchbenchError(f"{cell.variant} @ {cell.resolution}: {errors[0]}")
                self._mark(record(cell), "failed", errors[0])
            elif {int(p["process"]) for p in mine} >= set(range(s.repeats)):
                record(cell).update(aggregate_repeats(mine))
            else:
                return False
            self.progress.advance()
            return True

        pending = [cell for cell in runnable if not settle(cell)]  # finished before an interruption
        for index in range(s.repeats):
            cells = [c for c in pending if all(int(p["process"]) != index for p in rows_of(c))]
            if not cells:
                continue
            self.progress.step(f"latency: process {index + 1} of {s.repeats}, {len(cells)} cells")
            wanted = {key(c) for c in cells}
            rows = run_worker(job_for(s, cells, index, self.artifacts_root))
            result.latency_processes.extend(
                {**row, "process": index} for row in rows if (row["variant"], row["resolution"], row["form"]) in wanted)
            pending = [cell for cell in pending if not settle(cell)]
            self._save(result)

    def _layers_phase(self, result: RunResult) -> None:
        """The per-layer profile of every cell, in the latency phase's order, each given the
        sampling time its latency measurement took (``cells.layers_budget_s``); the machine's
        ceilings the roofline columns use go into the environment once."""
        from archbench.cells import LAYER_ROWS, layers_budget_s
        from archbench.machine import machine_ceilings

        s = self.settings
        if "ceilings" not in result.environment:
            self.progress.step(f"ceilings of {s.device} at {s.threads} thread(s)")
            result.environment["ceilings"] = machine_ceilings(s.device, s.threads).as_dict()
        records = {(r["variant"], r["resolution"], r["form"]): r for r in result.records}
        for cell in self.latency_cells():
            record = records[(cell.variant, cell.resolution, cell.form)]
            if is_done(record, s.metrics, "layers"):
                self.progress.advance()
                continue
            self.progress.step(f"{cell.variant} @ {cell.resolution}: layers, {cell.form}")
            try:
                measured = measure_cell(self.model(cell.variant), cell, s, "layers", layers_budget_s(record))
                result.layers.extend(measured.pop(LAYER_ROWS))
                record.update(measured)
            except CELL_ERRORS as exc:
                if self.strict:
                    raise
                self._mark(record, "failed", f"layers: {failure_reason(exc)}")
            self.progress.advance()
            self._save(result)

    def preflight(self) -> None:
        """Reject bad input before anything is measured: a resolution a variant cannot take
        (and, when strict, a model that cannot be built or a form that cannot run here).

        Otherwise a model that fails to build is not bad input: its cells are recorded as failed.
        """
        s = self.settings
        for name in s.variants:
            try:
                model = self.model(name)
            except CELL_ERRORS:
                if self.strict:
                    raise
                continue
            for resolution in s.resolutions:
                check_resolution(model, name, resolution)
        if self.strict and s.wants_latency:
            device = check_device(s.device)
            for form in s.forms:
                if (why := FORMS.get(form).unavailable(device)) is not None:
                    raise ArchbenchError(f"form {form} cannot run on {device}: {why}")

    def run(self, previous: RunResult | None = None) -> RunResult:
        """Measure every cell (only the missing ones when resuming ``previous``).

        The results are saved after every cell and once more on the way out,
        marked incomplete if the run was interrupted (KeyboardInterrupt).
        """
        self.preflight()
        result = previous or self._new_result()
        result.complete = False
        self.result = result
        s = self.settings
        cells = len(s.variants) * len(s.resolutions)
        timed_phases = int(s.wants_latency) + int(s.wants_layers)
        self.progress.start(cells + cells * len(s.forms) * timed_phases)
        try:
            with cpu_threads(s.threads):
                self._static_phase(result)
                if s.wants_latency:
                    self._latency_phase(result)
                if s.wants_layers:
                    self._layers_phase(result)
            result.complete = True
        finally:
            self.progress.stop()
            self._save(result)
        return result
