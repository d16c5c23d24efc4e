"""``archbench run``: sweep variants x resolutions x forms into a results file, cell by cell.

Each cell (variant x resolution x deployment form, at one batch size and
device) is measured on its own: a model that fails to build, a cell that fails to run or runs out of
memory, or a cell that would not fit in memory is recorded with its status and
reason, and the sweep goes on. Results are saved atomically after every cell,
so an interruption loses nothing already measured.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from archbench import __version__
from archbench.environment import environment
from archbench.errors import ArchbenchError
from archbench.factory import create_model
from archbench.forms import unavailable_reason
from archbench.profilers.latency import LatencyConfig, cpu_threads
from archbench.profiling import (
    CONVENTIONS,
    aggregate_repeats,
    check_device,
    check_resolution,
    failure_reason,
    latency_cell,
    latency_in_processes,
    latency_order,
    sample_input,
    static_columns,
)
from archbench.registry import Registry, default_registry
from archbench.results import RunResult, save

DEFAULT_VARIANTS = "shufflenetv2_x1_0,esnet_m,esnet_m.nose,esnet_m.dw,shufflenetv2_x1_0.se,shufflenetv2_x1_0.ghost"
DEFAULT_BASELINE = "shufflenetv2_x1_0"


@dataclass(frozen=True)
class RunSettings:
    variants: tuple[str, ...]
    resolutions: tuple[int, ...] = (320, 416, 640)
    batch_size: int = 1
    device: str = "cpu"
    metrics: tuple[str, ...] = ("params", "macs", "memory", "latency")
    counters: tuple[str, ...] = ()
    threads: int = 1
    repeats: int = 1
    baseline: str | None = None
    forms: tuple[str, ...] = ("eager",)
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_config"] = data.pop("latency")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        """The settings a results.json recorded, to resume its run."""
        try:
            fields = {k: v for k, v in data.items() if k != "latency_config"}
            for key in ("variants", "resolutions", "metrics", "counters", "forms"):
                fields[key] = tuple(fields.get(key, ()))
            return cls(**fields, latency=LatencyConfig(**data.get("latency_config", {})))
        except (TypeError, ValueError) as exc:
            raise ArchbenchError(f"cannot resume: the recorded settings are not usable ({exc})") from None


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


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%d-%H%M%S")


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Runner:
    settings: RunSettings
    out_dir: Path
    command: str = ""
    progress: Progress = field(default_factory=NoProgress)
    registry: Registry = field(default_factory=default_registry)
    memory_probe: Callable[[], int | None] = memory_available_bytes

    def __post_init__(self) -> None:
        self.models: dict[str, nn.Module] = {}
        self.result: RunResult | None = None  # the run in progress, also after an interruption
        self.meta_models: dict[str, nn.Module] = {}

    # -- bookkeeping ------------------------------------------------------
    def _new_result(self) -> RunResult:
        now = datetime.now(UTC)
        return RunResult(
            run_id=self.out_dir.name or new_run_id(now),
            created=now.isoformat(timespec="seconds"),
            command=self.command,
            archbench_version=__version__,
            settings=self.settings.to_json(),
            environment=environment(self.settings.threads),
            conventions=dict(CONVENTIONS),
            variants={name: variant_info(self.registry, name) for name in self.settings.variants},
        )

    def _new_record(self, variant: str, resolution: int, form: str) -> dict[str, Any]:
        return {"variant": variant, "resolution": resolution, "batch_size": self.settings.batch_size,
                "device": self.settings.device, "form": form, "status": "ok", "reason": ""}

    @staticmethod
    def _mark(record: dict[str, Any], status: str, reason: str) -> None:
        if record["status"] == "ok":
            record["status"], record["reason"] = status, reason
        elif reason not in record["reason"]:
            record["reason"] += f"; {reason}"

    def _save(self, result: RunResult) -> None:
        save(result, self.out_dir)

    # -- phases ---------------------------------------------------------------
    def _build(self, name: str) -> nn.Module:
        if name not in self.models:
            self.models[name] = create_model(name, registry=self.registry)
        return self.models[name]

    def _meta_copy(self, name: str) -> nn.Module:
        if name not in self.meta_models:
            self.meta_models[name] = copy.deepcopy(self._build(name)).to("meta")
        return self.meta_models[name]

    def _fits(self, name: str, resolution: int) -> str | None:
        """Why the cell cannot fit in memory, sized on the meta device; None if it fits."""
        if "cuda" in self.settings.device:
            return None  # CUDA cells are guarded by catching torch.cuda.OutOfMemoryError
        available = self.memory_probe()
        if available is None:
            return None
        import torch

        from archbench.profilers.memory import measure_activation_peak

        shape = (self.settings.batch_size, 3, resolution, resolution)
        need = measure_activation_peak(self._meta_copy(name), torch.empty(shape, device="meta"))
        need += 4 * self.settings.batch_size * 3 * resolution * resolution
        if need > 0.8 * available:
            return (f"needs an estimated {need / 2**30:.2f} GiB of activations and input, "
                    f"more than 80% of the {available / 2**30:.2f} GiB available")
        return None

    def _cells(self) -> Iterator[tuple[str, int]]:
        for name in self.settings.variants:
            for resolution in self.settings.resolutions:
                yield name, resolution

    def _static_phase(self, result: RunResult) -> None:
        """Params, MACs and memory once per variant x resolution, copied into each form's record."""
        s = self.settings
        device = check_device(s.device)
        for name, resolution in self._cells():
            missing = [f for f in s.forms if result.record(name, resolution, f) is None]
            if not missing:  # measured before an interruption
                self.progress.advance()
                continue
            self.progress.step(f"{name} @ {resolution}: params, MACs, memory")
            status, reason, measured = "ok", "", {}
            try:
                model = self._build(name)
                too_big = self._fits(name, resolution)
                if too_big:
                    status, reason = "skipped", too_big
                else:
                    measured = static_columns(model, sample_input(s.batch_size, resolution), s.metrics, s.counters)
            except (ArchbenchError, RuntimeError, MemoryError, ValueError, TypeError) as exc:
                status, reason = "failed", failure_reason(exc)
            for form in missing:
                record = {**self._new_record(name, resolution, form), **measured}
                if status != "ok":
                    self._mark(record, status, reason)
                elif "latency" in s.metrics and (why := unavailable_reason(form, device)):
                    self._mark(record, "skipped", f"{form}: {why}")
                result.records.append(record)
            self.progress.advance()
            self._save(result)

    def _latency_phase(self, result: RunResult) -> None:
        s = self.settings
        records = {(r["variant"], r["resolution"], r["form"]): r for r in result.records}
        order = [(n, r, f) for n, r in latency_order(list(s.variants), list(s.resolutions)) for f in s.forms]
        done = [c for c in order if result.cell_done(records[c])]
        for _ in done:  # measured before an interruption, or not measurable
            self.progress.advance()
        runnable = [c for c in order if c not in done]
        if s.repeats > 1 and runnable:
            self.progress.step(f"latency: {s.repeats} processes x {len(runnable)} cells")
            processes = latency_in_processes(
                list(dict.fromkeys(n for n, _, _ in runnable)), list(dict.fromkeys(r for _, r, _ in runnable)),
                s.batch_size, check_device(s.device), s.latency, s.threads, s.repeats,
                list(dict.fromkeys(f for _, _, f in runnable)),
            )
            result.latency_processes = processes
            for cell in runnable:
                mine = [p for p in processes if (p["variant"], p["resolution"], p["form"]) == cell]
                errors = [p["error"] for p in mine if "error" in p]
                if errors:
                    self._mark(records[cell], "failed", errors[0])
                else:
                    records[cell].update(aggregate_repeats(mine))
                self.progress.advance()
            self._save(result)
            return
        device = check_device(s.device)
        for name, resolution, form in runnable:
            record = records[(name, resolution, form)]
            self.progress.step(f"{name} @ {resolution}: latency, {form}")
            try:
                record.update(latency_cell(self._build(name), resolution, s.batch_size, device, s.latency,
                                           s.threads, form))
            except (ArchbenchError, RuntimeError, MemoryError, ValueError) as exc:
                self._mark(record, "failed", failure_reason(exc) if not isinstance(exc, ArchbenchError) else str(exc))
            self.progress.advance()
            self._save(result)

    def preflight(self) -> None:
        """Reject bad input before anything is measured: a resolution a variant cannot take.

        A model that fails to build is not bad input: its cells are recorded as failed.
        """
        for name in self.settings.variants:
            try:
                model = self._build(name)
            except (ArchbenchError, RuntimeError, ValueError, TypeError):
                continue
            for resolution in self.settings.resolutions:
                check_resolution(model, name, resolution)

    def run(self, previous: RunResult | None = None) -> RunResult:
        """Measure every cell (only the missing ones when resuming ``previous``).

        The results are saved after every cell and once more on the way out,
        marked incomplete if the run was interrupted (KeyboardInterrupt).
        """
        self.preflight()
        result = previous or self._new_result()
        result.complete = False
        self.result = result
        cells = len(self.settings.variants) * len(self.settings.resolutions)
        latency_cells = cells * len(self.settings.forms) if "latency" in self.settings.metrics else 0
        self.progress.start(cells + latency_cells)
        try:
            with cpu_threads(self.settings.threads):
                self._static_phase(result)
                if "latency" in self.settings.metrics:
                    self._latency_phase(result)
            result.complete = True
        finally:
            self.progress.stop()
            self._save(result)
        return result

